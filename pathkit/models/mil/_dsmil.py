"""DSMIL (Li, Li & Eliceiri 2021): a max-instance stream and a bag stream attending to the critical tile."""
from __future__ import annotations

import math

import torch
from torch import nn


class DSMIL(nn.Module):
    """Dual-stream MIL.

    Instance stream: a linear classifier per tile; its top tile per output is the "critical instance". Bag
    stream: queries ``q(h)`` (``Linear-ReLU-Linear-Tanh`` to ``q_dim``), attention of every tile to each critical
    tile (scaled dot product, softmax over tiles), the attended features per output, and a per-output
    1-d convolution over the whole feature vector (``Conv1d(n_out, n_out, kernel_size=in_dim)``).

    ``forward`` returns the bag stream's output; ``extras["max_out"]`` holds the instance stream's max per
    output (the estimator averages the task loss of both streams, as the authors train it). Importance: the
    attention to the critical tile of the bag's top output.
    """

    def __init__(self, in_dim: int, n_out: int, q_dim: int = 128, dropout: float = 0.0, nonlinear: bool = True,
                 passing_v: bool = False):
        super().__init__()
        self.instance = nn.Linear(in_dim, n_out)
        if nonlinear:
            self.q = nn.Sequential(nn.Linear(in_dim, q_dim), nn.ReLU(), nn.Linear(q_dim, q_dim), nn.Tanh())
        else:
            self.q = nn.Linear(in_dim, q_dim)
        if passing_v:
            self.v = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, in_dim), nn.ReLU())
        else:
            self.v = nn.Identity()
        self.bag = nn.Conv1d(n_out, n_out, kernel_size=in_dim)

    def streams(self, x: torch.Tensor):
        """(instance outputs [N, n_out], bag output [n_out], attention [N, n_out])."""
        inst = self.instance(x)
        v = self.v(x)
        q = self.q(x)
        critical = torch.argmax(inst, dim=0)  # the top tile of each output
        q_crit = self.q(x[critical])
        att = torch.softmax(q @ q_crit.T / math.sqrt(q.shape[1]), dim=0)
        pooled = att.T @ v  # [n_out, in_dim]
        out = self.bag(pooled.unsqueeze(0)).reshape(-1)
        return inst, out, att

    def forward(self, x: torch.Tensor, target=None):
        inst, out, att = self.streams(x)
        k = int(torch.argmax(out)) if out.numel() > 1 else 0
        return out, att[:, k], {"max_out": inst.max(dim=0).values}
