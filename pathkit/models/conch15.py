"""CONCH v1.5 image encoder (Mahmood Lab; TITAN's tile encoder), written from the facts of its reference code
(TRIDENT `trident/patch_encoder_models/model_zoo/conchv1_5/conchv1_5.py`, the same in TITAN's repository):

- trunk: ViT-L/16 (width 1024, 24 blocks, 16 heads, MLP x4, qkv bias, LayerScale, LayerNorm eps 1e-6, class
  token, final norm) built for 224 px (a 14 x 14 position grid). The published checkpoint's position table is
  resized to that grid when loaded (timm `resample_abs_pos_embed`, bilinear, no antialias), and at 448-px
  input the table is interpolated back DINO-style (bicubic, `scale_factor=(g + 0.1) / 14`);
- contrastive attentional pooler: one learned query (768-d), LayerNorms on the query and on the tokens,
  bias-free `to_q`, `to_kv`, `to_out`, 8 heads, over all tokens after the final norm; then `ln_contrast`.
  The embedding is that 768-d vector (no projection).
- preprocessing: shorter side to 448 (bilinear), centre crop 448, ImageNet mean/std.

Parameter names follow the published `pytorch_model_vision.bin` (trunk.*, attn_pool_contrast.*, ln_contrast.*).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .registry import ModelSpec
from .tile_encoders import register_builder


class _Pooler(nn.Module):
    def __init__(self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 1):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.heads, self.dim_head = n_head, d_model // n_head
        inner = self.dim_head * n_head
        self.ln_k = nn.LayerNorm(context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.to_q = nn.Linear(d_model, inner, bias=False)
        self.to_kv = nn.Linear(context_dim, inner * 2, bias=False)
        self.to_out = nn.Linear(inner, d_model, bias=False)

    def forward(self, x):  # [B, N, C] -> [B, n_queries, d_model]
        b, n, _ = x.shape
        h, dh = self.heads, self.dim_head
        q = self.to_q(self.ln_q(self.query))  # the same queries for every image
        k, v = self.to_kv(self.ln_k(x)).chunk(2, dim=-1)
        q = q.view(-1, h, dh).transpose(0, 1) * dh ** -0.5  # [h, nq, dh]
        k = k.view(b, n, h, dh).transpose(1, 2)  # [B, h, N, dh]
        v = v.view(b, n, h, dh).transpose(1, 2)
        attn = (q.unsqueeze(0) @ k.transpose(-1, -2)).softmax(dim=-1)  # [B, h, nq, N]
        out = (attn @ v).transpose(1, 2).reshape(b, -1, h * dh)
        return self.to_out(out)


class Conch15Visual(nn.Module):
    """forward(normalised [B, 3, S, S]) -> [B, pool_dim] (768 at full size)."""

    def __init__(self, img_size: int = 224, patch_size: int = 16, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0, pool_dim: int = 768, pool_heads: int = 8):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        self.trunk = VisionTransformer(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                       num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, init_values=1.0,
                                       num_classes=0)
        self.attn_pool_contrast = _Pooler(pool_dim, embed_dim, pool_heads, 1)
        self.ln_contrast = nn.LayerNorm(pool_dim)
        self.num_features = pool_dim

    def _pos(self, n_patches: int, height: int, width: int) -> torch.Tensor:
        pos = self.trunk.pos_embed
        n = pos.shape[1] - 1
        if n_patches == n and height == width:
            return pos
        side = int(math.sqrt(n))
        p = self.trunk.patch_embed.patch_size[0]
        gh, gw = height // p + 0.1, width // p + 0.1  # DINO's offset against floating-point error
        grid = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, scale_factor=(gh / side, gw / side), mode="bicubic")
        return torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, -1, pos.shape[-1])], dim=1)

    def forward_features(self, x):
        t = self.trunk
        _, _, height, width = x.shape
        x = t.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([t.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self._pos(x.shape[1] - 1, height, width)
        x = t.blocks(t.norm_pre(x))
        return t.norm(x)

    def forward(self, x):
        return self.ln_contrast(self.attn_pool_contrast(self.forward_features(x))[:, 0])

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """The published checkpoint; its position table is resized to the model's grid first (as the
        reference loader does)."""
        from timm.layers import resample_abs_pos_embed

        sd = dict(state_dict)
        pos = sd.get("trunk.pos_embed")
        if pos is not None and tuple(pos.shape) != tuple(self.trunk.pos_embed.shape):
            sd["trunk.pos_embed"] = resample_abs_pos_embed(
                pos, new_size=list(self.trunk.patch_embed.grid_size), num_prefix_tokens=1, interpolation="bilinear",
                antialias=False, verbose=False)
        return super().load_state_dict(sd, strict=strict, assign=assign)


def build_conch15(spec: ModelSpec) -> Conch15Visual:
    return Conch15Visual(**spec.kwargs).eval()


register_builder("conch_v15", build_conch15)
