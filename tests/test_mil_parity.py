"""MIL networks against the authors' reference code on random weights (fixtures made from /tmp runs of
mahmoodlab/CLAM, szc19990412/TransMIL and binli123/dsmil-wsi; see tests/fixtures/mil/README.md).

The weights are not stored: both sides draw them from :func:`seeded_params` (numpy, fixed seed) by the
parameter names of pathkit's modules; the fixtures hold the bag, the reference outputs and the config.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

FIX = Path(__file__).parent / "fixtures" / "mil"
CASES = sorted(p.stem for p in FIX.glob("*.npz"))


def seeded_params(model, seed: int) -> dict:
    """Deterministic weights for every parameter of ``model`` (sorted by name): weight matrices and
    convolutions N(0, 1/fan_in), norm weights 1 + N(0, 0.1), other vectors N(0, 0.1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, t in sorted(model.state_dict().items()):
        shape = tuple(t.shape)
        if len(shape) >= 2:
            v = rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))
        elif name.endswith("weight"):
            v = 1.0 + 0.1 * rng.normal(size=shape)
        else:
            v = 0.1 * rng.normal(size=shape)
        out[name] = torch.as_tensor(v, dtype=torch.float32)
    return out


def build(cfg: dict):
    from pathkit.models.mil import build_mil

    torch.manual_seed(0)
    model = build_mil(cfg["model"], cfg["in_dim"], cfg["n_out"], **cfg.get("params", {}))
    model.load_state_dict(seeded_params(model, cfg["seed"]))
    return model.eval()


def test_fixtures_present():
    assert {"abmil", "clam_sb", "clam_sb_subtyping", "transmil", "dsmil", "dsmil_3"} <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_forward_matches_reference(case):
    data = np.load(FIX / f"{case}.npz")
    cfg = json.loads(str(data["config"]))
    model = build(cfg)
    for i in range(cfg["n_bags"]):
        x = torch.as_tensor(data[f"x{i}"])
        with torch.no_grad():
            target = int(data[f"label{i}"]) if f"label{i}" in data else None
            out, imp, extras = model(x, target=target)
        np.testing.assert_allclose(out.numpy(), data[f"out{i}"], atol=1e-5, rtol=0, err_msg=f"{case} bag {i}")
        if f"imp{i}" in data:
            np.testing.assert_allclose(imp.numpy(), data[f"imp{i}"], atol=1e-5, rtol=0, err_msg=f"{case} bag {i}")
        if f"inst_loss{i}" in data:
            assert float(extras["instance_loss"]) == pytest.approx(float(data[f"inst_loss{i}"]), abs=1e-5)
        if f"max_out{i}" in data:
            np.testing.assert_allclose(extras["max_out"].numpy(), data[f"max_out{i}"], atol=1e-5, rtol=0)
