"""FEATHER slide encoders: parity with MIL-Lab's ABMIL (github:mahmoodlab/MIL-Lab), random weights, reduced
(tests/fixtures/parity/make_feather.py); the entries name the tile encoder whose features they take."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pathkit.errors import WeightsError
from pathkit.models import get_spec
from pathkit.models.feather import load_slide_abmil

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "feather.pt"


def test_feather_matches_mil_lab_abmil(tmp_path):
    ref = torch.load(FIXTURE, weights_only=True)
    # as an HF repository: model.safetensors (a `model.` wrapper) + config.json with the sizes
    save_file({f"model.{k}": v.contiguous() for k, v in ref["state_dict"].items()}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"in_dim": 24, "embed_dim": 16, "attn_dim": 12,
                                                      "num_classes": 5, "gate": True}))
    net, info = load_slide_abmil("feather_conch_v15", weights=tmp_path / "model.safetensors")
    assert info["config"] == str(tmp_path / "config.json")
    with torch.no_grad():
        batch = net(ref["h"])
        one = net(ref["h"][1])  # a single slide's [N, D] features
        shuffled = net(ref["h"][1][torch.randperm(37)])
    err = (batch - ref["out"]).abs().max().item()
    print(f"PARITY feather {err:.2e}")
    assert err < 1e-5, err
    torch.testing.assert_close(one, ref["out"][1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shuffled, one, atol=1e-5, rtol=1e-5)  # no coordinates: order-free


def test_feather_entries_name_their_tile_encoder_and_refuse_wrong_files(tmp_path):
    for name, tile, dim in [("feather_conch_v15", "conch_v15", 768), ("feather_uni2_h", "uni2_h", 1536),
                            ("feather_uni", "uni", 1024)]:
        spec = get_spec(name, kind="slide")
        assert spec.extra["tile_model"] == tile and spec.kwargs["in_dim"] == dim == spec.extra["in_chans"]
        assert get_spec(tile).kind == "tile"  # the named tile encoder is a registry entry
        assert spec.embed_dim == 512
    save_file({"w": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(WeightsError, match="feather_conch_v15"):
        load_slide_abmil("feather_conch_v15", weights=tmp_path / "bad.safetensors")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        net, _ = load_slide_abmil("feather_conch_v15", weights="random")
    assert any("RANDOM" in str(x.message) for x in w)
    assert net(torch.randn(10, 768)).shape == (512,)
