"""Pooling baselines: mean of the tile features, and the top-scoring tile (max-instance, CLAM's ``MIL_fc``)."""
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
    """Max-instance MIL: every tile is scored by ``Linear + ReLU + Dropout`` and a linear head; the bag takes
    the outputs of its top tile (highest :func:`instance_score`; for a 2-output head the tile with the highest
    softmax probability of output 1, as CLAM's ``MIL_fc``; for more outputs the tile holding the highest
    probability of any output, as ``MIL_fc_mc``). Importance: each tile's score.
    """

    def __init__(self, in_dim: int, n_out: int, hidden: int = 512, dropout: float = 0.25):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor, target=None):
        logits = self.head(self.fc(x))
        if logits.shape[1] > 2:
            p = torch.softmax(logits, dim=1)
            top = int(torch.argmax(p.reshape(-1))) // logits.shape[1]
            score = p.max(1).values
        else:
            score = instance_score(logits)
            top = int(torch.argmax(score))
        return logits[top], score.detach(), {}
