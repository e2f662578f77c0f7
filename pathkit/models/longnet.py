"""The Prov-GigaPath LongNet slide encoder, reimplemented without flash-attn.

`LongNetSlideEncoder` reproduces the reference (github prov-gigapath/prov-gigapath @ 09d8e876,
`gigapath/slide_encoder.py` + its vendored torchscale LongNet) in eval mode, including its quirks, so that
the released `slide_encoder.pth` loads as-is (`load_state_dict(ckpt["model"], strict=True)`) and gives the
same numbers (checked against a fixture made with the reference code; see tests/test_longnet.py).

What differs from the reference, on purpose:
- no flash-attn: each dilated-attention branch runs through PyTorch's fused scaled-dot-product attention
  kernel that also returns the log-sum-exp (CPU and CUDA), with a public-API fallback; CPU and GPU,
  float32 / bfloat16 / float16;
- position embeddings are computed in closed form for the rows needed, never the 1M-row (~3 GB) table;
- coordinates off the model's 1000 x 1000 grid raise `GridError` instead of wrapping silently;
- memory grows linearly with the number of tiles (segments and FFN rows are processed in chunks);
- inference only: no dropout / drop-path (the released model is used frozen).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GridError, WeightsError
from .registry import ModelSpec, get_spec, register

__all__ = [
    "LongNetSlideEncoder",
    "build_slide_encoder",
    "dilated_attention",
    "load_slide_encoder",
    "segment_lengths",
    "sincos_pos_embed",
]

ENCODER_LN_EPS = 1e-5  # torchscale's layernorm_eps
OUTPUT_NORM_EPS = 1e-6  # the slide encoder's outer `norm`


def segment_lengths(max_wsi_size: int = 262144, tile_size: int = 256, n: int = 5) -> list[int]:
    """The reference's segment lengths: 2 ** linspace(10, int(log2((max_wsi_size // tile_size) ** 2)), n)."""
    max_seq_len = (max_wsi_size // tile_size) ** 2
    # numpy, with the reference's int() truncation of the upper exponent, so the values match exactly
    exps = np.linspace(np.log2(1024), int(np.log2(max_seq_len)), n)
    return [int(v) for v in np.power(2, exps).astype(int)]


# ----------------------------------------------------------------------------------------------------
# position embeddings

def sincos_pos_embed(gx: torch.Tensor, gy: torch.Tensor, dim: int, chunk: int = 8192,
                     device=None) -> torch.Tensor:
    """Rows of the MAE 2-D sin-cos table for grid cells (gx, gy), float64 maths cast to float32.

    Row = concat(sin(gy w), cos(gy w), sin(gx w), cos(gx w)), w_i = 10000 ** (-i / (dim / 4)): the first
    half encodes y, as the reference's meshgrid ordering does. Computed in chunks of rows so that even
    70k tiles need only a few MB of float64 scratch.
    """
    if dim % 4:
        raise ValueError(f"embed_dim must be a multiple of 4 for 2-D sin-cos position embeddings, got {dim}")
    quarter = dim // 4
    omega = np.arange(quarter, dtype=np.float64) / quarter
    device = torch.device(device) if device is not None else gx.device
    omega = torch.from_numpy(1.0 / 10000 ** omega).to(device)
    gx = gx.reshape(-1).to(device, torch.float64)
    gy = gy.reshape(-1).to(device, torch.float64)
    out = torch.empty(gx.numel(), dim, dtype=torch.float32, device=device)
    for i in range(0, gx.numel(), chunk):
        ay = gy[i:i + chunk, None] * omega
        ax = gx[i:i + chunk, None] * omega
        out[i:i + chunk] = torch.cat([ay.sin(), ay.cos(), ax.sin(), ax.cos()], dim=1).float()
    return out


from ._dilated_attention import (  # noqa: E402,F401  (dilated_attention is public)
    _dilated_attention_packed, dilated_attention)


# ----------------------------------------------------------------------------------------------------
# modules (attribute names = the reference's state-dict names)

class _DilatedSelfAttention(nn.Module):
    def __init__(self, dim, heads, seg_lengths, ratios, eps):
        super().__init__()
        if dim % heads:
            raise ValueError(f"embed_dim {dim} is not divisible by heads {heads}")
        self.heads = heads
        self.seg_lengths, self.ratios = list(seg_lengths), list(ratios)
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))
        self.inner_attn_ln = nn.LayerNorm(dim, eps=eps)
        self.backend = "auto"
        self.token_budget = None  # rows per chunk of short segments; None: 16k on CPU, 256k on GPU

    def forward(self, x):
        B, L, E = x.shape
        H = self.heads
        pad = max(int(r) for r in self.ratios)  # zero rows after the sequence: tails are views, not copies
        w = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
        bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
        if torch.is_grad_enabled():
            qkv = F.pad(F.linear(x, w, bias), (0, 0, 0, pad))
        else:  # project straight into the padded buffer
            qkv = x.new_empty(B, L + pad, 3 * E)
            qkv[:, L:] = 0
            for b in range(B):
                torch.addmm(bias, x[b], w.t(), out=qkv[b, :L])
        budget = self.token_budget or (1 << 14 if x.device.type == "cpu" else 1 << 18)  # fewer launches on GPU
        o = _dilated_attention_packed(qkv.view(B, L + pad, 3, H, E // H), L, self.seg_lengths, self.ratios,
                                      self.backend, budget)
        return self.out_proj(self.inner_attn_ln(o.reshape(B, L, E)))


class _FFN(nn.Module):
    def __init__(self, dim, hidden, eps):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.ffn_layernorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x):
        h = self.fc1(x)
        if h.dtype == torch.bfloat16 and h.device.type == "cpu" and h.is_contiguous():
            # PyTorch's CPU kernel computes bf16 GELU in float32 and rounds once: bit for bit the reference's
            # upcast (checked in tests/test_longnet.py), without the 4x-wide float32 copy (~4x faster)
            h = F.gelu(h)
        else:
            h = F.gelu(h.float()).type_as(h)
        return self.fc2(self.ffn_layernorm(h))


