"""dtype="auto" (bfloat16 on CPUs with native bf16, pathkit._device.resolve_dtype) against dtype="float32", per
model family, on real tiles of CMU-1: the cosine of each embedding to its float32 counterpart must be >= 0.999.

Random weights, reduced depths/widths (the same layer types as the released models) so that the tests stay
fast; the families are those of the registry: timm ViT, BEiT (BEPH), the CoCa image tower (CONCH), the CLAM
ResNet-50 trunk (with a lighter timm ResNet-26 trunk), and the LongNet slide encoder (Prov-GigaPath).
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import pathkit as pk
from pathkit._device import cpu_has_native_bf16, resolve_dtype
from pathkit.models import registry, tile_encoders
from pathkit.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec, register
from pathkit.models.zoo import BEPH_MEAN, BEPH_STD

pytestmark = pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 / AMX): dtype='auto' is float32")

COS_MIN = 0.999
N_TILES = 12


@pytest.fixture(scope="module")
def test_models():
    """Reduced registry entries of each family; the registry is restored afterwards."""
    from pathkit.models.clip import register_clip_variant

    saved, builders = dict(registry._REGISTRY), dict(tile_encoders.BUILDERS)
    register(ModelSpec(
        name="beit_tiny_test", arch="beit_base_patch16_224",
        kwargs={"img_size": 224, "embed_dim": 192, "depth": 2, "num_heads": 3},
        embed_dim=192, input_size=224, resize=256, interpolation="bilinear", mean=BEPH_MEAN, std=BEPH_STD,
        pool="head"), overwrite=True)  # as "beph": BEiT with relative position bias, layer scale, avg token
    register_clip_variant("conch_tiny_test", "conch", {"vision": {"width": 192, "layers": 2, "heads": 3}},
                          input_size=224)
    register(ModelSpec(
        name="resnet_trunc_test", arch="pathkit:resnet50_trunc", kwargs={"arch": "resnet26"}, embed_dim=1024,
        input_size=224, resize=224, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD,
        pool="head"), overwrite=True)
    register(ModelSpec(
        name="longnet_tiny_test", kind="slide", arch="pathkit:longnet",
        kwargs={"in_chans": 192, "embed_dim": 128, "depth": 2, "heads": 4, "mlp_ratio": 4, "slide_ngrids": 1000,
                "tile_size": 256, "max_wsi_size": 262144},
        embed_dim=128, input_size=0, resize=None, pool="mean"), overwrite=True)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(saved)
    tile_encoders.BUILDERS.clear()
    tile_encoders.BUILDERS.update(builders)


@pytest.fixture(scope="module")
def cmu1(shared_data):
    slide = pk.read_slide(shared_data / "slides" / "CMU-1-Small-Region.svs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiles = pk.pp.tile(slide)
    return slide, tiles[:N_TILES].copy()


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.atleast_2d(a).astype(np.float64), np.atleast_2d(b).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def _embed(tiles, slide, model, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        out = pk.tl.embed_tiles(tiles, slide, model, weights="random", device="cpu", dtype=dtype, batch_size=N_TILES,
                                num_workers=0, progress=False, copy=True, key_added="X_test")
    return out.obsm["X_test"], out.uns["models"]["X_test"]


def test_auto_is_bf16_here():
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_dtype("float32", "cpu") == torch.float32


@pytest.mark.parametrize("model", ["vit_tiny_test", "beit_tiny_test", "conch_tiny_test_vision",
                                   "resnet_trunc_test"])
def test_tile_encoder_auto_vs_float32(model, test_models, cmu1):
    slide, tiles = cmu1
    ref, info32 = _embed(tiles, slide, model, "float32")
    got, info = _embed(tiles, slide, model, "auto")
    assert info32["dtype"] == "float32" and info["dtype"] == "bfloat16"
    assert np.isfinite(got).all() and ref.std() > 0
    assert not np.array_equal(got, ref)  # bf16 really ran
    cos = _cos(got, ref)
    assert cos.min() >= COS_MIN, f"{model}: cosine auto vs float32 min {cos.min():.6f}, mean {cos.mean():.6f}"


def test_longnet_auto_vs_float32(test_models, cmu1):
    slide, tiles = cmu1
    feats, _ = _embed(tiles, slide, "vit_tiny_test", "float32")
    tiles = tiles.copy()
    tiles.obsm["X_vit_tiny_test"] = feats
    vecs = {}
    for dtype in ("float32", "auto"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pk.tl.embed_slide(tiles, "longnet_tiny_test", use_rep="X_vit_tiny_test", weights="random",
                              device="cpu", dtype=dtype, key_added=f"ln_{dtype}", progress=False)
        vecs[dtype] = np.asarray(tiles.uns["slide_embeddings"][f"ln_{dtype}"], dtype=np.float32)
        assert tiles.uns["slide_embeddings_info"][f"ln_{dtype}"]["dtype"] == \
            ("float32" if dtype == "float32" else "bfloat16")
    assert not np.array_equal(vecs["auto"], vecs["float32"])
    cos = float(_cos(vecs["auto"], vecs["float32"])[0])
    assert cos >= COS_MIN, f"LongNet: cosine auto vs float32 {cos:.6f}"
