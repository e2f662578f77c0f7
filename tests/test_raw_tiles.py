"""The raw-tile fast path (pathkit._raw_tiles): batched torchvision JPEG decoding of stored TIFF tiles must give
the pixels of Slide.read_tile / tiffslide exactly (CPU: the same libjpeg-turbo IDCT and upsampling), on the
real CMU-1 SVS (abbreviated Aperio streams + JPEGTables, photometric RGB, 240-px tiles that 256-px tiles
straddle) and on synthetic slides (self-contained YCbCr 4:2:0 streams, 256-px tiles, pyramid levels)."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch

import pathkit as pk
from pathkit import _raw_tiles
from pathkit._raw_tiles import RawTileReader, RawTilesUnsupported, raw_reader


def _coords(slide, n, rng, level=0):
    """Tile corners in level-0 px: a grid part, random ones (some straddling the edges, some outside)."""
    w, h = slide.dimensions
    side = 256 * slide.level_downsamples[level]
    gx = np.arange(0, w, side)[:6]
    gy = np.arange(0, h, side)[:3]
    grid = np.array([(x, y) for y in gy for x in gx], dtype=np.int64)
    rand = np.stack([rng.integers(-side // 2, w, n), rng.integers(-side // 2, h, n)], 1)
    edges = np.array([[w - 100, h - 50], [-10, -20], [0, h - int(side)], [w + 5, 0], [w - 1, h - 1]])
    return np.concatenate([grid, rand, edges]).astype(np.int64)


def _reference(slide, xy, mpp):
    return np.stack([slide.read_tile(int(x), int(y), 256, mpp) for x, y in xy])


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    p = tmp_path_factory.mktemp("raw") / "synth.svs"
    # 3 levels (4x each), 256-px tiles, YCbCr 4:2:0 JPEG; a width that is not a multiple of the tile
    return pk.datasets.synthetic_slide(p, width=3000, height=2200, levels=3, seed=3)


def test_cmu1_identical_to_read_tile_and_tiffslide(shared_data):
    import tiffslide

    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    slide = pk.read_slide(path)
    reader, why = raw_reader(slide, 256, 0.5)
    assert reader is not None, why
    st = reader.st
    assert (st["tw"], st["th"]) == (240, 240)  # stored tiles are 240 px: every 256-px tile straddles them
    assert _raw_tiles._ADOBE_RGB in st["head"]  # photometric RGB: the colour-transform marker is spliced in
    xy = _coords(slide, 40, np.random.default_rng(0))
    got = reader.read_batch(xy[:, 0], xy[:, 1], 256)
    assert got.dtype == torch.uint8 and tuple(got.shape) == (len(xy), 256, 256, 3)
    ref = _reference(slide, xy, 0.5)
    assert np.array_equal(got.numpy(), ref)
    # the same pixels as tiffslide's own reader, for tiles inside the image
    ts = tiffslide.TiffSlide(str(path))
    w, h = slide.dimensions
    inside = [(x, y) for x, y in xy if 0 <= x <= w - 256 and 0 <= y <= h - 256]
    assert len(inside) >= 10
    for k, (x, y) in enumerate(inside):
        tsr = np.asarray(ts.read_region((int(x), int(y)), 0, (256, 256), as_array=True))[..., :3]
        i = next(i for i, (a, b) in enumerate(xy) if (a, b) == (x, y))
        assert np.array_equal(got[i].numpy(), tsr), k
    ts.close()
    # outside the image is white, as read_tile
    assert (got[-2].numpy() == 255).all()


def test_cmu1_without_colour_marker_is_refused(shared_data):
    """Aperio RGB tiles decoded as YCbCr (no Adobe marker) are wrong: the probe must catch it."""
    slide = pk.read_slide(shared_data / "slides" / "CMU-1-Small-Region.svs")
    reader = RawTileReader(slide, 0)
    reader.st["head"] = reader.st["head"].replace(_raw_tiles._ADOBE_RGB, b"")
    res = reader.probe("cpu")
    assert not res["ok"] and res["mean_abs"] > 10, res
    with pytest.raises(RawTilesUnsupported, match="differs from tifffile"):
        reader.read_batch([0], [0], 256)


def test_synthetic_levels_identical(synth):
    slide = pk.read_slide(synth)
    assert slide.level_count == 3
    rng = np.random.default_rng(1)
    for mpp, level in ((0.5, 0), (2.0, 1)):
        reader, why = raw_reader(slide, 256, mpp)
        assert reader is not None, why
        assert reader.level == level and reader.st["head"].startswith(b"\xff\xd8")
        assert _raw_tiles._ADOBE_RGB not in reader.st["head"]  # YCbCr: no marker
        xy = _coords(slide, 30, rng, level)
        ref = _reference(slide, xy, mpp)
        assert np.array_equal(reader.read_batch(xy[:, 0], xy[:, 1], 256).numpy(), ref)
        # a second pass is served from the decoded-tile cache and gives the same pixels
        assert len(reader.st["cache"]) > 0
        assert np.array_equal(reader.read_batch(xy[:, 0], xy[:, 1], 256).numpy(), ref)
        # fetch (what a DataLoader worker does) + decode (what the main process does) is the same
        batch = pickle.loads(pickle.dumps(reader.fetch(xy[:, 0], xy[:, 1], 256)))
        assert np.array_equal(reader.decode(batch, "cpu").numpy(), ref)
    # other tile sizes
    reader, _ = raw_reader(slide, 300, 0.5)
    xy = _coords(slide, 10, rng)
    ref = np.stack([slide.read_tile(int(x), int(y), 300, 0.5) for x, y in xy])
    assert np.array_equal(reader.read_batch(xy[:, 0], xy[:, 1], 300).numpy(), ref)


def test_pickled_reader_reopens(synth):
    slide = pk.read_slide(synth)
    reader, _ = raw_reader(slide, 256, 0.5)
    clone = pickle.loads(pickle.dumps(reader))
    assert clone._state is None  # nothing of the open file travels
    xs, ys = np.array([0, 256, 2900]), np.array([0, 512, 2100])
    assert np.array_equal(clone.read_batch(xs, ys, 256).numpy(), reader.read_batch(xs, ys, 256).numpy())
    nocache = RawTileReader(slide, 0, cache_bytes=0)
    assert np.array_equal(nocache.read_batch(xs, ys, 256).numpy(), reader.read_batch(xs, ys, 256).numpy())


def test_not_eligible_says_why(synth, tmp_path, shared_data):
    slide = pk.read_slide(synth)
    reader, why = raw_reader(slide, 256, 0.6)  # between levels: read_tile resizes
    assert reader is None and "resized" in why
    z = pk.datasets.synthetic_slide(tmp_path / "z.tif", width=600, height=500, compression="zlib")
    reader, why = raw_reader(pk.read_slide(z), 256, 0.5)
    assert reader is None and "not JPEG" in why
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tcga = pk.read_slide(shared_data / "slides" / "TCGA-CR-7395-01A-01-TS1.svs", mpp=0.5)
    reader, why = raw_reader(tcga, 256, 0.5)  # JPEG 2000 (Aperio 33003/33005)
    assert reader is None and "compression" in why and "not JPEG" in why


def test_missing_stored_tile_is_white(synth, monkeypatch):
    """A stored tile with 0 bytes (some writers skip empty glass) reads as white, as read_tile does."""
    slide = pk.read_slide(synth)
    reader = RawTileReader(slide, 0)
    counts = reader.st["counts"].copy()
    counts[1] = 0  # stored tile (row 0, col 1): x 256..511
    reader.st["counts"] = counts
    got = reader.read_batch([128], [0], 256).numpy()[0]
    ref = slide.read_tile(128, 0, 256, 0.5)
    assert np.array_equal(got[:, :128], ref[:, :128])
    assert (got[:, 128:] == 255).all()
    got2 = reader.decode(reader.fetch([128], [0], 256)).numpy()[0]
    assert np.array_equal(got, got2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG decode)")
def test_cuda_decode_within_rounding(synth):
    slide = pk.read_slide(synth)
    reader, why = raw_reader(slide, 256, 0.5, device="cuda")
    assert reader is not None, why
    xy = _coords(slide, 30, np.random.default_rng(2))
    got = reader.read_batch(xy[:, 0], xy[:, 1], 256)
    assert got.device.type == "cuda"
    d = np.abs(got.cpu().numpy().astype(int) - _reference(slide, xy, 0.5))
    assert d.mean() <= _raw_tiles.PROBE_MEAN_MAX and np.quantile(d, 0.999) <= _raw_tiles.PROBE_P999_MAX


# ------------------------------------------------------------------------------- the tile loader's raw path
def test_embeddings_equal_with_raw_path_on_and_off(synth, monkeypatch):
    """pk.tl.embed_tiles reads through the raw path by default where eligible; features are identical to
    the read_tile path (float32), in the calling process and with DataLoader workers."""
    from pathkit.tl import _tile_loader

    slide = pk.read_slide(synth)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiles = pk.pp.tile(slide)
    tiles = tiles[:20].copy()
    used = []
    real = _tile_loader.tile_loader

    def spy(*a, **k):
        loader = real(*a, **k)
        used.append((loader.raw_tiles, loader.raw_reason))
        return loader

    monkeypatch.setattr("pathkit.tl.embed.tile_loader", spy)
    feats = {}
    for raw in ("auto", "0"):
        monkeypatch.setenv("PATHKIT_RAW_TILES", raw)
        for workers in (0, 2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out = pk.tl.embed_tiles(tiles, slide, "vit_tiny_test", dtype="float32", batch_size=8,
                                        num_workers=workers, progress=False, copy=True)
            feats[raw, workers] = out.obsm["X_vit_tiny_test"]
    assert [u[0] for u in used] == [True, True, False, False], used
    assert used[2][1] == "switched off"
    base = feats["0", 0]
    assert np.isfinite(base).all() and base.std() > 0
    for k, v in feats.items():
        assert np.array_equal(v, base), k


def test_gpu_branch_on_cpu(synth):
    """The CUDA branch (readers fetch compressed bytes, the consumer decodes the batch) run on CPU, with
    worker processes: the same pixels as read_tile."""
    from pathkit.tl._tile_loader import _DecodeOn, _raw_worker_init, _RawBatches

    slide = pk.read_slide(synth)
    reader, _ = raw_reader(slide, 256, 0.5)
    xy = _coords(slide, 13, np.random.default_rng(4))
    ds = _RawBatches(reader, xy[:, 0], xy[:, 1], 256, 6, decode=False)
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2, worker_init_fn=_raw_worker_init)
    batches = list(_DecodeOn(loader, reader, torch.device("cpu")))
    n = len(xy)
    assert [len(b) for b in batches] == [min(6, n - i) for i in range(0, n, 6)]
    assert np.array_equal(torch.cat(batches).numpy(), _reference(slide, xy, 0.5))


def test_loader_switch(synth, tmp_path):
    from pathkit.tl._tile_loader import tile_loader

    slide = pk.read_slide(synth)
    xs, ys = np.array([0, 256, 512]), np.array([0, 0, 256])
    on = tile_loader(slide, xs, ys, 256, 0.5, batch_size=2, raw_tiles="auto")
    off = tile_loader(slide, xs, ys, 256, 0.5, batch_size=2, raw_tiles=False)
    assert on.raw_tiles and not off.raw_tiles
    a, b = torch.cat(list(on)), torch.cat(list(off))
    assert a.shape == (3, 256, 256, 3) and torch.equal(a, b)
    resized = tile_loader(slide, xs, ys, 256, 0.6, batch_size=2)  # needs a resize: read_tile
    assert not resized.raw_tiles and "resized" in resized.raw_reason
    with pytest.raises(ValueError, match="raw_tiles=True"):
        tile_loader(slide, xs, ys, 256, 0.6, raw_tiles=True)


def test_aligned_grid_batch(synth):
    """A batch of whole stored tiles (tile grid aligned with the file's 256-px tiles) is one stack; a batch
    with an edge tile (the image ends inside the stored tile) is assembled piece by piece: same pixels."""
    slide = pk.read_slide(synth)
    reader = RawTileReader(slide, 0)
    for xs, ys in (([0, 256, 512, 768], [0, 0, 512, 1024]), ([2560, 2816], [1792, 1792])):
        xs, ys = np.array(xs), np.array(ys)
        got = reader.read_batch(xs, ys, 256)
        assert got.is_contiguous()
        assert np.array_equal(got.numpy(), _reference(slide, np.stack([xs, ys], 1), 0.5))
