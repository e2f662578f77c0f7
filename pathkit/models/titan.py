"""TITAN slide encoder (Mahmood Lab; Ding et al. 2024, arXiv:2411.19666) on CONCH v1.5 tile features.

TITAN's code ships as Hugging Face remote code (huggingface.co/MahmoodLab/TITAN: ``vision_transformer.py``,
``configuration_titan.py``, ``modeling_titan.py``); pathkit never runs it. This is an independent module that
reproduces ``Titan.encode_slide_from_patch_features`` (= the vision tower's forward with ``no_proj=True``):

1. The tiles go on a grid: ``cell = (coords - coords.min()) // patch_size_lv0`` (level-0 px, the step between
   neighbouring tiles: 512 for a 20x slide, 1024 for 40x). Features of tiles sharing a cell are summed; a cell
   whose summed feature is all zeros counts as background and is dropped. Tokens are ordered x-major
   (cell x, then cell y), as the reference's ``[x, y]`` feature grid flattens.
2. ``patch_embed``: Linear(768, 768) + GELU on each token; a CLS token is prepended (no position embedding).
3. 6 pre-norm transformer blocks (LayerNorm eps 1e-6, 12 heads, qkv with bias, MLP 4x with GELU) whose
   attention logits get a 2D ALiBi bias: ``-slope_h * euclidean distance`` between the two tokens' grid cells
   (slopes of ALiBi, Press et al., for 12 heads), 0 for every pair that involves the CLS token.
4. Final LayerNorm (eps 1e-6), then CoCa's contrastive attentional pooler: one learned query, LayerNorms
   (eps 1e-5) on the query and on all tokens (CLS included), ``nn.MultiheadAttention`` with 8 heads -> the
   768-d slide embedding. ``proj`` (768 x 768) maps it into the text space for zero-shot use; it is loaded
   but not applied to the embedding, as the reference's ``no_proj=True``.

The released checkpoint also holds the text encoder and the captioning pooler (``attn_pool``, 128 queries,
for the decoder whose weights were removed from the release): the ``titan_vision`` key map keeps the
``vision_encoder.*`` tensors minus ``attn_pool.*`` and renames them; the rest is loaded strictly.
"""
from __future__ import annotations

