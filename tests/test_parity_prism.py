"""PRISM slide encoder: parity with the authors' PerceiverResampler (paige-ai/Prism remote code, as vendored in
github:DIAGNijmegen/unicorn_baseline), random weights, reduced sizes (tests/fixtures/parity/make_prism.py).
The reference's state dict names each shared block once per layer; the released safetensors can only hold
one name per tensor, so files with any one alias, or all of them, must load - and disagreeing aliases not."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from _hf import hf_cache
from safetensors.torch import save_file

import pathkit as pk
from pathkit.errors import WeightsError
from pathkit.models import get_spec
from pathkit.models.prism import PrismSlideEncoder, load_prism

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "prism.pt"
REF = torch.load(FIXTURE, weights_only=True)


def _one_alias(sd: dict, last: bool = False) -> dict:
    """Keep one name per shared tensor (as a safetensors file must), the first or the last alias."""
    groups: dict = {}
    for k, v in sd.items():
        groups.setdefault(v.untyped_storage().data_ptr(), []).append(k)
    keep = {(names[-1] if last else names[0]) for names in groups.values()}
    return {k: v.clone().contiguous() for k, v in sd.items() if k in keep}


def _write_hf(folder, ref, last=False):
    """An HF-style Prism repository: model.safetensors (slide encoder under image_resampler., plus parts
    pathkit must not read) and config.json with the reduced perceiver_config."""
    folder.mkdir(parents=True, exist_ok=True)
    sd = {f"image_resampler.{k}": v for k, v in _one_alias(ref["state_dict"], last).items()}
    sd["text_decoder.model.biogpt.embed_tokens.weight"] = torch.randn(11, 4)
    sd["img_to_latents.to_latents.weight"] = torch.randn(20, ref["config"]["latent_dim"])
    sd["temperature"] = torch.tensor(2.6593)
    save_file(sd, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"model_type": "prism", "dim_latents": 20,
                                                    "perceiver_config": ref["config"]}))
    return folder / "model.safetensors"


@pytest.mark.parametrize("name", ["released", "variant"])
def test_prism_matches_reference_slide_representations(tmp_path, name):
    ref = REF[name]
    n_alias = len(ref["state_dict"]) - len(_one_alias(ref["state_dict"]))
    assert n_alias > 0  # the fixture does exercise shared blocks
    for last in (False, True):
        w = _write_hf(tmp_path / f"hf{int(last)}", ref, last=last)
        net, info = load_prism("prism", weights=w)
        assert info["config"] == str(w.parent / "config.json") and len(info["weights_sha256"]) == 64
        with torch.no_grad():
            got = net.forward_features(ref["h"])
            vec = net(ref["h"][0])  # one slide's [N, D] features -> the slide embedding
        err = (got["image_embedding"] - ref["image_embedding"]).abs().max().item()
        err_lat = (got["image_latents"] - ref["image_latents"]).abs().max().item()
        print(f"PARITY prism[{name}] image_embedding {err:.2e} image_latents {err_lat:.2e}")
        assert err < 1e-4 and err_lat < 1e-4, (err, err_lat)
        torch.testing.assert_close(vec, ref["image_embedding"][0], atol=1e-5, rtol=1e-5)
    # a torch file of the resampler alone, every alias present (what the reference's state_dict() gives)
    torch.save(ref["state_dict"], tmp_path / "resampler.pth")
    (tmp_path / "config.json").write_text(json.dumps(ref["config"]))
    net, _ = load_prism("prism", weights=tmp_path / "resampler.pth")
    with torch.no_grad():
        shuffled = net(ref["h"][0][torch.randperm(ref["h"].shape[1])])
    torch.testing.assert_close(shuffled, ref["image_embedding"][0], atol=1e-5, rtol=1e-5)  # order-free


def test_prism_through_embed_slide_on_virchow_features(tmp_path):
    """pk.tl.embed_slide(tiles, "prism") reads obsm["X_virchow"], equals the reference, and refuses another
    tile model's features."""
    ref = REF["released"]
    w = _write_hf(tmp_path / "hf", ref)
    X = ref["h"][0].numpy()
    a = ad.AnnData(obs=pd.DataFrame({"slide_id": "s1"}, index=[str(i) for i in range(len(X))]))
    a.obsm["X_virchow"] = X
    a.obsm["X_uni"] = np.zeros((len(X), 1024), np.float32)
    a.uns["models"] = {"X_virchow": {"name": "virchow"}, "X_uni": {"name": "uni"}}
    pk.tl.embed_slide(a, "prism", weights=w, dtype="float32")
    got = a.uns["slide_embeddings"]["prism"]
    info = a.uns["slide_embeddings_info"]["prism"]
    err = float(np.abs(got - ref["image_embedding"][0].numpy()).max())
    print(f"PARITY prism embed_slide {err:.2e}")
    assert got.shape == (8,) and err < 1e-4
    assert info["use_rep"] == "X_virchow" and info["arch"] == "pathkit:prism_perceiver"
    b = a[np.random.default_rng(0).permutation(len(X))].copy()
    pk.tl.embed_slide(b, "prism", weights=w, dtype="float32")
    np.testing.assert_allclose(b.uns["slide_embeddings"]["prism"], got, atol=1e-5)
    a.uns["models"]["X_virchow"] = {"name": "virchow2"}  # same width, another tile model: refused
    with pytest.raises(ValueError, match="'virchow2' features.*'virchow'"):
        pk.tl.embed_slide(a, "prism", weights=w)
    with pytest.raises(ValueError, match="2560-d"):
        pk.tl.embed_slide(a, "prism", use_rep="X_uni", weights=w)
    del a.obsm["X_virchow"]
    with pytest.raises(KeyError, match="X_virchow"):
        pk.tl.embed_slide(a, "prism", weights=w)


