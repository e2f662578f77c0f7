"""CTransPath / CHIEF_CTransPath tile encoders and the CHIEF slide encoder: parity with the authors' code
(github:Xiyue-Wang/TransPath ctran.py on the patched timm 0.5.4 `timm-ctp`; github:hms-dbmi/CHIEF
models/CHIEF.py), random weights; generators in tests/fixtures/parity/make_ctranspath.py / make_chief.py."""
from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch

import pathkit as pk
from pathkit.errors import WeightsError
from pathkit.models import get_spec

FIXTURES = Path(__file__).parent / "fixtures" / "parity"


def _authors_ctranspath_state_dict(ref) -> dict:
    """The fixture generator's rule, in the authors' (timm 0.5.4) key names and order."""
    g = torch.Generator().manual_seed(ref["seed"])
    sd = {}
    for name, shape in zip(ref["names"], ref["shapes"]):
        if name.endswith(("relative_position_index", "attn_mask")):
            sd[name] = torch.zeros(shape)  # computed buffers in the file: the key map must drop them
        elif name.endswith("num_batches_tracked"):
            sd[name] = torch.tensor(0)
        elif name.endswith("running_var"):
            sd[name] = 0.5 + torch.rand(shape, generator=g)
        elif name.endswith(".weight") and len(shape) == 1:
            sd[name] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        else:
            sd[name] = 0.05 * torch.randn(shape, generator=g)
    return sd


def test_ctranspath_matches_authors_timm054_code(tmp_path):
    name = "ctranspath"
    ref = torch.load(FIXTURES / "ctranspath.pt", weights_only=True)
    sd = _authors_ctranspath_state_dict(ref)
    assert "layers.0.downsample.reduction.weight" in sd  # 0.5.4 naming: merging at the end of a stage
    path = tmp_path / "ctranspath.pth"
    torch.save({"model": sd}, path)  # as the released files: td["model"]
    enc, info = pk.models.load_tile_encoder(name, weights=path)
    assert info["key_map"] == "swin_timm054"
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(ref["x_seed"]))
    with torch.no_grad():
        out = enc(x)
    err = (out - ref["out"]).abs().max().item()
    print(f"PARITY {name} {err:.2e}")
    assert out.shape == (2, 768)
    assert err < 1e-4, err
    # the stem is the network's patch embedding and the head is gone: 27.5M parameters, as the authors' model
    assert sum(p.numel() for p in enc.parameters()) == get_spec(name).n_params == 27_520_038


def test_ctranspath_entries_recipe_and_manual_weights():
    a, b = get_spec("ctranspath"), get_spec("chief_ctranspath")
    # the same network and key map (the parity above covers both); only weights, licence and provenance differ
    assert (a.arch, a.kwargs, a.key_map, a.n_params) == (b.arch, b.kwargs, b.key_map, b.n_params)
    for name in ("ctranspath", "chief_ctranspath"):
        spec = get_spec(name)
        assert (spec.input_size, spec.resize, spec.embed_dim, spec.pool) == (224, 224, 768, "head")
        assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
        with pytest.raises(WeightsError, match="weights=PATH"):
            pk.models.load_tile_encoder(name)  # no public URL: never silently random
    assert "GPL-3.0" in get_spec("ctranspath").license and "AGPL-3.0" in get_spec("chief_ctranspath").license


# ------------------------------------------------------------------------------------------ CHIEF slide
def _authors_chief_state_dict(ref) -> dict:
    g = torch.Generator().manual_seed(ref["seed"])
    return {k: 0.05 * torch.randn(s, generator=g) for k, s in zip(ref["names"], ref["shapes"])}


def _chief_fixture(tmp_path):
    ref = torch.load(FIXTURES / "chief.pt", weights_only=True)
    path = tmp_path / "CHIEF_pretraining.pth"
    torch.save(_authors_chief_state_dict(ref), path)  # the released file is a plain state dict
    h = torch.randn(50, 768, generator=torch.Generator().manual_seed(ref["h_seed"]))
    return ref, path, h