import math
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from ._slide_loading import companion_config, start
from .registry import ModelSpec, register

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al. 2022): a geometric series from 2^(-8/n); for n not a power of two,
    those of the nearest lower power of two, then every other slope of the next power of two."""
    def powers(n):
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    low = 2 ** math.floor(math.log2(n_heads))
    slopes = powers(low)
    if low != n_heads:
        slopes += powers(2 * low)[0::2][: n_heads - low]
    return torch.tensor(slopes, dtype=torch.float32)


def grid_tokens(features: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tile features [N, C] and integer grid cells [N, 2] (x, y; any offset) -> the occupied cells' summed
    features [M, C] (float32) and their cells [M, 2], x-major; all-zero cells (background) are dropped."""
    cells = cells.to(torch.int64)
    cells = cells - cells.min(dim=0).values
    ny = int(cells[:, 1].max()) + 1
    key = cells[:, 0] * ny + cells[:, 1]
    uniq, inv = torch.unique(key, sorted=True, return_inverse=True)
    summed = torch.zeros(len(uniq), features.shape[-1], dtype=torch.float32, device=features.device)
    summed.index_add_(0, inv.to(features.device), features.float())
    keep = (summed != 0).any(dim=-1)
    pos = torch.stack([uniq // ny, uniq % ny], dim=1)[keep.to(uniq.device)]
    return summed[keep], pos


def level0_cells(coords: torch.Tensor, patch_size_lv0: float) -> torch.Tensor:
    """The reference's grid: ``(coords - coords.min()) // patch_size_lv0`` (floor division)."""
    coords = torch.as_tensor(coords)
    return torch.div(coords - coords.min(dim=0).values, patch_size_lv0, rounding_mode="floor").to(torch.int64)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(dim, 3 * dim)
        self.attn.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(dim, int(dim * mlp_ratio))
        self.mlp.fc2 = nn.Linear(int(dim * mlp_ratio), dim)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype))
        x = x + self.attn.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class _AttentionPool(nn.Module):
    """One learned query attending over all tokens (CoCa's contrastive pooler)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.query = nn.Parameter(torch.zeros(1, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ln_q = nn.LayerNorm(dim)
        self.ln_k = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kv = self.ln_k(x)
        q = self.ln_q(self.query)[None].expand(x.shape[0], -1, -1)
        return self.attn(q, kv, kv, need_weights=False)[0][:, 0]


class TitanSlideEncoder(nn.Module):
    """TITAN's slide vision encoder: ``net(features [N, in_chans], cells [N, 2])`` -> the slide vector [E].

    ``cells`` are integer grid positions (x, y) of the tiles, one cell per 512-px 20x tile (see
    :func:`level0_cells` for the reference's rule from level-0 coordinates).
    """

    def __init__(self, in_chans: int = 768, embed_dim: int = 768, depth: int = 6, heads: int = 12,
                 mlp_ratio: float = 4.0, pool_heads: int = 8):
        super().__init__()
        self.in_chans, self.embed_dim, self.heads = in_chans, embed_dim, heads
        self.patch_embed = nn.Sequential(nn.Linear(in_chans, embed_dim), nn.GELU())
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.blocks = nn.ModuleList(_Block(embed_dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.pooler = _AttentionPool(embed_dim, pool_heads)
        self.proj = nn.Parameter(torch.zeros(embed_dim, embed_dim))  # into the text space (zero-shot)
        self.register_buffer("slopes", alibi_slopes(heads), persistent=False)

    def alibi(self, pos: torch.Tensor) -> torch.Tensor:
        """[M, 2] cells -> the attention bias [1, heads, M + 1, M + 1] (CLS first, unbiased)."""
        p = pos.to(self.slopes.device, torch.float32)
        dist = torch.sqrt(((p[:, None] - p[None]) ** 2).sum(-1))
        bias = torch.zeros(1, self.heads, len(p) + 1, len(p) + 1, device=p.device)
        bias[0, :, 1:, 1:] = -self.slopes[:, None, None] * dist
        return bias

    def forward(self, features: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        if features.dim() == 3:
            features, cells = features[0], cells[0]
        tokens, pos = grid_tokens(features, cells)
        x = self.patch_embed(tokens.to(self.cls_token.dtype))[None]
        x = torch.cat([self.cls_token.expand(1, -1, -1).to(x.dtype), x], dim=1)
        bias = self.alibi(pos)
        for blk in self.blocks:
            x = blk(x, bias)
        return self.pooler(self.norm(x))[0]


# ---------------------------------------------------------------------------------------------- weights
def titan_vision_keys(sd: dict) -> dict:
    """MahmoodLab/TITAN's checkpoint -> :class:`TitanSlideEncoder` names.

    Keeps ``vision_encoder.*`` (drops ``text_encoder.*`` and anything else) without its captioning pooler
    ``attn_pool.*``; ``blocks.modules_list.N.`` -> ``blocks.N.``, ``attn_pool_contrastive.`` -> ``pooler.``.
    The query of the pooler is stored as [1, E] by both. A file without the prefix (the vision tower alone) is
    renamed the same way.
    """
    if any(k.startswith("vision_encoder.") for k in sd):
        sd = {k[len("vision_encoder."):]: v for k, v in sd.items() if k.startswith("vision_encoder.")}
    out = {}
    for k, v in sd.items():
        if k.startswith("attn_pool."):
            continue
        k = k.replace("blocks.modules_list.", "blocks.", 1)
        if k.startswith("attn_pool_contrastive."):
            k = "pooler." + k[len("attn_pool_contrastive."):]
        out[k] = v
    return out


def _register_key_map() -> None:
    from ._key_maps import KEY_MAPS

    KEY_MAPS.setdefault("titan_vision", titan_vision_keys)


_register_key_map()

_CONFIG_KEYS = {"mlp_patch_embed_dim": "in_chans", "embed_dim": "embed_dim", "depth": "depth",
                "num_heads": "heads", "mlp_ratio": "mlp_ratio", "attn_pooler_heads": "pool_heads"}


def _companion(path) -> dict:
    """The sizes in ``config.json`` beside the weights (the HF repository's ``vision_config``), if any."""
    raw, cfg = companion_config(path)
    if cfg is None:
        return {}
    vis = raw.get("vision_config", raw)
    if vis.get("pos_encode_type", "alibi") != "alibi":
        raise WeightsError(f"{cfg}: pos_encode_type={vis['pos_encode_type']!r}; pathkit's TITAN has 2D ALiBi only")
    return {ours: vis[theirs] for theirs, ours in _CONFIG_KEYS.items() if theirs in vis}


def _build(spec: ModelSpec, config: dict | None = None) -> TitanSlideEncoder:
    return TitanSlideEncoder(**{**spec.kwargs, **(config or {})}).eval()


def load_titan(model="titan", weights=None, device="cpu") -> tuple[TitanSlideEncoder, dict]:
    """Build a TITAN entry and load its slide vision encoder strictly -> (module in eval mode, info).

    weights: None (the entry's hub source: MahmoodLab/TITAN, gated), a local file / ``"hf_hub:..."`` (a
    ``config.json`` beside it with a ``vision_config`` sets the sizes), a state dict, or ``"random"`` (loud
    warning). The last loaded module is cached (one per process), so a cohort loads it once.
    """
    from .weights import read_state_dict, resolve, sha256_file

    spec, info, is_random = start(model, weights)
    if is_random:
        return _build(spec).to(device), info
    if isinstance(weights, dict):
        info["weights"] = "state dict passed by the user"
        return _load_into(spec, weights, {}, info["weights"], None, device), info
    source = weights if weights is not None else spec.weights[0]
    local = Path(str(source)).expanduser()
    stamp = (local.stat().st_mtime_ns, local.stat().st_size) if local.is_file() else None  # a file rewritten
    ck = (repr(spec.to_dict()), str(source), stamp, str(device))
    with _CACHE_LOCK:
        if ck in _CACHE:
            return _CACHE[ck]
        path = resolve(source)
        extra = _companion(path)
        net = _load_into(spec, read_state_dict(path), extra, source, path, device)
        info.update(weights=str(source), weights_sha256=sha256_file(path),
                    config=str(Path(path).parent / "config.json") if extra else "registry")
        _CACHE.clear()
        _CACHE[ck] = (net, info)
        return net, info


def _load_into(spec, sd, extra, source, path, device):
    from .weights import apply_key_map

    net = _build(spec, extra)
    sd = apply_key_map(dict(sd), spec.key_map)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise WeightsError(f"weights {source} do not fit {spec.name} (TITAN slide vision encoder"
                           f"{', sizes from ' + str(Path(path).parent / 'config.json') if extra else ''}): {e}") from e
    return net.to(device).eval()


register(ModelSpec(
    name="titan", kind="slide", arch="pathkit:titan",
    kwargs={"in_chans": 768, "embed_dim": 768, "depth": 6, "heads": 12, "mlp_ratio": 4.0, "pool_heads": 8},
    embed_dim=768, input_size=0, resize=None, pool="attention",
    weights=("hf_hub:MahmoodLab/TITAN",), key_map="titan_vision", n_params=46_076_160,  # the slide vision encoder loaded (no captioning pooler)
    license="CC BY-NC-ND 4.0 (github.com/mahmoodlab/TITAN README and setup.py); gated on the HF hub",
    gated=True,
    source=("https://huggingface.co/MahmoodLab/TITAN remote code (vision_transformer.py: preprocess_features, "
            "2D ALiBi, CoCa attn_pool_contrastive; modeling_titan.py encode_slide_from_patch_features, "
            "no_proj=True) / https://github.com/mahmoodlab/TITAN (README: CONCH v1.5 features, patch_size_lv0) / "
            "TRIDENT TitanSlideEncoder"),
    description="TITAN (Mahmood Lab): 6-layer ViT with 2D ALiBi over a grid of CONCH v1.5 tile features, "
                "attention-pooled 768-d slide embedding",
    extra={"tile_model": "conch_v15", "in_chans": 768, "coords": True, "tile_px": 512, "mpp": 0.5,
           "call": "pathkit.models.titan.load_titan(name) -> net; net(features [N, 768], cells [N, 2]) -> [768]",
           # the text half (modeling_titan.py / config.json text_config), loaded by pathkit.models.slide_text
           "templates": "titan", "text": {"embed_dim": 768, "context_length": 128, "vocab_size": 32007,
                                          "width": 768, "heads": 12, "layers": 12, "pad_id": 0}},
), overwrite=True)
