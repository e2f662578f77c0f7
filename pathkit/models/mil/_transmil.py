"""TransMIL (Shao et al. 2021): two Nystrom-attention layers around a convolutional position encoder (PPEG)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _iterative_pinv(a: torch.Tensor, iters: int) -> torch.Tensor:
    """Moore-Penrose pseudo-inverse by the Nystromformer iteration (Razavi et al.), started from ``a^T``
    scaled by the largest column and row sums over the whole tensor."""
    absa = a.abs()
    z = a.transpose(-1, -2) / (absa.sum(-1).max() * absa.sum(-2).max())
    eye = torch.eye(a.shape[-1], device=a.device, dtype=a.dtype)[None]
    for _ in range(iters):
        az = a @ z
        z = 0.25 * z @ (13 * eye - az @ (15 * eye - az @ (7 * eye - az)))
    return z


class NystromAttention(nn.Module):
    """Multi-head Nystrom self-attention (Xiong et al. 2021) with a depth-wise convolution of the values
    added as a residual. The sequence is zero-padded at the front to a multiple of ``landmarks``; landmarks
    are the means of consecutive segments."""

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, landmarks: int = 256, pinv_iters: int = 6,
                 conv_kernel: int = 33, dropout: float = 0.1):
        super().__init__()
        self.heads, self.dim_head, self.landmarks, self.pinv_iters = heads, dim_head, landmarks, pinv_iters
        inner = heads * dim_head
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.out = nn.Sequential(nn.Linear(inner, dim), nn.Dropout(dropout))
        self.value_conv = nn.Conv2d(heads, heads, (conv_kernel, 1), padding=(conv_kernel // 2, 0), groups=heads,
                                    bias=False)

    def forward(self, x: torch.Tensor, cls_row: int | None = None):
        """``x [B, n, dim]`` -> ``[B, n, dim]``; with ``cls_row`` also the attention of that row to every
        position (``[B, heads, n]``)."""
        b, n, _ = x.shape
        m = self.landmarks
        pad = (m - n % m) % m
        if pad:
            x = F.pad(x, (0, 0, pad, 0))
        npad = n + pad
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, npad, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        q = q * self.dim_head ** -0.5
        seg = math.ceil(n / m)
        q_l = q.reshape(b, self.heads, m, seg, self.dim_head).sum(3) / seg
        k_l = k.reshape(b, self.heads, m, seg, self.dim_head).sum(3) / seg
        a1 = torch.softmax(q @ k_l.transpose(-1, -2), dim=-1)
        a2 = torch.softmax(q_l @ k_l.transpose(-1, -2), dim=-1)
        a3 = torch.softmax(q_l @ k.transpose(-1, -2), dim=-1)
        a2_inv = _iterative_pinv(a2, self.pinv_iters)
        y = (a1 @ a2_inv) @ (a3 @ v) + self.value_conv(v)
        y = self.out(y.transpose(1, 2).reshape(b, npad, self.heads * self.dim_head))[:, -n:]
        if cls_row is None:
            return y, None
        row = a1[:, :, pad + cls_row:pad + cls_row + 1] @ a2_inv @ a3  # [B, heads, 1, npad]
        return y, row[:, :, 0, pad:]


class PPEG(nn.Module):
    """Pyramid position encoding: the tile tokens on a square grid through 7x7, 5x5 and 3x3 depth-wise
    convolutions, summed with the identity; the class token passes through."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv7 = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.conv5 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.conv3 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, side: int) -> torch.Tensor:
        b, _, c = x.shape
        grid = x[:, 1:].transpose(1, 2).reshape(b, c, side, side)
        grid = grid + self.conv7(grid) + self.conv5(grid) + self.conv3(grid)
        return torch.cat([x[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)


class TransLayer(nn.Module):
    def __init__(self, dim: int, **attn):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, **attn)

    def forward(self, x: torch.Tensor, cls_row: int | None = None):
        y, row = self.attn(self.norm(x), cls_row)
        return x + y, row


class TransMIL(nn.Module):
    """TransMIL.

    ``Linear(in_dim, dim) + ReLU``; the tiles are padded to a square number by repeating the first ones, a
    learnt class token is prepended, then a Nystrom layer, PPEG, a second Nystrom layer, LayerNorm, and a
    linear head on the class token. Importance: the class token's attention to each tile in the second layer
    (mean over heads, the repeated padding tiles folded back onto their originals).
    """

    def __init__(self, in_dim: int, n_out: int, dim: int = 512, heads: int = 8, landmarks: int | None = None,
                 pinv_iters: int = 6, dropout: float = 0.1):
        super().__init__()
        attn = {"heads": heads, "dim_head": dim // heads, "landmarks": landmarks or dim // 2,
                "pinv_iters": pinv_iters, "dropout": dropout}
        self.fc = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.layer1 = TransLayer(dim, **attn)
        self.ppeg = PPEG(dim)
        self.layer2 = TransLayer(dim, **attn)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_out)

    def forward(self, x: torch.Tensor, target=None):
        n = x.shape[0]
        h = self.fc(x)[None]
        side = math.ceil(math.sqrt(n))
        extra = side * side - n
        h = torch.cat([h, h[:, :extra]], dim=1)
        h = torch.cat([self.cls_token.expand(1, -1, -1), h], dim=1)
        h, _ = self.layer1(h)
        h = self.ppeg(h, side)
        h, row = self.layer2(h, cls_row=0)
        out = self.head(self.norm(h)[:, 0])[0]
        with torch.no_grad():
            imp = row[0].mean(0)[1:].detach().clone()
            if extra:
                imp[:extra] += imp[n:]
            imp = imp[:n]
        return out, imp, {}