class _EncoderLayer(nn.Module):
    def __init__(self, dim, heads, hidden, seg_lengths, ratios, eps):
        super().__init__()
        self.self_attn = _DilatedSelfAttention(dim, heads, seg_lengths, ratios, eps)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = _FFN(dim, hidden, eps)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.row_chunk = 8192  # FFN rows per chunk: the 4x-wide hidden activations stay small

    def forward(self, x):
        x = x + self.self_attn(self.self_attn_layer_norm(x))
        L, c = x.shape[1], self.row_chunk
        if L <= c:
            return x + self.ffn(self.final_layer_norm(x))
        if torch.is_grad_enabled():
            return x + torch.cat([self.ffn(self.final_layer_norm(x[:, i:i + c])) for i in range(0, L, c)], dim=1)
        for i in range(0, L, c):  # x is this layer's own tensor: add in place, chunk by chunk
            x[:, i:i + c] += self.ffn(self.final_layer_norm(x[:, i:i + c]))
        return x


class _Encoder(nn.Module):
    def __init__(self, dim, depth, heads, hidden, seg_lengths, ratios, eps):
        super().__init__()
        self.layers = nn.ModuleList(_EncoderLayer(dim, heads, hidden, seg_lengths, ratios, eps)
                                    for _ in range(depth))
        self.layer_norm = nn.LayerNorm(dim, eps=eps)


class _PatchEmbed(nn.Module):
    def __init__(self, in_chans, dim):
        super().__init__()
        self.proj = nn.Linear(in_chans, dim)

    def forward(self, x):
        return self.proj(x)


_TRAINING_ONLY = {"arch", "seed", "perturbed_biases_and_layernorms", "dropout", "drop_path_rate",
                  "attention_dropout", "flash_attention", "global_pool", "name", "model_arch", "pretrained"}
# architecture switches of the reference that this implementation fixes to the released values
_FIXED = {"subln": True, "encoder_normalize_before": True, "normalize_output": True, "activation_fn": "gelu"}


