"""CONCH (CoCa ViT-B/16, 448 px) rebuilt in pathkit: attribute names follow the authors' state dict, so their
checkpoint loads strictly; checked against their code in tests/test_clip_models.py."""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn



# ------------------------------------------------------------------------------------------ CONCH model
class _AttentionalPooler(nn.Module):
    """Learned queries attend over the trunk tokens (CoCa / CONCH `AttentionalPooler`)."""

    def __init__(self, d_model: int, context_dim: int, n_head: int, n_queries: int):
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, x):  # x [N, L, C] -> [N, n_queries, d_model]
        kv = self.ln_k(x).permute(1, 0, 2)
        q = self.ln_q(self.query).unsqueeze(1).expand(-1, kv.shape[1], -1)
        return self.attn(q, kv, kv, need_weights=False)[0].permute(1, 0, 2)


class ConchVisual(nn.Module):
    """CONCH image tower: ViT-B/16 trunk -> contrastive attentional pooler -> LayerNorm -> projection."""

    def __init__(self, cfg: dict):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        v = cfg["vision"]
        self.trunk = VisionTransformer(
            img_size=v["image_size"], patch_size=v["patch_size"], embed_dim=v["width"], depth=v["layers"],
            num_heads=v["heads"], mlp_ratio=v["mlp_ratio"], num_classes=0, dynamic_img_size=True)
        d = cfg["embed_dim"]
        self.attn_pool_contrast = _AttentionalPooler(d, v["width"], v["attn_pooler_heads"], v["n_queries_contrast"])
        self.ln_contrast = nn.LayerNorm(d)
        self.proj_contrast = nn.Parameter(v["width"] ** -0.5 * torch.randn(d, d))

    def forward(self, x, project: bool = True):
        """normalised [B, 3, S, S] -> [B, embed_dim], not L2-normalised. ``project=False`` stops before
        `proj_contrast`: CONCH's `encode_image(proj_contrast=False, normalize=False)` (`forward_no_head`),
        the tile features of the CONCH README, CLAM and TRIDENT."""
        tokens = self.trunk.forward_features(x)
        pooled = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        return pooled @ self.proj_contrast if project else pooled


class _ResidualBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()),
                                              ("c_proj", nn.Linear(hidden, width))]))

    def forward(self, x, attn_mask):  # x [L, N, D]
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class _Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int):
        super().__init__()
        self.resblocks = nn.ModuleList([_ResidualBlock(width, heads) for _ in range(layers)])

    def forward(self, x, attn_mask):
        for block in self.resblocks:
            x = block(x, attn_mask)
        return x


class ConchText(nn.Module):
    """CONCH text tower: causal transformer with a CLS embedding appended; the CLS output is the embedding."""

    def __init__(self, cfg: dict):
        super().__init__()
        t = cfg["text"]
        self.context_length, self.heads, self.pad_id = t["context_length"], t["heads"], t["pad_id"]
        w = t["width"]
        self.token_embedding = nn.Embedding(t["vocab_size"], w)
        self.positional_embedding = nn.Parameter(torch.empty(self.context_length, w))
        self.cls_emb = nn.Parameter(torch.empty(w))
        self.transformer = _Transformer(w, t["layers"], t["heads"])
        self.ln_final = nn.LayerNorm(w)
        self.text_projection = nn.Parameter(torch.empty(w, cfg["embed_dim"]))
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.cls_emb, std=0.01)
        nn.init.normal_(self.text_projection, std=w ** -0.5)

    def forward(self, tokens):  # [T, context_length] token ids (last slot reserved for CLS) -> [T, embed_dim]
        text = tokens[:, :-1]
        n, full = text.shape
        # Columns after the longest prompt's first <pad> cannot reach the output: token rows are causal and
        # the CLS row is closed to them (see below), so they are cut before the transformer runs (exact,
        # and ~8x less work for typical prompts). The CLS keeps its own position, `full`.
        nonpad = text != self.pad_id
        last = torch.where(nonpad.any(0), torch.arange(full, device=text.device), -1).max()
        keep = min(full, int(last) + 2)
        text = text[:, :keep]
        x = torch.cat([self.token_embedding(text) + self.positional_embedding[:keep],
                       (self.cls_emb + self.positional_embedding[full]).expand(n, 1, -1)], dim=1)
        seq = keep + 1
        causal = torch.full((seq, seq), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        # The CLS row may look at non-pad tokens only. CONCH builds that row shifted right by one column
        # (column 0 always open, column j open when token j-1 is not padding); kept for parity.
        allowed = F.pad(text != self.pad_id, (1, 0), value=True)  # [T, seq]
        cls_row = torch.zeros((n, seq), device=x.device, dtype=x.dtype).masked_fill_(~allowed, float("-inf"))
        mask = causal.expand(n, seq, seq).clone()
        mask[:, -1, :] += cls_row
        mask = mask.repeat_interleave(self.heads, dim=0)
        x = self.transformer(x.permute(1, 0, 2), mask).permute(1, 0, 2)
        return self.ln_final(x[:, -1]) @ self.text_projection


class ConchNet(nn.Module):
    """CONCH without its captioning decoder; parameter names follow the published checkpoint."""

    IGNORED_PREFIXES = ("text_decoder.", "visual.attn_pool_caption.", "visual.ln_caption.")

    def __init__(self, cfg: dict):
        super().__init__()
        self.visual = ConchVisual(cfg)
        self.text = ConchText(cfg)
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
