"""Plain images (JPEG, PNG, single-image TIFF) as slides: the "image" backend, chosen by content."""
from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import tifffile
import tiffslide
from PIL import Image

import pathkit as pk
from pathkit.backends import image as image_backend
from pathkit.errors import MppError, NotBrightfieldError, SlideReadError

HER2 = "spatial/her2st/5714_HE_BT_C2.jpg"


@pytest.fixture(scope="module")
def her2_ref(shared_data) -> np.ndarray:
    """An independent decode of the whole JPEG (PIL, no pathkit)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(shared_data / HER2) as im:
            return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def synth_png(tmp_path_factory):
    """The level 0 of a synthetic SVS (lossless read by tiffslide) saved as a PNG: the same pixels in two
    formats, and the blobs' known positions."""
    d = tmp_path_factory.mktemp("png")
    svs = pk.datasets.synthetic_slide(d / "synth.svs", width=2048, height=1536, mpp=0.5, levels=2)
    ts = tiffslide.TiffSlide(svs)
    px = ts.read_region((0, 0), 0, ts.dimensions, as_array=True)
    ts.close()
    Image.fromarray(px).save(d / "synth.png")
    return svs, d / "synth.png", px


def test_her2st_jpeg(shared_data, her2_ref):
    p = shared_data / HER2
    with pytest.raises(MppError, match=r"5714_HE_BT_C2\.jpg.*no microns-per-pixel.*mpp="):
        pk.read_slide(p)
    s = pk.read_slide(p, mpp=0.7)
    assert s.backend == "image" and s.backend_version.startswith("pillow")
    assert s.dimensions == (9274, 9911)  # the README's size
    assert s.level_dimensions == [(9274, 9911), (2318, 2477), (579, 619)]
    assert s.level_downsamples == [1.0, 4.0, 16.0]
    # opening and the thumbnail use the 1/4-scale decode: level 0 is not decoded yet
    assert 0 not in s.reader._levels
    th = s.thumbnail(512)
    assert th.size == (479, 512) and 0 not in s.reader._levels
    ref = her2_ref
    for x, y, w, h in [(0, 0, 300, 200), (5000, 7000, 256, 256), (9000, 9800, 274, 111)]:
        np.testing.assert_array_equal(s.read_region((x, y), 0, (w, h)), ref[y:y + h, x:x + w])
    # past the edge: white
    edge = s.read_region((9200, 9900), 0, (100, 20))
    np.testing.assert_array_equal(edge[:11, :74], ref[9900:, 9200:])
    assert (edge[11:] == 255).all() and (edge[:, 74:] == 255).all()
    # level 1: the 1/4-scale decode of the same file is close to a 4x4 area average of level 0
    box = ref[5000:6600, 4000:5600].reshape(400, 4, 400, 4, 3).astype(np.float32).mean(axis=(1, 3))
    lvl1 = s.read_region((4000, 5000), 1, (400, 400)).astype(np.float32)
    assert np.abs(lvl1 - box).mean() < 2.0
    info = s.info()
    assert info["backend"] == "image" and info["mpp"] == 0.7 and info["mpp_source"] == "user"


@pytest.mark.slow  # ~17 s idle, most of it the first torch/timm use of the process
def test_her2st_tissue_tiles_embed(shared_data, her2_ref, monkeypatch):
    calls = []
    orig = image_backend.ImageBackend._decode_file
    monkeypatch.setattr(image_backend.ImageBackend, "_decode_file",
                        lambda self: calls.append(1) or orig(self))
    s = pk.read_slide(shared_data / HER2, mpp=0.7)
    mask = pk.pp.find_tissue(s)
    tiles = pk.pp.tile(s, tile_px=224, mpp=2.8, tissue=mask)
    # an independent truth: the 187 Spatial Transcriptomics spots were printed under the tissue (their
    # positions in this JPEG's frame come with the data set); nearly all fall in a kept 627-um tile
    import pandas as pd

    spots = pd.read_csv(shared_data / "spatial/her2st/C2_selection.tsv", sep="\t")
    side = 224 * 2.8 / 0.7
    x, y = tiles.obs["x"].to_numpy(), tiles.obs["y"].to_numpy()
    hit = [((x <= sx) & (sx < x + side) & (y <= sy) & (sy < y + side)).any()
           for sx, sy in zip(spots["pixel_x"], spots["pixel_y"])]
    assert len(hit) == 187 and np.mean(hit) >= 0.95  # 0.984 measured
    assert tiles.n_obs <= 40  # the section covers about a quarter of the image (110 grid squares)
    assert tiles.uns["slide"]["backend"] == "image"
    assert calls == []  # 2.8 um/px is level 1 as it is: the full image was never decoded
    small = tiles[:3].copy()
    with pytest.warns(UserWarning, match="RANDOM weights"):
        pk.tl.embed_tiles(small, s, "vit_tiny_test", num_workers=0, progress=False, batch_size=3)
    feats = small.obsm["X_vit_tiny_test"]
    assert feats.shape == (3, 192) and np.isfinite(feats).all()
    t1 = s.read_tile(4000, 4000, tile_px=64, mpp=0.7)
    t2 = s.read_tile(6000, 2000, tile_px=64, mpp=0.7)
    assert calls == [1]  # level 0: decoded once, then every tile is a slice
    np.testing.assert_array_equal(t1, her2_ref[4000:4064, 4000:4064])
    np.testing.assert_array_equal(t2, her2_ref[2000:2064, 6000:6064])


