"""CLAM-SB (Lu et al. 2021): gated attention MIL with an instance-level clustering loss."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ._abmil import GatedAttention


class CLAMSB(nn.Module):
    """Single-branch CLAM.

    The bag path is gated attention MIL (as :class:`ABMIL`). During training with a class label, each class
    has an instance classifier (``Linear(hidden, 2)``): for the bag's own class, the ``k_sample`` tiles of
    highest attention are pushed to "positive" and the ``k_sample`` of lowest attention to "negative"; with
    ``subtyping`` the top tiles of every other class's branch are pushed to "negative" too (and the loss is
    averaged over classes). The estimator adds ``(1 - bag_weight) * instance_loss`` to the bag loss.
    ``k_sample`` is capped at the bag's size, so a bag of one tile works.
    """

    def __init__(self, in_dim: int, n_out: int, hidden: int = 512, attn_hidden: int = 256, dropout: float = 0.25,
                 k_sample: int = 8, subtyping: bool | None = None, bag_weight: float = 0.7):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden, attn_hidden, 1, dropout)
        self.head = nn.Linear(hidden, n_out)
        self.instance_heads = nn.ModuleList([nn.Linear(hidden, 2) for _ in range(n_out)])
        self.k_sample = k_sample
        self.subtyping = n_out > 2 if subtyping is None else bool(subtyping)
        self.bag_weight = bag_weight

    def instance_loss(self, att: torch.Tensor, h: torch.Tensor, label: int) -> torch.Tensor:
        """The clustering loss for one bag of class ``label`` (an int)."""
        k = min(self.k_sample, len(h))
        top = torch.topk(att, k).indices
        bottom = torch.topk(-att, k).indices
        total = h.new_zeros(())
        for c, clf in enumerate(self.instance_heads):
            if c == label:
                logits = clf(torch.cat([h[top], h[bottom]]))
                target = torch.cat([torch.ones(k, dtype=torch.long), torch.zeros(k, dtype=torch.long)])
            elif self.subtyping:
                logits = clf(h[top])
                target = torch.zeros(k, dtype=torch.long)
            else:
                continue
            total = total + F.cross_entropy(logits, target.to(h.device))
        if self.subtyping:
            total = total / len(self.instance_heads)
        return total

    def forward(self, x: torch.Tensor, target=None):
        """``target``: the bag's class index (int) to compute the instance loss (training), else None."""
        h = self.fc(x)
        att = torch.softmax(self.attention(h)[:, 0], dim=0)
        out = self.head(att @ h)
        extras = {}
        if target is not None:
            extras["instance_loss"] = self.instance_loss(att, h, int(target))
            extras["bag_weight"] = self.bag_weight
        return out, att, extras
