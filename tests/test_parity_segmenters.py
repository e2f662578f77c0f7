"""Deep tissue / artefact segmenters: parity with HEST's and GrandQC's own code on seeded random weights.

Fixtures: tests/fixtures/parity/seg/make_seg.py ran hestcore 1.0.4 (HEST's loader and
``segment_tissue_deep``) and GrandQC's scripts (``wsi_tis_detect.py``, ``main.py`` @ 045b7a2) on
``cmu1_600x700.png`` (CMU-1-Small-Region read at 1 um/px, a 600 x 700 crop) written as an Aperio slide.
The full networks are compared on a 128-px crop (logits); the slide pipelines (patching, padding, JPEG
round trip, normalisation, stitching, tissue gating) with the same networks reduced (a small DeepLab
stand-in for HEST, 3-stage smp models for GrandQC), because a full DeepLabV3-ResNet50 takes ~10 s per 512-px
patch on a shared CPU.
"""
from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from _seg_weights import SMP_REDUCED, seeded_state_dict, tiny_deeplab
from PIL import Image

import pathkit as pk
from pathkit.errors import WeightsError
from pathkit.models.registry import register
from pathkit.models.segmenters import build_segmenter, get_segmenter, register_segmenter_builder
from pathkit.pp._deep_tissue import _Grid, _logits, _starts, jpeg_roundtrip_bgr, load_segmenter

FIX = Path(__file__).parent / "fixtures" / "parity" / "seg"
TOL = 1e-4
CPU = {"device": "cpu", "dtype": "float32"}


@pytest.fixture(scope="module")
def ref():
    z = np.load(FIX / "seg_parity.npz")
    out = {}
    for k in z.files:
        if k.endswith("_shape"):
            continue
        v, shape = z[k], tuple(z[k + "_shape"])
        if k.endswith(("_mask", "_tissue")):
            v = np.unpackbits(v)[: int(np.prod(shape))].reshape(shape).astype(bool)
        out[k] = v
    return out


@pytest.fixture(scope="module")
def image():
    return np.asarray(Image.open(FIX / "cmu1_600x700.png").convert("RGB"))


def _slide(path, arr, mpp):
    """`arr` as a one-level Aperio TIFF at `mpp` (what make_seg.py gave OpenSlide)."""
    import tifffile

    desc = f"Aperio Image Library v12.0.0\r\n{arr.shape[1]}x{arr.shape[0]} (256x256) RAW|AppMag = 20|MPP = {mpp}"
    tifffile.imwrite(path, arr, tile=(256, 256), description=desc, photometric="rgb", compression=None,
                     metadata=None)
    return pk.read_slide(path, allow_implausible_mpp=True)


def _variant(base: str, name: str, **changes):
    spec = dataclasses.replace(get_segmenter(base), name=name, weights=(), **changes)
    register(spec, overwrite=True)
    return spec


def _crop_logits(name, sd, image):
    spec, model, dev, dt = load_segmenter(name, sd, **CPU)
    crop = image[200:328, 300:428]
    return _logits(model, spec, crop[None], dev, dt)[0][:, ::2, ::2]


def test_hest_deeplabv3_logits_match_hest(ref, image):
    net = build_segmenter(get_segmenter("hest"))
    # HEST's checkpoint layout: Lightning 'state_dict' with a 'model.' prefix and an aux head it drops
    sd = {"model." + k: v for k, v in seeded_state_dict(net).items()}
    sd["model.aux_classifier.0.weight"] = torch.zeros(1)
    err = float(np.abs(_crop_logits("hest", sd, image) - ref["hest_logits_crop"]).max())
    print(f"PARITY hest logits {err:.2e}")
    assert err < TOL, err


@pytest.mark.parametrize("name,key", [("grandqc", "grandqc_logits_crop"),
                                      ("grandqc_artifact", "grandqc_artifact_logits_crop")])
def test_grandqc_networks_logits_match_grandqc(ref, image, name, key):
    sd = seeded_state_dict(build_segmenter(get_segmenter(name)))
    got = _crop_logits(name, sd, image)
    err = float(np.abs(got - ref[key]).max())
    print(f"PARITY {name} logits {err:.2e}")
    assert got.shape == ref[key].shape and err < TOL, err