def test_chief_matches_authors_wsi_feature(tmp_path):
    from pathkit.models.chief import load_chief

    ref, path, h = _chief_fixture(tmp_path)
    net, info = load_chief("chief", weights=path)
    with torch.no_grad():
        emb = net(h)
        logits13, logits0 = net.bag_logits(h, 13), net.bag_logits(h, "brain")
        _, a = net.attention(h)
    err = (emb - ref["wsi_feature"]).abs().max().item()
    print(f"PARITY chief {err:.2e}")
    assert emb.shape == (768,) and err < 1e-5, err
    # the pretraining head and its anatomical-site term match too (the site changes the logits only)
    torch.testing.assert_close(logits13, ref["bag_logits_13"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits0, ref["bag_logits_0"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a, ref["attention_raw"], atol=1e-5, rtol=1e-5)
    assert info["weights_sha256"] and info["weights"] == str(path)


def test_chief_through_embed_slide(tmp_path):
    import anndata as ad
    import numpy as np
    import pandas as pd

    ref, path, h = _chief_fixture(tmp_path)
    a = ad.AnnData(obs=pd.DataFrame({"slide_id": "s"}, index=[str(i) for i in range(50)]))
    a.obsm["X_chief_ctranspath"] = h.numpy()
    a.uns["models"] = {"X_chief_ctranspath": {"name": "chief_ctranspath"}}
    assert pk.tl.embed_slide(a, "chief", weights=path, dtype="float32") is None
    got = a.uns["slide_embeddings"]["chief"]
    assert got.shape == (768,)
    np.testing.assert_allclose(got, ref["wsi_feature"].numpy(), atol=1e-5)
    info = a.uns["slide_embeddings_info"]["chief"]
    assert info["use_rep"] == "X_chief_ctranspath" and info["arch"] == "pathkit:chief"
    b = a[np.random.default_rng(1).permutation(50)].copy()  # coordinate-free: any tile order
    pk.tl.embed_slide(b, "chief", weights=path, dtype="float32")
    np.testing.assert_allclose(b.uns["slide_embeddings"]["chief"], got, atol=1e-5)
    # features of another tile encoder (TransPath's own CTransPath weights) are refused
    a.uns["models"] = {"X_chief_ctranspath": {"name": "ctranspath"}}
    with pytest.raises(ValueError, match="'ctranspath' features.*'chief_ctranspath'"):
        pk.tl.embed_slide(a, "chief", weights=path)
    # the tiling mpp (1.0, as TransPath recommends) is not in CHIEF's code: another mpp warns, never refuses
    a.uns["models"] = {"X_chief_ctranspath": {"name": "chief_ctranspath"}}
    a.uns["tile_spec"] = {"tile_px": 224, "mpp": 0.5, "slide_mpp": 0.25}
    with pytest.warns(UserWarning, match=r"tiles at 1.0 mpp.*0.5 mpp.*not stated in the authors' code"):
        pk.tl.embed_slide(a, "chief", weights=path, dtype="float32", key_added="c05")
    np.testing.assert_allclose(a.uns["slide_embeddings"]["c05"], got, atol=1e-5)


def test_chief_entry_and_weights(tmp_path):
    from pathkit.models.chief import ANATOMIC_SITES, load_chief

    spec = get_spec("chief", kind="slide")
    assert spec.extra["tile_model"] == "chief_ctranspath" and get_spec("chief_ctranspath").kind == "tile"
    assert spec.embed_dim == 768 == spec.kwargs["in_dim"] and "AGPL-3.0" in spec.license
    assert len(ANATOMIC_SITES) == 19 and ANATOMIC_SITES[13] == "colon"
    with pytest.raises(WeightsError, match="weights=PATH"):
        load_chief("chief")
    torch.save({"w": torch.zeros(2)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="chief"):
        load_chief("chief", weights=tmp_path / "bad.pth")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        net, _ = load_chief("chief", weights="random")
    assert net.organ_embedding.shape == (19, 768)
    assert any("RANDOM" in str(x.message) for x in w)
