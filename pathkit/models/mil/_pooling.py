"""Pooling baselines: the mean, and the element-wise max, of the tiles' hidden features."""
from __future__ import annotations

import torch
from torch import nn


def instance_score(logits: torch.Tensor, bag_out: torch.Tensor | None = None) -> torch.Tensor:
    """One number per tile from per-tile outputs ``[N, n_out]``: the single output (``n_out`` 1), the
    softmax probability of the second output (``n_out`` 2), else the probability of the bag's top output."""
    if logits.shape[1] == 1:
        return logits[:, 0]
    p = torch.softmax(logits, dim=1)
    if logits.shape[1] == 2:
        return p[:, 1]
    k = int(torch.argmax(bag_out)) if bag_out is not None else int(torch.argmax(p.max(0).values))
    return p[:, k]


class MeanMIL(nn.Module):
    """``Linear + ReLU + Dropout`` per tile, mean over the tiles, a linear head.

    The head is linear, so the bag output is the mean of the per-tile outputs; each tile's importance is its
    own score (:func:`instance_score` of its output).
    """

    def __init__(self, in_dim: int, n_out: int, hidden: int = 512, dropout: float = 0.25):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor, target=None):
        h = self.fc(x)
        out = self.head(h.mean(0))
        with torch.no_grad():
            imp = instance_score(self.head(h), out)
        return out, imp, {}


class MaxMIL(nn.Module):
    """``Linear + ReLU + Dropout`` per tile, the element-wise max over the tiles, a linear head.

    Importance: each tile's share of the bag's output, i.e. the head weights of the hidden units whose max
    the tile holds times its values there (for 2 outputs the difference of output 1 and 0, for 1 output that
    output, else the bag's top output); the shares plus the head's bias add up to the bag's output.
    """

    def __init__(self, in_dim: int, n_out: int, hidden: int = 512, dropout: float = 0.25):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor, target=None):
        h = self.fc(x)
        pooled, winner = h.max(0)
        out = self.head(pooled)
        with torch.no_grad():
            w = self.head.weight
            if w.shape[0] == 1:
                wk = w[0]
            elif w.shape[0] == 2:
                wk = w[1] - w[0]
            else:
                wk = w[int(torch.argmax(out))]
            imp = torch.zeros(len(x), dtype=h.dtype, device=h.device)
            imp.index_add_(0, winner, wk * pooled)
        return out, imp, {}
