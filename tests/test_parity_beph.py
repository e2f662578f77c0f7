"""BEPH parity with the authors' own code (github:Zhcyoung/BEPH, its mmcls BEiT backbone), random weights.

The fixture tests/fixtures/parity/beph.pt was made by tests/fixtures/parity/make_beph.py, run from /tmp
against BEPH's repository: a reduced BEiT (2 blocks, width 32, 64-px input) given a checkpoint in BEPH's
naming with the shared pre-training relative-position table, then
- "clam": the authors' WSI-feature path (mmengine non-strict load into the `backbone.`-prefixed model, then
  the backbone's first output): the per-block tables stay at zero;
- "pretrain": the backbone loaded alone, where mmcls' hook copies the shared table into every block.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

import pathkit as pk
from pathkit.errors import UnsafePickleError
from pathkit.models import get_spec

FIXTURE = Path(__file__).parent / "fixtures" / "parity" / "beph.pt"
SMALL = {"img_size": 64, "embed_dim": 32, "depth": 2, "num_heads": 2}


@pytest.fixture(scope="module")
def ref():
    return torch.load(FIXTURE, weights_only=True)


def _small(name):
    spec = get_spec(name)
    return dataclasses.replace(spec, name=f"small_{name}", kwargs={**spec.kwargs, **SMALL}, n_params=None,
                               input_size=64)


def _encode(name, path, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc, info = pk.models.load_tile_encoder(_small(name), weights=path)
    with torch.no_grad():
        return enc(x), enc, info


def test_beph_default_reproduces_the_authors_wsi_features(ref, tmp_path):
    path = tmp_path / "BEPH_backbone.pth"
    torch.save({"state_dict": ref["state_dict"]}, path)
    out, enc, info = _encode("beph", path, ref["x"])
    err = (out - ref["clam"]).abs().max().item()
    print(f"PARITY beph {err:.2e}")
    assert err < 1e-5, err
    assert all(float(b.attn.relative_position_bias_table.detach().abs().max()) == 0 for b in enc.net.blocks)
    assert info["key_map"] == "beph_clam"
    spec = get_spec("beph")  # the recipe of the CLAM dataset: ImageNet statistics, native 224-px tiles
    assert spec.mean == (0.485, 0.456, 0.406) and spec.std == (0.229, 0.224, 0.225)
    assert spec.input_size == 224 and spec.resize is None


def test_beph_pretrain_entry_is_the_pre_training_recipe(ref, tmp_path):
    path = tmp_path / "BEPH_backbone.pth"
    torch.save({"state_dict": ref["state_dict"]}, path)
    out, enc, _ = _encode("beph_pretrain", path, ref["x"])
    err = (out - ref["pretrain"]).abs().max().item()
    print(f"PARITY beph_pretrain {err:.2e}")
    assert err < 1e-5
    shared = ref["state_dict"]["backbone.rel_pos_bias.relative_position_bias_table"]
    assert torch.equal(enc.net.blocks[1].attn.relative_position_bias_table, shared)
    # the two recipes really differ (what the default entry fixes)
    assert (ref["clam"] - ref["pretrain"]).abs().max().item() > 1e-3
    spec = get_spec("beph_pretrain")
    assert spec.resize == 256 and spec.input_size == 224 and spec.mean[0] == pytest.approx(189.78929696867084 / 255)


def _fake_mmengine(monkeypatch):
    """An importable `mmengine.logging.message_hub.MessageHub` while the checkpoint is written."""
    mods = {n: types.ModuleType(n) for n in ("mmengine", "mmengine.logging", "mmengine.logging.message_hub")}

    class MessageHub:
        def __init__(self):
            self.runtime_info = {"epoch": 3, "lr": 1e-4}

    MessageHub.__module__, MessageHub.__qualname__ = "mmengine.logging.message_hub", "MessageHub"
    mods["mmengine.logging.message_hub"].MessageHub = MessageHub
    for n, m in mods.items():
        monkeypatch.setitem(sys.modules, n, m)
    return MessageHub


def test_full_mmengine_training_checkpoint_loads_without_unpickling_mmengine(ref, tmp_path, monkeypatch):
    hub = _fake_mmengine(monkeypatch)
    path = tmp_path / "BEPH_weight.pth"
    torch.save({"meta": {"epoch": 3}, "state_dict": ref["state_dict"], "message_hub": hub(),
                "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4}]}}, path)
    for n in ("mmengine.logging.message_hub", "mmengine.logging", "mmengine"):
        monkeypatch.delitem(sys.modules, n)  # as on a user's machine: mmengine is not installed
    with pytest.warns(UserWarning, match=r"training checkpoint.*message_hub"):
        enc, _ = pk.models.load_tile_encoder(_small("beph"), weights=path)
    with torch.no_grad():
        assert (enc(ref["x"]) - ref["clam"]).abs().max().item() < 1e-5


def test_other_unsafe_globals_are_still_refused(tmp_path, monkeypatch):
    mod = types.ModuleType("evil")

    class Holder:
        pass

    Holder.__module__, Holder.__qualname__ = "evil", "Holder"
    mod.Holder = Holder
    monkeypatch.setitem(sys.modules, "evil", mod)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "extra": Holder()}, path)
    monkeypatch.delitem(sys.modules, "evil")
    with pytest.raises(UnsafePickleError):
        pk.models.weights.read_state_dict(path)
