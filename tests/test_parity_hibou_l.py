"""Hibou-L (`hibou_l`): HistAI's own DINOv2 code (github:HistAI/hibou), reduced, as for Hibou-B
(tests/fixtures/parity/hibou.pt, make_hibou.py), read in both formats its weights come in: the DINOv2 naming
of HistAI's code and the transformers naming of the histai/hibou-L hub repository (hibou_l.pt,
make_hibou_l.py, where transformers' own Dinov2WithRegistersModel checks that renaming); plus the full-size
architecture against the authors' `build_model(arch="vit_large")` state dict."""
from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import pathkit as pk
from pathkit.models import get_spec
from pathkit.models._key_maps import apply_key_map
from pathkit.models.tile_encoders import signature

FIXTURES = Path(__file__).parent / "fixtures" / "parity"


def _small_hibou_l():
    # width 32: DINOv2's fused SwiGLU hidden = (int(4 * 32 * 2 / 3) + 7) // 8 * 8 = 88 -> timm mlp_ratio 176 / 32
    spec = get_spec("hibou_l")
    kw = {**spec.kwargs, "img_size": 56, "embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 5.5}
    return dataclasses.replace(spec, name="small_hibou_l", kwargs=kw, n_params=None, input_size=56, weights=())


@pytest.mark.parametrize("fmt", ["dinov2", "transformers", "transformers_wrapped"])
def test_hibou_l_matches_histai_reference_code(tmp_path, fmt):
    ref = torch.load(FIXTURES / "hibou.pt", weights_only=True)
    if fmt == "dinov2":
        path = tmp_path / "hibou-l.pth"
        torch.save(ref["state_dict"], path)
    else:
        hf = torch.load(FIXTURES / "hibou_l.pt", weights_only=True)["hf_state_dict"]
        assert "encoder.layer.0.attention.attention.query.weight" in hf
        path = tmp_path / "model.safetensors"
        pre = "dinov2." if fmt == "transformers_wrapped" else ""  # a wrapper model's prefix
        save_file({pre + k: v.contiguous() for k, v in hf.items()}, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc, info = pk.models.load_tile_encoder(_small_hibou_l(), weights=path)
    with torch.no_grad():
        err = (enc(ref["x"]) - ref["out"]).abs().max().item()
    print(f"PARITY hibou_l[{fmt}] {err:.2e}")
    assert err < 1e-5, err
    assert info["key_map"] == "dinov2_hf"


def test_hibou_l_full_size_matches_the_authors_vit_large():
    full = torch.load(FIXTURES / "hibou_l.pt", weights_only=True)
    sd = {n: torch.empty(s, device="meta") for n, s in zip(full["full_names"], full["full_shapes"])}
    assert sd["blocks.0.mlp.w12.weight"].shape == (2 * 2736, 1024) and sd["register_tokens"].shape == (1, 4, 1024)
    mapped = {k: tuple(v.shape) for k, v in apply_key_map(sd, "dinov2_hf").items()}
    spec = get_spec("hibou_l")
    assert mapped == signature(spec)  # every tensor of the authors' network, same shapes, nothing left over
    # the authors' count less the mask token and the class token's position (folded into cls_token)
    assert spec.n_params == pk.models.n_params("hibou_l") == sum(torch.Size(s).numel() for s in full["full_shapes"]) - 2048
    assert spec.embed_dim == 1024 and spec.license.startswith("Apache-2.0")