def test_hest_pipeline_matches_segment_tissue_deep(ref, image, tmp_path):
    register_segmenter_builder("test.tiny_deeplab", lambda spec: tiny_deeplab(len(spec.classes)))
    _variant("hest", "hest_tiny_test", arch="test.tiny_deeplab")
    sd = {"model." + k: v for k, v in seeded_state_dict(tiny_deeplab(2)).items()}
    sd["model.aux_classifier.0.weight"] = torch.zeros(1)
    torch.save({"state_dict": sd, "epoch": 0}, tmp_path / "tiny.ckpt")
    slide = _slide(tmp_path / "s.svs", image, 1.0)
    tm = pk.pp.find_tissue(slide, mask_mpp=1.0, method="hest_tiny_test", weights=tmp_path / "tiny.ckpt", pen=False,
                           progress=False, **CPU)
    want = ref["hest_mask"][:600, :700]  # HEST stitches whole patches (1024 x 1024); the slide is 600 x 700
    assert tm.mask.shape == want.shape and 0.2 < want.mean() < 0.98
    diff = int((tm.mask != want).sum())
    print(f"PARITY hest pipeline: {diff} of {want.size} px differ")
    assert diff == 0
    assert tm.downsample == 1.0 and tm.fraction == pytest.approx(want.mean())
    # threshold = the cut on the tissue probability (TRIDENT's confidence_thresh): lower keeps more tissue
    kw = dict(mask_mpp=1.0, method="hest_tiny_test", weights=tmp_path / "tiny.ckpt", pen=False, progress=False, **CPU)
    lo, hi = (pk.pp.find_tissue(slide, threshold=t, **kw).mask for t in (0.4, 0.6))
    assert (lo >= tm.mask).all() and (tm.mask >= hi).all() and lo.sum() > tm.mask.sum() > hi.sum()
    with pytest.raises(ValueError, match="probability cut"):
        pk.pp.find_tissue(slide, threshold=200, **kw)


def test_grandqc_tissue_pipeline_matches_wsi_tis_detect(ref, image, tmp_path):
    # OpenCV's JPEG round trip of the RGB array (taken as BGR), done with PIL
    got = jpeg_roundtrip_bgr(image, 80)
    assert hashlib.sha256(np.ascontiguousarray(got).tobytes()).hexdigest() == str(ref["grandqc_jpeg_sha256"])
    _variant("grandqc", "grandqc_tiny_test", kwargs={"encoder_name": "timm-efficientnet-b0", **SMP_REDUCED})
    sd = seeded_state_dict(build_segmenter(get_segmenter("grandqc_tiny_test")))
    sd["segmentation_head.0.bias"] = torch.from_numpy(ref["grandqc_head_bias"])
    slide = _slide(tmp_path / "s.svs", image, 10.0)  # 2 x 2 patches of 512 at 10 um/px, the last ones shifted
    tm = pk.pp.find_tissue(slide, mask_mpp=10.0, method="grandqc_tiny_test", weights=sd, pen=False,
                           progress=False, **CPU)
    want = ref["grandqc_mask"]
    assert 0.05 < want.mean() < 0.95
    diff = int((tm.mask != want).sum())
    print(f"PARITY grandqc tissue pipeline: {diff} of {want.size} px differ")
    assert diff == 0


def test_grandqc_artifact_pipeline_matches_main(ref, image, tmp_path):
    _variant("grandqc_artifact", "grandqc_artifact_tiny_test",
             kwargs={"encoder_name": "timm-efficientnet-b0", **SMP_REDUCED})
    sd = seeded_state_dict(build_segmenter(get_segmenter("grandqc_artifact_tiny_test")), seed=1)
    slide = _slide(tmp_path / "s.svs", image, 1.0)
    tissue = pk.pp.TissueMask(ref["grandqc_artifact_tissue"], downsample=1.0, threshold=0.0,
                              slide_id=slide.slide_id, slide_dimensions=slide.dimensions)
    art = pk.pp.find_artifacts(slide, "grandqc_artifact_tiny_test", tissue=tissue, mask_mpp=1.0, weights=sd,
                               progress=False, **CPU)
    want = ref["grandqc_artifact_labels"]
    # GrandQC predicts whole 512-px patches only (here one) and leaves the rest 0; pathkit also covers the rest
    got = art.labels
    diff = int((got[:512, :512] != want[:512, :512]).sum())
    print(f"PARITY grandqc artefact pipeline: {diff} of {512 * 512} px differ")
    assert diff == 0
    assert len(np.unique(want[:512, :512])) >= 4  # background, and several artefact classes
    assert (got[~ref["grandqc_artifact_tissue"]] == 7).all()  # outside the tissue: background
    assert set(art.artifact_classes) == {"fold", "darkspot_foreign_object", "pen_marking", "edge_air_bubble",
                                         "out_of_focus"}
    share = art.area_fractions()
    assert share["background"] == pytest.approx((got == 7).mean(), abs=1e-6)
    # tile QC columns: the share of each tile under each artefact class
    tiles = pk.pp.tile(slide, tile_px=64, mpp=1.0, tissue=tissue, min_tissue=0.0, qc=False)
    art.tile_fractions(tiles)
    x, y = tiles.obs["x"].to_numpy(), tiles.obs["y"].to_numpy()
    edge = np.array([(got[b:b + 64, a:a + 64] == 5).mean() for a, b in zip(x, y)])
    np.testing.assert_allclose(tiles.obs["artifact_edge_air_bubble"].to_numpy(), edge, atol=1e-9)
    anyart = np.array([np.isin(got[b:b + 64, a:a + 64], [2, 3, 4, 5, 6]).mean() for a, b in zip(x, y)])
    np.testing.assert_allclose(tiles.obs["artifact_any"].to_numpy(), anyart, atol=1e-9)
    assert anyart.max() > 0.5


