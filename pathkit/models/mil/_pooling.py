"""Pooling baselines: the mean, and the element-wise max, of the tiles' hidden features."""
from __future__ import annotations

import torch
from torch import nn


def instance_score(logits: torch.Tensor, bag_out: torch.Tensor) -> torch.Tensor:
    """One number per tile from per-tile outputs ``[N, n_out]``: the single output (``n_out`` 1), else the
    softmax probability of the bag's top output (evidence for the class the bag is given)."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    return torch.softmax(logits, dim=1)[:, int(torch.argmax(bag_out))]


class _PooledMIL(nn.Module):
    """``Linear + ReLU + Dropout`` per tile (``fc``), a pooling over the tiles, a linear ``head``."""

    def __init__(self, in_dim: int, n_out: int, hidden: int = 512, dropout: float = 0.25):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_out)


class MeanMIL(_PooledMIL):
    """``Linear + ReLU + Dropout`` per tile, mean over the tiles, a linear head.

    The head is linear, so the bag output is the mean of the per-tile outputs; each tile's importance is its
    own score (:func:`instance_score` of its output).
    """

    def forward(self, x: torch.Tensor, target=None):
        h = self.fc(x)
        out = self.head(h.mean(0))
        with torch.no_grad():
            imp = instance_score(self.head(h), out)
        return out, imp, {}


class MaxMIL(_PooledMIL):
    """``Linear + ReLU + Dropout`` per tile, the element-wise max over the tiles, a linear head.

    Importance: each tile's share of the bag's output, i.e. the head weights of the hidden units whose max
    the tile holds times its values there, for the single output (``n_out`` 1) or the bag's top output (for 2
    outputs: the top minus the other); the shares plus the head's bias add up to that output.
    """

    def forward(self, x: torch.Tensor, target=None):
        h = self.fc(x)
        pooled, winner = h.max(0)
        out = self.head(pooled)
        with torch.no_grad():
            w = self.head.weight
            k = int(torch.argmax(out))
            if w.shape[0] == 1:
                wk = w[0]
            elif w.shape[0] == 2:
                wk = w[k] - w[1 - k]
            else:
                wk = w[k]
            imp = torch.zeros(len(x), dtype=h.dtype, device=h.device)
            imp.index_add_(0, winner, wk * pooled)
        return out, imp, {}
