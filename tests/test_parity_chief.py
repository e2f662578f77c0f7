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