def test_png_same_tiles_as_svs(synth_png):
    svs, png, px = synth_png
    with pytest.raises(MppError, match="mpp="):
        pk.read_slide(png)
    s = pk.read_slide(png, mpp=0.5)
    ref = pk.read_slide(svs)
    assert s.backend == "image" and ref.backend == "tiffslide"
    assert s.dimensions == ref.dimensions == (2048, 1536)
    # level 0 of both is the same pixels: the tiles at 0.5 mpp are identical
    for x, y in [(0, 0), (700, 300), (1900, 1400)]:
        np.testing.assert_array_equal(s.read_tile(x, y, 256, 0.5), ref.read_tile(x, y, 256, 0.5))
    # level 1 (4x) is the exact 4x4 mean of level 0 (PIL's reduce rounds half up)
    box = px[:384 * 4, :512 * 4].reshape(384, 4, 512, 4, 3).astype(float).mean(axis=(1, 3))
    lvl1 = s.read_region((0, 0), 1, (512, 384)).astype(float)
    assert np.abs(lvl1 - box).max() <= 0.5 + 1e-9
    # tiles from the PNG and from the SVS: the blobs are where the generator put them
    a, b = pk.pp.tile(s, 256, 0.5), pk.pp.tile(ref, 256, 0.5)
    assert a.n_obs > 0
    xy_a = set(zip(a.obs["x"], a.obs["y"]))
    xy_b = set(zip(b.obs["x"], b.obs["y"]))
    assert len(xy_a ^ xy_b) <= 0.1 * len(xy_b)  # tissue masks come from different level-1 pixels
    truth = pk.datasets.synthetic_truth(svs)
    r = truth["blobs"][0]
    cx, cy = (r["x0"] + r["x1"]) / 2, (r["y0"] + r["y1"]) / 2
    assert any(x <= cx < x + 256 and y <= cy < y + 256 for x, y in xy_a)


def test_png_transparency_gray_and_pickle(tmp_path):
    rgba = np.zeros((300, 400, 4), np.uint8)
    rgba[..., :3] = (200, 120, 180)
    rgba[:, 200:, 3] = 255  # the left half is transparent: background
    p = tmp_path / "cut.png"
    Image.fromarray(rgba, "RGBA").save(p)
    s = pk.read_slide(p, mpp=0.5)
    px = s.read_region((0, 0), 0, (400, 300))
    assert (px[:, :200] == 255).all() and (px[:, 200:] == (200, 120, 180)).all()
    s2 = pickle.loads(pickle.dumps(s))
    assert s2._backend is None and s2.backend == "image"
    np.testing.assert_array_equal(s2.read_region((0, 0), 0, (400, 300)), px)
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(gray16)
    with pytest.raises(NotBrightfieldError, match=r"gray16\.png.*single-channel"):
        pk.read_slide(gray16, mpp=0.5)


def test_content_not_suffix(tmp_path, synth_png):
    _, png, _ = synth_png
    lying = tmp_path / "scan.svs"
    lying.write_bytes(png.read_bytes())
    s = pk.read_slide(lying, mpp=0.5)
    assert s.backend == "image" and s.slide_id == "scan"
    with pytest.raises(SlideReadError, match=r"scan\.svs.*not a TIFF"):
        pk.read_slide(lying, mpp=0.5, backend="tiffslide")
    with pytest.raises(ValueError, match="backend='nope'"):
        pk.read_slide(png, backend="nope")
    from pathkit._raw_tiles import raw_reader

    reader, why = raw_reader(s, 256, 0.5)
    assert reader is None and "'image' backend" in why


def test_ome_tiff_as_image(tmp_path):
    img = np.full((256, 320, 3), 230, np.uint8)
    img[50:150, 60:200] = (150, 60, 120)
    p = tmp_path / "plain.ome.tif"
    tifffile.imwrite(p, img, photometric="rgb", metadata={"axes": "YXS", "PhysicalSizeX": 250.0,
                                                         "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 0.25,
                                                         "PhysicalSizeYUnit": "µm"})
    s = pk.read_slide(p, backend="image")
    assert s.backend == "image" and s.mpp == pytest.approx(0.25) and s.mpp_source == "metadata"
    assert "OME-XML" in s.properties["pathkit.mpp-origin"]
    np.testing.assert_array_equal(s.read_region((0, 0), 0, (320, 256)), img)
    auto = pk.read_slide(p)  # auto: TIFF goes to tiffslide; pathkit converts the nm that tiffslide skips
    assert auto.backend == "tiffslide" and auto.mpp == pytest.approx(0.25)