def test_find_tissue_hest_end_to_end_on_a_synthetic_slide(tmp_path):
    path = pk.datasets.synthetic_slide(tmp_path / "syn.tif", width=1024, height=960, mpp=0.5)
    torch.save(build_segmenter(get_segmenter("hest")).state_dict(), tmp_path / "hest_random.pth")  # random init
    tm = pk.pp.find_tissue(path, method="hest", weights=tmp_path / "hest_random.pth", progress=False, **CPU)
    assert isinstance(tm, pk.pp.TissueMask) and tm.method == "hest"
    assert tm.mask.shape == (math.ceil(960 / 16), math.ceil(1024 / 16)) and tm.mask.dtype == bool
    assert tm.downsample == 16.0 and tm.slide_dimensions == (1024, 960)
    assert tm.fraction == pytest.approx(tm.mask[:, :].mean(), abs=0.02)
    # the mask feeds tiling as Otsu's does: 4 x 3 whole tiles of 256 level-0 px, their tissue share from the mask
    tiles = pk.pp.tile(path, tile_px=32, mpp=4.0, tissue=tm, min_tissue=0.0)
    assert tiles.n_obs == 12
    x, y = tiles.obs["x"].to_numpy(), tiles.obs["y"].to_numpy()
    np.testing.assert_allclose(tiles.obs["tissue"].to_numpy(), tm.area_fraction(x, y, x + 256, y + 256), atol=1e-9)


def test_segment_grid_area_average_and_patch_placement():
    # a 512-px decision map at 1 um/px onto an 8 um/px grid: each mask pixel is the mean of an 8 x 8 block
    rng = np.random.default_rng(0)
    dec = (rng.random((1, 512, 512)) < 0.5).astype(float)
    g = _Grid(1, (64, 64), 1 / 8)
    g.add(dec, 0, 0)
    np.testing.assert_allclose(g.fractions()[0], dec[0].reshape(64, 8, 64, 8).mean(axis=(1, 3)))
    # a mask finer than the model (10 um/px model, 8 um/px mask): each model px spreads over 1.25 mask px
    g = _Grid(1, (5, 5), 1.25)
    g.add(np.ones((1, 2, 2)), 0, 0)
    assert g.fractions()[0, :3, :3].min() == 1.0 and g.cov[2, 2] == pytest.approx(0.25)
    assert _starts(700, 512, "pad") == [(0, 0, 512), (512, 512, 700)]  # HEST: the last patch runs past the edge
    assert _starts(700, 512, "shift") == [(0, 0, 512), (188, 512, 700)]  # GrandQC: moved back, new px only
    assert _starts(300, 512, "shift") == [(-212, 0, 300)]  # smaller than a patch: padded before 0, as PIL's crop


def test_weights_random_warn_and_missing_weights_say_where(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    with pytest.raises(WeightsError, match="huggingface-cli download MahmoodLab/hest-tissue-seg"):
        load_segmenter("grandqc", None, **CPU)
    with pytest.raises(WeightsError, match=r"zenodo.org/records/14041538.*weights_only=False"):
        load_segmenter("grandqc_artifact_mpp15", None, **CPU)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        load_segmenter("grandqc", "random", **CPU)
    assert any("RANDOM" in str(x.message) for x in w)
    with pytest.raises(WeightsError, match="do not fit"):
        load_segmenter("grandqc", {"encoder.x": torch.zeros(1)}, **CPU)
    entries = pk.models.list_models("segmenter")
    assert {"hest", "grandqc", "grandqc_artifact"} <= set(entries.index)
    assert entries.loc["hest", "license"].startswith("CC BY-NC-SA 4.0")
    hest, gq = get_segmenter("hest"), get_segmenter("grandqc")
    assert (hest.mpp, hest.input_size, hest.tissue_classes, gq.mpp, gq.tissue_classes, gq.jpeg_quality) == \
        (1.0, 512, (1,), 10.0, (0,), 80)


def test_deep_mask_drops_pen_ink_like_otsu(shared_data, tmp_path):
    from pathkit.pp._pen import pen_mask

    # a real diagnostic thumbnail circled in red, green and blue/black ink, as a slide at 8 um/px
    img = np.asarray(Image.open(shared_data / "patches" / "pen" / "diagnostic-slide-thumb-rgb.png").convert("RGB"))
    slide = _slide(tmp_path / "pen.svs", img, 8.0)
    _variant("grandqc", "grandqc_tiny_test", kwargs={"encoder_name": "timm-efficientnet-b0", **SMP_REDUCED})
    sd = seeded_state_dict(build_segmenter(get_segmenter("grandqc_tiny_test")))
    kw = dict(method="grandqc_tiny_test", weights=sd, threshold=0.0, progress=False, **CPU)  # threshold 0: all
    raw = pk.pp.find_tissue(slide, pen=False, **kw)
    clean = pk.pp.find_tissue(slide, **kw)
    ink = pen_mask(img, ("red", "green", "blue", "black"))
    assert raw.mask.all() and raw.pen == 0 and raw.pen_mask is None
    np.testing.assert_array_equal(clean.pen_mask, ink)
    np.testing.assert_array_equal(clean.mask, raw.mask & ~ink)
    assert clean.pen == pytest.approx(ink.mean()) and clean.pen > 0.01
