"""Multiple-instance learning networks over the tiles of a slide (or of a patient's slides).

Every network is built as ``cls(in_dim, n_out, **params)`` and returns ``(out[n_out], importance[N], extras)``
for one bag ``x[N, in_dim]``: the bag's raw outputs, one importance value per tile (attention, or the
model's own tile score), and training extras (CLAM's instance loss, DSMIL's instance stream).
"""
from __future__ import annotations

from ._abmil import ABMIL, GatedAttention
from ._clam import CLAMSB
from ._dsmil import DSMIL
from ._fusion import CovariateFusion
from ._pooling import MaxMIL, MeanMIL
from ._transmil import TransMIL

#: name -> (class, default hyper-parameters). Add an entry to add a model.
MIL_MODELS: dict[str, tuple[type, dict]] = {
    "abmil": (ABMIL, {"hidden": 512, "attn_hidden": 256, "dropout": 0.25}),
    "clam_sb": (CLAMSB, {"hidden": 512, "attn_hidden": 256, "dropout": 0.25, "k_sample": 8, "bag_weight": 0.7}),
    "transmil": (TransMIL, {"dim": 512, "heads": 8, "pinv_iters": 6, "dropout": 0.1}),
    "dsmil": (DSMIL, {"q_dim": 128, "dropout": 0.0, "nonlinear": True, "passing_v": False}),
    "mean": (MeanMIL, {"hidden": 512, "dropout": 0.25}),
    "max": (MaxMIL, {"hidden": 512, "dropout": 0.25}),
}


def mil_params(name: str, **overrides) -> dict:
    """The default hyper-parameters of ``name`` updated with ``overrides`` (unknown names refused)."""
    from ...errors import ModelNotFoundError

    if name not in MIL_MODELS:
        raise ModelNotFoundError(f"unknown MIL model {name!r}; available: {sorted(MIL_MODELS)}")
    cls, defaults = MIL_MODELS[name]
    import inspect

    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "in_dim", "n_out"}
    bad = sorted(set(overrides) - accepted)
    if bad:
        raise TypeError(f"MIL model {name!r} has no parameter(s) {bad}; it takes {sorted(accepted)}")
    return {**defaults, **overrides}


def build_mil(name: str, in_dim: int, n_out: int, **params):
    """Build the network ``name`` with its defaults updated by ``params``."""
    return MIL_MODELS[name][0](in_dim, n_out, **mil_params(name, **params))


__all__ = [
    "ABMIL",
    "CLAMSB",
    "DSMIL",
    "MIL_MODELS",
    "CovariateFusion",
    "GatedAttention",
    "MaxMIL",
    "MeanMIL",
    "TransMIL",
    "build_mil",
    "mil_params",
]