class LongNetSlideEncoder(nn.Module):
    """Prov-GigaPath's slide encoder (LongNetViT): tile embeddings + coordinates -> slide embedding.

    Parameters mirror the reference: `in_chans` (tile-embedding dim), `embed_dim`, `depth`, `heads`,
    `mlp_ratio` (or `ffn_dim`), `slide_ngrids` (grid side, 1000), `tile_size` (coords / tile_size = grid
    cell, 256), `max_wsi_size` (sets the segment lengths), `segment_length` / `dilated_ratio` overrides.

    `attn_backend`: "auto" (fused SDPA kernel with log-sum-exp, checked once), "fused", "sdpa" (public
    F.scaled_dot_product_attention + separate log-sum-exp) or "manual" (explicit softmax, chunked).
    """

    def __init__(self, in_chans=1536, embed_dim=768, depth=12, heads=16, mlp_ratio=4.0, slide_ngrids=1000,
                 tile_size=256, max_wsi_size=262144, segment_length=None, dilated_ratio=None, ffn_dim=None,
                 layernorm_eps=ENCODER_LN_EPS, norm_eps=OUTPUT_NORM_EPS, attn_backend="auto"):
        super().__init__()
        seg = list(segment_length) if segment_length is not None else segment_lengths(max_wsi_size, tile_size)
        ratios = list(dilated_ratio) if dilated_ratio is not None else [1, 2, 4, 8, 16]
        if len(seg) != len(ratios):
            raise ValueError(f"segment_length {seg} and dilated_ratio {ratios} differ in length")
        hidden = int(ffn_dim) if ffn_dim is not None else int(embed_dim * mlp_ratio)
        self.config = {"in_chans": in_chans, "embed_dim": embed_dim, "depth": depth, "heads": heads,
                       "mlp_ratio": mlp_ratio, "slide_ngrids": slide_ngrids, "tile_size": tile_size,
                       "max_wsi_size": max_wsi_size, "segment_length": seg, "dilated_ratio": ratios,
                       "ffn_dim": hidden}
        self.in_chans, self.embed_dim, self.depth = in_chans, embed_dim, depth
        self.slide_ngrids, self.tile_size = slide_ngrids, tile_size
        self.patch_embed = _PatchEmbed(in_chans, embed_dim)
        self.encoder = _Encoder(embed_dim, depth, heads, hidden, seg, ratios, layernorm_eps)
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.attn_backend = attn_backend
        self.name = "longnet"  # key of its embeddings in embed_slide / embed_cohort; the registry name when loaded

    @classmethod
    def from_config(cls, cfg: dict, **overrides) -> LongNetSlideEncoder:
        """Build from a reference-style config dict (the fixture's / the registry's keys)."""
        cfg = {**cfg, **overrides}
        for k, want in _FIXED.items():
            if k in cfg and cfg[k] != want:
                raise ValueError(f"config {k}={cfg[k]!r} is not supported (the released model uses {want!r})")
        aliases = {"encoder_ffn_embed_dim": "ffn_dim", "encoder_layernorm_eps": "layernorm_eps",
                   "num_heads": "heads", "encoder_attention_heads": "heads"}
        kw = {}
        for k, val in cfg.items():
            k = aliases.get(k, k)
            if k in _FIXED or k in _TRAINING_ONLY:
                continue
            kw[k] = val
        return cls(**kw)

    # the backend lives on every attention module; one switch for users
    @property
    def attn_backend(self) -> str:
        return self._attn_backend

    @attn_backend.setter
    def attn_backend(self, value: str):
        if value not in ("auto", "fused", "sdpa", "manual"):
            raise ValueError(f"attn_backend {value!r} is not one of 'auto', 'fused', 'sdpa', 'manual'")
        self._attn_backend = value
        for layer in self.encoder.layers:
            layer.self_attn.backend = value

    # ---- geometry
    def grid_cells(self, coords: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """coords [..., 2] (x, y) -> grid cells (gx, gy) as int64, checked to lie on the grid."""
        c = coords if coords.is_floating_point() else coords.to(torch.float64)
        cell = torch.floor(c / self.tile_size)  # in coords' own dtype, as the reference does
        gx, gy = cell[..., 0], cell[..., 1]
        n = self.slide_ngrids
        bad = (gx < 0) | (gx >= n) | (gy < 0) | (gy >= n)
        if bool(bad.any()):
            raise GridError(
                f"{int(bad.sum())} tile coordinate(s) fall off the model's {n} x {n} grid of {self.tile_size}-px "
                f"cells: grid x spans {int(gx.min())}..{int(gx.max())}, grid y spans {int(gy.min())}..{int(gy.max())} "
                f"(allowed 0..{n - 1}, i.e. coordinates 0 <= x, y < {n * self.tile_size}). Pass coordinates in "
                "0.5-mpp pixels of 256-px tiles (pk.tl.embed_slide(coords='grid') does this), or crop the slide."
            )
        return gx.long(), gy.long()

    def pos_index(self, coords: torch.Tensor) -> torch.Tensor:
        """The reference's position index: gx * slide_ngrids + gy + 1 (0 is the CLS token)."""
        gx, gy = self.grid_cells(coords)
        return gx * self.slide_ngrids + gy + 1

    # ---- forward
    def _tokens(self, tile_embeds, coords):
        if tile_embeds.dim() != 3 or coords.dim() != 3 or coords.shape[-1] != 2:
            raise ValueError(f"expected tile_embeds [B, L, {self.in_chans}] and coords [B, L, 2], got "
                             f"{tuple(tile_embeds.shape)} and {tuple(coords.shape)}")
        if tile_embeds.shape[:2] != coords.shape[:2]:
            raise ValueError(f"tile_embeds {tuple(tile_embeds.shape)} and coords {tuple(coords.shape)} differ in B, L")
        if tile_embeds.shape[-1] != self.in_chans:
            raise ValueError(f"tile embeddings have dim {tile_embeds.shape[-1]}, the model expects {self.in_chans}")
        gx, gy = self.grid_cells(coords)
        pos_idx = gx * self.slide_ngrids + gy + 1
        w = self.patch_embed.proj.weight
        pos = sincos_pos_embed(gx, gy, self.embed_dim, device=w.device).to(w.dtype).view(*gx.shape, self.embed_dim)
        x = self.patch_embed(tile_embeds.to(w.device, w.dtype)) + pos
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # the CLS position row is all zeros
        return torch.cat([cls, x], dim=1), pos_idx

    def forward_features(self, tile_embeds, coords, return_states: bool = False) -> dict:
        """Everything parity needs: pos_idx [B, L], tokens_in [B, L+1, E], encoder_out [B, L+1, E]
        (after encoder.layer_norm) and, with return_states, encoder_states [depth+1, B, L+1, E] (the
        input tokens and each block's output, without encoder.layer_norm)."""
        h, pos_idx = self._tokens(tile_embeds, coords)
        out = {"pos_idx": pos_idx, "tokens_in": h}
        states = [h] if return_states else None
        for layer in self.encoder.layers:
            h = layer(h)
            if return_states:
                states.append(h)
        out["encoder_out"] = self.encoder.layer_norm(h)
        if return_states:
            out["encoder_states"] = torch.stack(states)
        return out

    def _pool(self, h, pool):
        if pool == "cls":
            return self.norm(h[:, 0])
        if pool in ("mean", "gap"):
            return self.norm(h[:, 1:].mean(dim=1))
        raise ValueError(f"pool={pool!r}: use 'cls' or 'mean'")

    def forward(self, tile_embeds, coords, pool: str = "cls", all_layers: bool = False,
                progress: bool = False, layer: int | None = None) -> torch.Tensor:
        """tile_embeds [B, L, in_chans], coords [B, L, 2] (x, y) -> [B, E], or [depth+1, B, E] with
        all_layers (each hidden state pooled and `norm`ed, without encoder.layer_norm, as the reference).

        layer=k: only row k of the all_layers output (the hidden state after k blocks, pooled and `norm`ed,
        without encoder.layer_norm), computed without running the blocks after k. The authors' fine-tuning
        (``--feat_layer 11``) and TRIDENT read row 11 of the 12-block encoder.

        pool="cls" is the reference's default, but its CLS token was never trained; the authors pool with
        the mean of the tile tokens (pool="mean"). Rows of a batch are independent, yet padding a slide to
        a common length changes its result: encode slides one at a time unless they have the same L.
        """
        if pool not in ("cls", "mean", "gap"):
            raise ValueError(f"pool={pool!r}: use 'cls' or 'mean'")
        from .._progress import progress_bar

        depth = len(self.encoder.layers)
        if layer is not None:
            if all_layers:
                raise ValueError("pass either all_layers=True or layer=k, not both")
            if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= depth:
                raise ValueError(f"layer={layer!r}: use an int in 0..{depth} (the hidden state after k blocks)")
        h, _ = self._tokens(tile_embeds, coords)
        pooled = [self._pool(h, pool)] if all_layers else None
        blocks = self.encoder.layers if layer is None else self.encoder.layers[:layer]
        for block in progress_bar(blocks, desc=f"LongNet ({h.shape[1] - 1} tiles)", unit="layer",
                          disable=not progress, leave=False):
            h = block(h)
            if all_layers:
                pooled.append(self._pool(h, pool))
        if all_layers:
            return torch.stack(pooled)
        return self._pool(h if layer is not None else self.encoder.layer_norm(h), pool)


# ----------------------------------------------------------------------------------------------------
# registry entry and loading

GIGAPATH_SLIDE = register(ModelSpec(
    name="gigapath_slide", kind="slide", arch="pathkit:longnet",
    kwargs={"in_chans": 1536, "embed_dim": 768, "depth": 12, "heads": 16, "mlp_ratio": 4,
            "slide_ngrids": 1000, "tile_size": 256, "max_wsi_size": 262144},
    embed_dim=768, input_size=0, resize=None, pool="mean",
    weights=("hf_hub:prov-gigapath/prov-gigapath/slide_encoder.pth",), n_params=86_330_880,
    license="Apache-2.0 (the Prov-GigaPath repository's LICENSE since 2025; its README limits use to research, "
            "no deployed use); weights gated on the HF hub", gated=True,
    source="https://github.com/prov-gigapath/prov-gigapath (gigapath/slide_encoder.py @ 09d8e876)",
    description="Prov-GigaPath slide encoder: LongNet (12 layers, 768-d, dilated attention) over 1536-d "
                "gigapath_tile embeddings on a 256-px / 0.5-mpp grid; the checkpoint's ['model']",
    # layer 11 of 12 and the mean of the tile tokens: what TRIDENT reads from this encoder (the authors'
    # fine-tuning reads layer 11 too, from the CLS token, which it trains); see docs/models.md
    extra={"tile_model": "gigapath_tile", "checkpoint_key": "model", "layer": 11, "pool": "mean"},
), overwrite=True)

SLIDE_BUILDERS = {"longnet": LongNetSlideEncoder.from_config}


def build_slide_encoder(model="gigapath_slide", device="cpu", **overrides) -> LongNetSlideEncoder:
    """The exact architecture of a registered slide model, without weights (device="meta": no memory)."""
    spec = get_spec(model, kind="slide")
    prefix = "pathkit:"
    if not spec.arch.startswith(prefix) or spec.arch[len(prefix):] not in SLIDE_BUILDERS:
        raise ValueError(f"slide model {spec.name!r} has architecture {spec.arch!r}; known: "
                         + ", ".join(prefix + k for k in SLIDE_BUILDERS))
    with torch.device(device):
        net = SLIDE_BUILDERS[spec.arch[len(prefix):]](dict(spec.kwargs), **overrides)
    return net.eval()


def load_slide_encoder(model="gigapath_slide", weights=None, device="cpu", dtype=torch.float32):
    """Build a registered slide encoder and load its weights -> (module in eval mode, info dict).

    weights: None (the registry's source, e.g. the HF hub), a local path / "hf_hub:<repo>/<file>", a
    state dict, or "random" (random initialisation; warns loudly: embeddings are meaningless).
    The reference's checkpoint format ({"model": state_dict}) is unwrapped; names load strictly.
    """
    from .weights import read_state_dict, resolve, sha256_file

    spec = get_spec(model, kind="slide")
    info = {"name": spec.name, "arch": spec.arch, "weights": None, "weights_sha256": None}
    sd = None
    if isinstance(weights, str) and weights == "random":
        warnings.warn(f"{spec.name}: using RANDOM weights (weights='random'): slide embeddings are "
                      "meaningless except for testing", UserWarning, stacklevel=_user_stacklevel())
        info["weights"] = "random"
    elif isinstance(weights, dict):
        sd, info["weights"] = weights, "state_dict"
    else:  # fetch / read before building: a missing file fails fast
        source = weights if weights is not None else (spec.weights[0] if spec.weights else None)
        if source is None:
            raise WeightsError(f"slide model {spec.name!r} has no weights source; pass weights=PATH")
        path = resolve(source)
        sd = read_state_dict(path)
        info["weights"], info["weights_sha256"] = str(source), _cached_sha(path, sha256_file)
    if sd is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # weights="random" is reproducible
            net = build_slide_encoder(spec, device="cpu")
    else:  # no point initialising 86M parameters that are overwritten next
        net = build_slide_encoder(spec, device="meta").to_empty(device="cpu")
    info["config"] = dict(net.config)
    if sd is not None:
        sd = {k.removeprefix("module."): v for k, v in sd.items()}
        sd.pop("pos_embed", None)  # computed, never learned
        missing, unexpected = _diff_keys(net, sd)
        if missing or unexpected:
            raise WeightsError(
                f"weights {info['weights']} do not fit {spec.name}: missing {missing[:5]}"
                f"{'...' if len(missing) > 5 else ''} ({len(missing)}), unexpected {unexpected[:5]}"
                f"{'...' if len(unexpected) > 5 else ''} ({len(unexpected)}). Is this the slide encoder's "
                "checkpoint (slide_encoder.pth), with the config of this registry entry?")
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"weights {info['weights']} do not fit {spec.name}: {e}") from e
    net = net.to(device=device, dtype=dtype).eval()
    net.name = spec.name
    info.update(device=str(device), dtype=str(dtype).replace("torch.", ""))
    return net, info


def _diff_keys(net, sd):
    want = set(net.state_dict())
    return sorted(want - set(sd)), sorted(set(sd) - want)


_SHA: dict = {}


def _cached_sha(path, fn):
    import os

    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA:
        _SHA[key] = fn(path)
    return _SHA[key]


from .._warn import user_stacklevel as _user_stacklevel  # last: touches no import order (issue 29)