def test_prism_checks_the_tile_geometry(tmp_path):
    """PRISM takes Virchow features of 224-px tiles at 0.5 mpp (as TITAN checks its own): tiles cut at another
    size or mpp are refused with the pk.pp.tile call that fixes it; features without a tile_spec warn."""
    from pathkit.errors import GridError

    ref = REF["released"]
    w = _write_hf(tmp_path / "hf", ref)
    X = ref["h"][0].numpy()
    a = ad.AnnData(obs=pd.DataFrame({"slide_id": "s1"}, index=[str(i) for i in range(len(X))]))
    a.obsm["X_virchow"] = X
    a.uns["models"] = {"X_virchow": {"name": "virchow"}}
    with pytest.warns(UserWarning, match="no tile size / mpp.*not checked"):
        pk.tl.embed_slide(a, "prism", weights=w, dtype="float32")
    a.uns["tile_spec"] = {"tile_px": 256, "mpp": 1.0, "slide_mpp": 0.25}
    with pytest.raises(GridError, match=r"224-px tiles at 0.5 mpp.*256-px tiles at 1 mpp.*tile_px=224, mpp=0.5"):
        pk.tl.embed_slide(a, "prism", weights=w, dtype="float32")
    a.uns["tile_spec"] = {"tile_px": 224, "mpp": 0.52, "slide_mpp": 0.26}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pk.tl.embed_slide(a, "prism", weights=w, dtype="float32", key_added="ok")


def test_prism_from_the_hub_cache_offline(tmp_path, monkeypatch):
    """weights=None: hf_hub:paige-ai/Prism/model.safetensors through huggingface_hub's cache, config.json
    beside it sets the sizes."""
    ref = REF["variant"]
    src = _write_hf(tmp_path / "src", ref)
    hub = tmp_path / "hub"
    hf_cache(hub, "paige-ai/Prism", {"model.safetensors": lambda p: p.write_bytes(src.read_bytes()),
                                     "config.json": lambda p: p.write_text((src.parent / "config.json").read_text())})
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    net, info = load_prism("prism")
    assert info["weights"] == "hf_hub:paige-ai/Prism/model.safetensors"
    with torch.no_grad():
        torch.testing.assert_close(net(ref["h"]), ref["image_embedding"], atol=1e-5, rtol=1e-5)


def test_prism_entry_and_refused_files(tmp_path):
    spec = get_spec("prism", kind="slide")
    assert spec.extra["tile_model"] == "virchow" and spec.extra["in_chans"] == 2560 == spec.kwargs["in_dim"]
    assert get_spec("virchow").kind == "tile" and get_spec("virchow").embed_dim == 2560
    assert spec.embed_dim == 1280 and spec.gated and "CC BY-NC-ND 4.0" in spec.license
    net = PrismSlideEncoder(**spec.kwargs)
    # the released encoder: one shared cross-attention block after layer 0, one transformer for all 8 layers
    assert len(net.xattn) == 2 and len(net.tf) == 1 and len(net.tf[0]) == 6
    assert net.latents.shape == (513, 1280) and sum(p.numel() for p in net.parameters()) == spec.n_params
    ref = REF["released"]
    sd = {k: v.clone() for k, v in ref["state_dict"].items()}
    sd["perceiver.layers.3.xattn.xattn.to_q.weight"] += 1.0  # aliases of one shared tensor disagree
    torch.save(sd, tmp_path / "bad.pth")
    (tmp_path / "config.json").write_text(json.dumps(ref["config"]))
    with pytest.raises(WeightsError, match="same shared PRISM block"):
        load_prism("prism", weights=tmp_path / "bad.pth")
    sd = {k: v for k, v in _one_alias(ref["state_dict"]).items() if "cls_norm" not in k}
    save_file(sd, str(tmp_path / "missing.safetensors"))
    with pytest.raises(WeightsError, match="(?s)prism.*cls_norm"):
        load_prism("prism", weights=tmp_path / "missing.safetensors")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        net, info = load_prism("prism", weights="random")
    assert any("RANDOM" in str(x.message) for x in w) and info["weights"] == "random"
