"""Gated attention MIL (Ilse et al. 2018) in the form CLAM uses (``Attn_Net_Gated``)."""
from __future__ import annotations

import torch
from torch import nn


class GatedAttention(nn.Module):
    """Gated attention scores: ``c(tanh(a h) * sigmoid(b h))`` -> one raw score per tile and branch."""

    def __init__(self, dim: int, hidden: int, n_branches: int = 1, dropout: float = 0.0):
        super().__init__()
        self.a = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Dropout(dropout))
        self.b = nn.Sequential(nn.Linear(dim, hidden), nn.Sigmoid(), nn.Dropout(dropout))
        self.c = nn.Linear(hidden, n_branches)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.c(self.a(h) * self.b(h))


class ABMIL(nn.Module):
    """Gated-attention MIL.

    ``Linear(in_dim, hidden) + ReLU + Dropout``, gated attention (``attn_hidden`` units) with a softmax over
    the tiles, the attention-weighted mean of the hidden tile features, and a linear head.

    ``forward(x[N, in_dim]) -> (out[n_out], importance[N], extras)``; importance is the attention (sums to 1).
    """

    def __init__(self, in_dim: int, n_out: int, hidden: int = 512, attn_hidden: int = 256, dropout: float = 0.25):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attn_hidden, 1, dropout)
        self.head = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor, target=None):
        h = self.fc(x)
        att = torch.softmax(self.attention(h)[:, 0], dim=0)
        return self.head(att @ h), att, {}

    def forward_many(self, xs: list[torch.Tensor]):
        """Several bags through one matmul; the softmax stays within each bag."""
        sizes = [len(x) for x in xs]
        h = self.fc(torch.cat(xs) if len(xs) > 1 else xs[0])
        scores = self.attention(h)[:, 0]
        pooled, atts = [], []
        for hb, sb in zip(torch.split(h, sizes), torch.split(scores, sizes)):
            a = torch.softmax(sb, dim=0)
            pooled.append(a @ hb)
            atts.append(a)
        return self.head(torch.stack(pooled)), atts
