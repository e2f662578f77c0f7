"""Late fusion of bag-level covariates (clinical columns, RNA features) with any MIL network."""
from __future__ import annotations

import torch
from torch import nn


class CovariateFusion(nn.Module):
    """A MIL network whose bag output is rescaled and gets a linear map of the bag's covariates added:
    ``scale * out + shift + W c``.

    Every network of :data:`MIL_MODELS` ends in a map that is linear in its pooled bag representation ``p``
    (ABMIL, CLAM-SB, TransMIL, mean and max pooling: ``head(p)``; DSMIL: its ``Conv1d`` over the attended
    features), so ``out + W c`` is exactly that map applied to ``[p, c]``, the covariates concatenated to the
    pooled representation before the head. ``scale = 1``, ``shift = 0``, ``W = 0`` make it the bag model;
:class:`pathkit.tl.MIL` trains the bag network with them fixed there, then fits them on the training bags
(stacking: a logistic / task-loss regression of the labels on the bag network's output and the covariates).
    DSMIL's instance stream (``extras["max_out"]``) gets the same term, so both of its streams see the
    covariates. Per-tile importance is the base network's.

    ``forward(x[N, in_dim], target=None, cov=None[n_cov]) -> (out[n_out], importance[N], extras)``.
    """

    def __init__(self, base: nn.Module, n_cov: int, n_out: int):
        super().__init__()
        self.base = base
        self.covariates = nn.Linear(n_cov, n_out, bias=False)
        nn.init.zeros_(self.covariates.weight)
        self.scale = nn.Parameter(torch.ones(()))
        self.shift = nn.Parameter(torch.zeros(n_out))

    @property
    def batched(self) -> bool:
        """Whether the base network can take several bags in one call (``forward_many``)."""
        return hasattr(self.base, "forward_many")

    def _add(self, out: torch.Tensor, cov):
        return out if cov is None else out * self.scale + self.shift + self.covariates(cov)

    def forward(self, x: torch.Tensor, target=None, cov: torch.Tensor | None = None):
        out, imp, extras = self.base(x, target=target)
        if cov is not None and "max_out" in extras:
            extras = {**extras, "max_out": self._add(extras["max_out"], cov)}
        return self._add(out, cov), imp, extras

    def forward_many(self, xs: list[torch.Tensor], cov: torch.Tensor | None = None):
        """Several bags at once (bases with ``forward_many``); ``cov [len(xs), n_cov]``."""
        out, atts = self.base.forward_many(xs)
        return self._add(out, cov), atts
