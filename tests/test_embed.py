"""pk.tl.embed_tiles: streamed tile embedding into an AnnData with pathkit's keys."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

import pathkit as pk
from pathkit.errors import TableError
from pathkit.models import build_tile_encoder, get_spec
from pathkit._io import write_h5ad_atomic
from pathkit.tl._preprocess import TilePreprocess

MODEL = "vit_tiny_test"  # 2-block ViT-Ti/16, 192-d


def _sha256(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    blobs = [{"kind": "rect", "x0": 0, "y0": 256, "x1": 1536, "y1": 1024},  # 6 x 3 whole tiles
             {"kind": "disc", "cx": 1792, "cy": 1280, "r": 200}]
    return pk.datasets.synthetic_slide(tmp_path_factory.mktemp("embed") / "synth.tiff",
                                       width=2048, height=1536, mpp=0.5, blobs=blobs)


@pytest.fixture(scope="module")
def slide(synth):
    return pk.read_slide(synth)


@pytest.fixture(scope="module")
def tiles(slide):
    t = pk.pp.tile(slide, tile_px=256, mpp=0.5)
    assert len(t) >= 18, "the 6 x 3 tissue rectangle alone gives 18 tiles"
    return t


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """The test model's random weights saved once, so a reference model and embed_tiles share them."""
    from safetensors.torch import save_file

    torch.manual_seed(123)
    enc = build_tile_encoder(MODEL, device="cpu")
    path = tmp_path_factory.mktemp("w") / "vit_tiny_test.safetensors"
    save_file({k: v.contiguous() for k, v in enc.net.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def adata(slide, tiles, weights_file):
    return pk.tl.embed_tiles(tiles, slide, MODEL, weights=weights_file, device="cpu", dtype="float32",
                             batch_size=4, num_workers=0, progress=False, copy=True)


KEY = f"X_{MODEL}"


def _reference(slide, tiles, weights_file):
    """The model applied by hand: read_tile -> torchvision resize (uint8, antialiased bicubic) -> centre crop
    -> float /255 -> normalise -> forward."""
    import torchvision.transforms.v2.functional as TF
    from torchvision.transforms import InterpolationMode

    spec = get_spec(MODEL)
    enc, _ = pk.models.load_tile_encoder(MODEL, weights=weights_file)
    tile_px, mpp = tiles.uns["tile_spec"]["tile_px"], tiles.uns["tile_spec"]["mpp"]
    imgs = np.stack([slide.read_tile(int(x), int(y), tile_px=tile_px, mpp=mpp)
                     for x, y in zip(tiles.obs["x"], tiles.obs["y"])])
    t = torch.from_numpy(imgs).permute(0, 3, 1, 2).contiguous()
    t = TF.resize(t, [spec.resize or spec.input_size], interpolation=InterpolationMode.BICUBIC,
                  antialias=True)
    t = TF.center_crop(t, [spec.input_size, spec.input_size]).float() / 255.0
    t = TF.normalize(t, mean=list(spec.mean), std=list(spec.std))
    with torch.no_grad():
        return enc(t).numpy()


def test_features_equal_model_applied_by_hand(adata, slide, tiles, weights_file):
    ref = _reference(slide, tiles, weights_file)
    X = adata.obsm[KEY]
    assert X.dtype == np.float32 and X.shape == (len(tiles), 192)
    np.testing.assert_allclose(X, ref, rtol=1e-4, atol=1e-4)
    # features differ between tiles (not one constant vector)
    assert np.abs(X - X.mean(0)).max() > 1e-3
    # the input object is untouched with copy=True, and X stays empty: features live in obsm
    assert KEY not in tiles.obsm and adata.n_vars == 0


def test_obs_obsm_uns_match_tile_table(adata, slide, tiles, weights_file):
    n = len(tiles)
    assert list(adata.obs_names) == [str(i) for i in range(n)]
    np.testing.assert_array_equal(adata.obs["x"].to_numpy(), tiles.obs["x"].to_numpy())
    np.testing.assert_array_equal(adata.obs["y"].to_numpy(), tiles.obs["y"].to_numpy())
    np.testing.assert_array_equal(adata.obs["tissue"].to_numpy(), tiles.obs["tissue"].to_numpy())
    assert set(adata.obs["slide_id"]) == {slide.slide_id} and slide.slide_id == "synth"
    sp = adata.obsm["spatial"]
    assert sp.dtype == np.float64
    np.testing.assert_array_equal(sp, tiles.obs[["x", "y"]].to_numpy(dtype=np.float64))

    ts = adata.uns["tile_spec"]
    for k, v in tiles.uns["tile_spec"].items():
        assert ts[k] == pytest.approx(v), k
    sl = adata.uns["slide"]
    assert sl["sha256"] == _sha256(slide.path)
    assert sl["slide_id"] == "synth" and sl["mpp"] == pytest.approx(slide.mpp)
    assert list(sl["dimensions"]) == list(slide.dimensions)

    assert list(adata.uns["models"]) == [KEY]
    m = adata.uns["models"][KEY]
    spec = get_spec(MODEL)
    assert m["name"] == MODEL and m["arch"] == spec.arch
    assert m["weights"] == str(weights_file) and m["weights_sha256"] == _sha256(weights_file)
    assert m["mean"] == pytest.approx(list(spec.mean)) and m["std"] == pytest.approx(list(spec.std))
    assert m["input_size"] == 224 and m["pool"] == "cls"
    assert m["dtype"] == "float32" and m["device"] == "cpu"
    assert m["pathkit_version"] == pk.__version__


def test_h5ad_round_trip_is_atomic(adata, tmp_path):
    import anndata as ad

    out = write_h5ad_atomic(adata, tmp_path / "sub" / "synth.h5ad")
    assert sorted(p.name for p in out.parent.iterdir()) == ["synth.h5ad"]  # no temporary file left
    back = ad.read_h5ad(out)
    np.testing.assert_array_equal(back.obsm[KEY], adata.obsm[KEY])
    assert back.uns["models"][KEY]["weights_sha256"] == adata.uns["models"][KEY]["weights_sha256"]
    assert back.uns["tile_spec"]["tile_px"] == 256
    np.testing.assert_array_equal(back.obsm["spatial"], adata.obsm["spatial"])


def test_deterministic_and_same_with_workers(adata, slide, tiles, weights_file):
    kw = dict(weights=weights_file, device="cpu", dtype="float32", batch_size=4, progress=False, copy=True)
    again = pk.tl.embed_tiles(tiles, slide, MODEL, num_workers=0, **kw)
    np.testing.assert_array_equal(again.obsm[KEY], adata.obsm[KEY])
    workers = pk.tl.embed_tiles(tiles, slide, MODEL, num_workers=2, **kw)
    np.testing.assert_array_equal(workers.obsm[KEY], adata.obsm[KEY])


def test_in_place_several_models_and_scanpy(slide, tiles, weights_file):
    """In place by default (returns None); two models side by side; scanpy reads them with use_rep."""
    import scanpy as sc

    t = tiles.copy()
    assert pk.tl.embed_tiles(t, slide, MODEL, weights=weights_file, dtype="float32", num_workers=0,
                             progress=False) is None
    with pytest.warns(UserWarning, match="RANDOM weights"):
        pk.tl.embed_tiles(t, None, MODEL, key_added="X_random", num_workers=0, progress=False)  # slide from uns
    assert {KEY, "X_random"} <= set(t.obsm) and set(t.uns["models"]) == {KEY, "X_random"}
    assert not np.allclose(t.obsm[KEY], t.obsm["X_random"])
    assert t.uns["models"]["X_random"]["weights"] == "random"
    sc.pp.neighbors(t, use_rep=KEY, n_neighbors=5)
    assert t.obsp["connectivities"].shape == (t.n_obs, t.n_obs)


def test_dtype_auto_is_recorded(slide, tiles, weights_file):
    from pathkit._device import cpu_has_native_bf16

    a = pk.tl.embed_tiles(tiles[:4].copy(), slide, MODEL, weights=weights_file, num_workers=0, progress=False,
                          copy=True)
    f = pk.tl.embed_tiles(tiles[:4].copy(), slide, MODEL, weights=weights_file, dtype="float32", num_workers=0,
                          progress=False, copy=True)
    want = "bfloat16" if cpu_has_native_bf16() else "float32"
    assert a.uns["models"][KEY]["dtype"] == want
    cos = (a.obsm[KEY] * f.obsm[KEY]).sum(1) / np.linalg.norm(a.obsm[KEY], axis=1) / np.linalg.norm(f.obsm[KEY], axis=1)
    assert cos.min() > 0.999


def test_old_call_order_gets_a_clear_error(slide, tiles):
    with pytest.raises(TypeError, match="tiles first"):
        pk.tl.embed_tiles(slide, MODEL, tiles)


def test_random_weights_warn_and_are_reproducible(slide, tiles):
    few = tiles[:3].copy()
    with pytest.warns(UserWarning, match="RANDOM weights"):
        a = pk.tl.embed_tiles(few, slide, MODEL, device="cpu", num_workers=0, progress=False, copy=True)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        b = pk.tl.embed_tiles(few, str(slide.path), MODEL, device="cpu", num_workers=0, progress=False, copy=True)
    np.testing.assert_array_equal(a.obsm[KEY], b.obsm[KEY])
    assert a.uns["models"][KEY]["weights"] == "random"


def test_timm_arch_warns_and_embeds(slide, tiles):
    with pytest.warns(UserWarning, match="RANDOM weights"):
        a = pk.tl.embed_tiles(tiles[:2].copy(), slide, "timm:vit_tiny_patch16_224", device="cpu",
                              num_workers=0, progress=False, copy=True)
    k = "X_timm_vit_tiny_patch16_224"
    assert a.obsm[k].shape == (2, 192) and np.isfinite(a.obsm[k]).all()
    assert a.uns["models"][k]["name"] == "timm:vit_tiny_patch16_224"
    assert a.uns["models"][k]["arch"] == "vit_tiny_patch16_224"


def test_empty_tile_table(slide, tiles):
    empty = tiles[:0].copy()
    with pytest.warns(UserWarning, match="no tiles"):
        pk.tl.embed_tiles(empty, slide, MODEL, device="cpu", progress=False)
    assert empty.obsm[KEY].shape == (0, 192)
    assert empty.obsm["spatial"].shape == (0, 2)
    assert empty.uns["models"][KEY]["name"] == MODEL and empty.uns["slide"]["sha256"] == _sha256(slide.path)


def test_tile_table_without_spec_is_refused(slide, tiles):
    bare = tiles.copy()
    del bare.uns["tile_spec"]
    with pytest.raises(TableError, match="tile_spec"):
        pk.tl.embed_tiles(bare, slide, MODEL, device="cpu", progress=False)


def test_tiles_of_another_slide_are_refused(tiles, tmp_path):
    other = pk.read_slide(pk.datasets.synthetic_slide(tmp_path / "other.tiff", width=1024, height=1024, mpp=0.5))
    with pytest.raises(TableError, match="not .*other"):
        pk.tl.embed_tiles(tiles, other, MODEL, device="cpu", progress=False)


def test_tiles_h5ad_round_trip_then_embed(slide, tiles, weights_file, tmp_path):
    """The tiles saved by plain anndata (as `pathkit tile --out` does) embed like the originals."""
    import anndata as ad

    tiles.write_h5ad(tmp_path / "t.h5ad")
    back = ad.read_h5ad(tmp_path / "t.h5ad")
    assert back.uns["tile_spec"]["tile_px"] == 256 and list(back.obs["x"]) == list(tiles.obs["x"])
    pk.tl.embed_tiles(back[:4].copy(), slide, MODEL, weights=weights_file, dtype="float32", num_workers=0,
                      progress=False)


@pytest.mark.parametrize("path", ["cpu_uint8", "float_matmul"])
def test_preprocess_matches_pil_bicubic(slide, tiles, path):
    """Both resize paths (CPU uint8 kernel; float matmul used on GPUs) give PIL's bicubic antialiased
    resize within one grey level. (torch's float interpolate would be off by up to ~7 levels on edges.)"""
    from PIL import Image

    spec = get_spec(MODEL)
    pre = TilePreprocess(spec)
    mean = torch.tensor(spec.mean).view(3, 1, 1)
    std = torch.tensor(spec.std).view(3, 1, 1)
    for i in range(3):
        img = slide.read_tile(int(tiles.obs["x"].iloc[i]), int(tiles.obs["y"].iloc[i]), tile_px=256, mpp=0.5).copy()
        u8 = torch.from_numpy(img)[None]
        ours = pre(u8, channels_last_input=True) if path == "cpu_uint8" else pre(u8.permute(0, 3, 1, 2).float())
        assert ours.shape == (1, 3, 224, 224)
        ours_px = ((ours[0] * std + mean) * 255).permute(1, 2, 0).numpy()
        pil = np.asarray(Image.fromarray(img).resize((224, 224), Image.BICUBIC)).astype(np.float32)
        diff = np.abs(ours_px - pil)
        assert diff.max() <= 1.0 + 1e-3 and diff.mean() < 0.01


def test_resample_matrix_rows():
    """PIL-style weights: rows sum to 1; a 2x box shrink averages pixel pairs."""
    from pathkit.tl._preprocess import resample_matrix

    m = resample_matrix(256, 224, "bicubic")
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
    box = resample_matrix(4, 2, "box")
    np.testing.assert_allclose(box, [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])
    # triangle of half-width 2 centred at 1.0 and 3.0, sampled at pixel centres 0.5, 1.5, ... and
    # renormalised; PIL agrees: [0, 0, 70, 0] -> [10, 30]
    lin = resample_matrix(4, 2, "bilinear")
    np.testing.assert_allclose(lin, [[3 / 7, 3 / 7, 1 / 7, 0], [0, 1 / 7, 3 / 7, 3 / 7]])


def test_preprocess_resize_then_centre_crop():
    """A Prov-GigaPath-style spec (resize 256, crop 224) on a 256-px tile is a pure centre crop."""
    from pathkit.models.registry import ModelSpec

    spec = ModelSpec(name="t", arch="x", input_size=224, resize=256, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    img = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    out = TilePreprocess(spec)(img)
    hand = img[:, :, 16:240, 16:240].float() / 255.0
    hand = (hand - 0.5) / torch.tensor([0.25, 0.5, 1.0]).view(1, 3, 1, 1)
    torch.testing.assert_close(out, hand, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_real_cmu1_end_to_end(shared_data):
    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    slide = pk.read_slide(path)
    a = pk.pp.tile(slide)
    expected = a.n_obs
    with pytest.warns(UserWarning, match="RANDOM weights"):
        pk.tl.embed_tiles(a, slide, MODEL, device="cpu", batch_size=32, progress=False)
    assert expected > 0 and a.n_obs == expected
    assert a.obsm[KEY].shape[1] == 192 and np.isfinite(a.obsm[KEY]).all()
    assert a.uns["slide"]["slide_id"] == "CMU-1-Small-Region"
    assert a.uns["slide"]["sha256"] == _sha256(path)
    assert a.uns["tile_spec"]["tile_px"] == 256 and a.uns["tile_spec"]["mpp"] == 0.5


def test_model_loaded_once_across_slides(slide, tiles, weights_file, monkeypatch, tmp_path):
    """A cohort (or a Dask worker) embeds many slides with one model: it is built once, and a changed
    weights file on disk is noticed."""
    import os
    import shutil

    from pathkit import models
    from pathkit.tl import embed as embed_mod

    calls = []
    real = models.load_tile_encoder

    def counting(*a, **k):
        calls.append(k.get("weights"))
        return real(*a, **k)

    monkeypatch.setattr(models, "load_tile_encoder", counting)
    embed_mod.clear_model_cache()
    w = tmp_path / "w.safetensors"
    shutil.copy(weights_file, w)
    kw = dict(weights=w, num_workers=0, progress=False, copy=True)
    first = pk.tl.embed_tiles(tiles, slide, "vit_tiny_test", **kw)
    again = pk.tl.embed_tiles(tiles, slide, "vit_tiny_test", **kw)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.obsm[KEY], again.obsm[KEY])
    os.utime(w, ns=(0, 0))  # same path, "new" file: reloaded
    pk.tl.embed_tiles(tiles, slide, "vit_tiny_test", **kw)
    assert len(calls) == 2
    embed_mod.clear_model_cache()


def test_read_path_is_recorded(slide, tiles, weights_file, monkeypatch):
    """The JPEG-tiled synthetic slide goes through the raw-tile path; turning it off is recorded too."""
    kw = dict(weights=weights_file, dtype="float32", num_workers=0, progress=False, copy=True)
    a = pk.tl.embed_tiles(tiles[:4].copy(), slide, MODEL, **kw)
    assert a.uns["models"][KEY]["read_path"] == "raw_jpeg"
    monkeypatch.setenv("PATHKIT_RAW_TILES", "0")
    b = pk.tl.embed_tiles(tiles[:4].copy(), slide, MODEL, **kw)
    assert b.uns["models"][KEY]["read_path"].startswith("read_tile")
    np.testing.assert_array_equal(a.obsm[KEY], b.obsm[KEY])
