"""PRISM slide encoder (Paige, Shaikovski et al. 2024, arXiv:2405.10254; HF hub paige-ai/Prism, gated).

PRISM takes Virchow (v1) tile embeddings (2560-d: CLS token concatenated with the mean patch token) and
resamples them with a Perceiver into 1 + 512 latents of 1280-d; a BioGPT decoder reads the 512 image latents
to write reports. The slide embedding users take is ``Prism.slide_representations(tiles)["image_embedding"]``
(TRIDENT's PRISMSlideEncoder, the grand-challenge "PRISM Embedder"): the first latent after its own LayerNorm
(``cls_norm``), 1280-d. ``"image_latents"`` (the other 512, after ``img_norm``) feed the text decoder.

Architecture, from the authors' remote code (``perceiver.py``, ``configuring_prism.py``, ``config.json``):
- ``latents``: a learned [1 + latent_seq, latent_dim] table, the same for every slide;
- ``perceiver_depth`` (8) layers, each: cross-attention of the latents to the tiles (LayerNorm on the latents
  only, bias-free q / kv / out projections, ``xattn_heads`` = 1 head of 1280), residual; a pre-norm
  feed-forward (GEGLU, ``mlp_mult`` 1), residual; then a transformer of ``transformer_depth`` (6) blocks over
  the latents (pre-norm ``nn.MultiheadAttention`` without biases, 8 heads; pre-norm GEGLU feed-forward);
- weight sharing: the cross-attention block of layer ``share_xattn_start_layer`` (1) is reused by every
  later layer (so its keys / values are computed once), the transformer of layer ``share_tf_start_layer`` (0)
  by every later layer. This module holds each shared block once; the reference's state dict names it once
  per layer (``perceiver.layers.{i}.xattn...``), and the loader folds those aliases onto one tensor,
  refusing a file whose aliases disagree.
No coordinates and no positional encoding: the tile order does not matter. One slide per call, so no
padding mask (the reference without a mask adds the same constant to every attention score: no effect).
The HF repository ships remote code (``trust_remote_code``), which pathkit does not run: only the
``image_resampler.*`` tensors of ``model.safetensors`` are read and loaded strictly into this module.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from ._slide_loading import companion_config, start
from .registry import ModelSpec, register

# the published config.json's perceiver_config, with its `context_dim` named `in_dim` here
RELEASED = {"in_dim": 2560, "latent_dim": 1280, "latent_seq": 512, "mhsa_heads": 8, "perceiver_depth": 8,
            "transformer_depth": 6, "share_xattn_start_layer": 1, "share_tf_start_layer": 0, "xattn_heads": 1,
            "mlp_mult": 1, "mlp_activation": "geglu"}
PREFIX = "image_resampler."  # the slide encoder inside the full Prism checkpoint


class _FeedForward(nn.Module):
    """Pre-norm MLP: LayerNorm -> Linear -> GEGLU (or GELU) -> Linear. Keys: norm, net.0, net.2."""

    def __init__(self, dim: int, mult: int, activation: str):
        super().__init__()
        if activation not in ("geglu", "gelu"):
            raise ValueError(f"mlp_activation={activation!r}: PRISM uses 'geglu' (or 'gelu')")
        self.geglu = activation == "geglu"
        self.norm = nn.LayerNorm(dim)
        hidden = dim * mult
        self.net = nn.ModuleList([nn.Linear(dim, hidden * (2 if self.geglu else 1)), nn.Identity(),
                                  nn.Linear(hidden, dim)])

    def forward(self, x):
        y = self.net[0](self.norm(x))
        if self.geglu:
            value, gate = y.chunk(2, dim=-1)
            y = value * F.gelu(gate)
        else:
            y = F.gelu(y)
        return self.net[2](y)


class _CrossAttention(nn.Module):
    """Latents (queries, layer-normed) attend to the tile features (keys / values, not normed)."""

    def __init__(self, latent_dim: int, in_dim: int, heads: int):
        super().__init__()
        if latent_dim % heads:
            raise ValueError(f"latent_dim {latent_dim} is not divisible by xattn_heads {heads}")
        self.heads = heads
        self.x_norm = nn.LayerNorm(latent_dim)
        self.to_q = nn.Linear(latent_dim, latent_dim, bias=False)
        self.to_kv = nn.Linear(in_dim, 2 * latent_dim, bias=False)
        self.to_out = nn.Linear(latent_dim, latent_dim, bias=False)

    def keys_values(self, h):
        """[B, N, in_dim] -> (k, v), each [B, heads, N, head_dim]."""
        B, N, _ = h.shape
        kv = self.to_kv(h).view(B, N, 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    def forward(self, x, kv):
        B, L, D = x.shape
        q = self.to_q(self.x_norm(x)).view(B, L, self.heads, -1).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.to_out(a.transpose(1, 2).reshape(B, L, D))


class _SelfAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mha = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)

    def forward(self, x):
        x = self.norm(x)
        return self.mha(x, x, x, need_weights=False)[0]


class PrismSlideEncoder(nn.Module):
    """PRISM's Perceiver resampler: tile features [N, in_dim] (or [B, N, in_dim]) -> slide embedding."""

    def __init__(self, in_dim: int = 2560, latent_dim: int = 1280, latent_seq: int = 512, mhsa_heads: int = 8,
                 perceiver_depth: int = 8, transformer_depth: int = 6, share_xattn_start_layer: int = 1,
                 share_tf_start_layer: int = 0, xattn_heads: int = 1, mlp_mult: int = 1,
                 mlp_activation: str = "geglu"):
        super().__init__()
        if perceiver_depth < 1 or share_xattn_start_layer < 0 or share_tf_start_layer < 0:
            raise ValueError("perceiver_depth must be >= 1 and the share_*_start_layer values >= 0")
        self.in_chans = self.in_dim = in_dim
        self.embed_dim = latent_dim
        self.depth = perceiver_depth
        self.share_xattn, self.share_tf = share_xattn_start_layer, share_tf_start_layer
        self.latents = nn.Parameter(torch.randn(1 + latent_seq, latent_dim))  # [image embedding; image latents]
        self.cls_norm = nn.LayerNorm(latent_dim)
        self.img_norm = nn.LayerNorm(latent_dim)
        n_x = min(perceiver_depth, share_xattn_start_layer + 1)
        n_t = min(perceiver_depth, share_tf_start_layer + 1)
        self.xattn = nn.ModuleList(nn.ModuleDict({"xattn": _CrossAttention(latent_dim, in_dim, xattn_heads),
                                                  "ff": _FeedForward(latent_dim, mlp_mult, mlp_activation)})
                                   for _ in range(n_x))
        self.tf = nn.ModuleList(nn.ModuleList(nn.ModuleDict({"mhsa": _SelfAttention(latent_dim, mhsa_heads),
                                                             "ff": _FeedForward(latent_dim, mlp_mult, mlp_activation)})
                                              for _ in range(transformer_depth))
                                for _ in range(n_t))

    def block_of_layer(self, i: int) -> tuple[int, int]:
        """Perceiver layer i -> (index into self.xattn, index into self.tf): the weight sharing."""
        return min(i, self.share_xattn), min(i, self.share_tf)

    def forward_features(self, h: torch.Tensor) -> dict:
        """[B, N, in_dim] -> {"image_embedding": [B, E], "image_latents": [B, latent_seq, E]}, as the
        reference's ``slide_representations``."""
        x = self.latents.to(h.dtype).expand(h.shape[0], -1, -1)
        kv, kv_of = None, None
        for i in range(self.depth):
            xi, ti = self.block_of_layer(i)
            block = self.xattn[xi]
            if kv_of != xi:  # a shared block sees the same tiles: its keys / values are computed once
                kv, kv_of = block["xattn"].keys_values(h), xi
            x = x + block["xattn"](x, kv)
            x = x + block["ff"](x)
            for layer in self.tf[ti]:
                x = x + layer["mhsa"](x)
                x = x + layer["ff"](x)
        return {"image_embedding": self.cls_norm(x[:, 0]), "image_latents": self.img_norm(x[:, 1:])}

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """Tile features [N, in_dim] or [B, N, in_dim] (B slides of equal tile count) -> [E] or [B, E]."""
        single = h.dim() == 2
        out = self.forward_features(h[None] if single else h)["image_embedding"]
        return out[0] if single else out


# ---------------------------------------------------------------------------------------------- loading

def _fold_aliases(sd: dict, net: PrismSlideEncoder, source) -> dict:
    """The reference's keys (``perceiver.layers.{i}.xattn|tf...``, every alias of a shared block) -> this
    module's (``xattn.{k}...``, ``tf.{k}...``); aliases of one tensor must hold the same values."""
    out: dict = {}
    seen: dict = {}
    for key, value in sd.items():
        new = key
        if key == "perceiver.latents":
            new = "latents"
        elif key.startswith("perceiver.layers."):
            parts = key.split(".")
            if len(parts) < 5 or not parts[2].isdigit() or parts[3] not in ("xattn", "tf"):
                raise WeightsError(f"weights {source}: unexpected key {key!r} for PRISM's Perceiver")
            i = int(parts[2])
            if i >= net.depth:
                raise WeightsError(f"weights {source}: {key!r} is for perceiver layer {i}, but the model has "
                                   f"{net.depth} layers (perceiver_depth in config.json?)")
            xi, ti = net.block_of_layer(i)
            new = ".".join([parts[3], str(xi if parts[3] == "xattn" else ti)] + parts[4:])
        if new in out:
            if out[new].shape != value.shape or not torch.equal(out[new], value):
                raise WeightsError(f"weights {source}: {key!r} and {seen[new]!r} name the same shared PRISM block "
                                   "but hold different values: not a PRISM checkpoint of this configuration")
            continue
        out[new], seen[new] = value, key
    return out


def _read_encoder_part(path) -> dict:
    """The slide-encoder tensors of a checkpoint: ``image_resampler.*`` (prefix removed) when the file is a
    full Prism checkpoint (read lazily from safetensors, so BioGPT is never loaded), else every tensor."""
    from .weights import _looks_like_safetensors, read_state_dict

    path = Path(path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                keys = list(f.keys())
                part = [k for k in keys if k.startswith(PREFIX)]
                if part:
                    return {k[len(PREFIX):]: f.get_tensor(k) for k in part}
        except Exception as e:  # corrupt or truncated file
            raise WeightsError(f"{path}: not a valid safetensors file (corrupted or truncated?): {e}. Delete it "
                               "and download it again, or pass another weights=") from e
    sd = read_state_dict(path)
    if any(k.startswith(PREFIX) for k in sd):
        return {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    for p in ("model.", "module."):
        if sd and all(k.startswith(p) for k in sd):
            sd = {k[len(p):]: v for k, v in sd.items()}
    return sd


def _companion(path) -> dict:
    """perceiver_config of the HF config.json beside the weights (context_dim -> in_dim), when present."""
    raw, _ = companion_config(path)
    raw = raw.get("perceiver_config", raw)
    out = {("in_dim" if k == "context_dim" else k): raw[k] for k in (*RELEASED, "context_dim")
           if k in raw and k != "in_dim"}
    return out


_CACHE: dict = {}  # the last loaded checkpoint: a cohort embeds many slides with one model
_CACHE_LOCK = threading.Lock()


def load_prism(model="prism", weights=None, device="cpu") -> tuple[PrismSlideEncoder, dict]:
    """Build a PRISM entry and load its slide-encoder weights strictly -> (module in eval mode, info).

    weights: None (the entry's hub source, ``model.safetensors`` of paige-ai/Prism, gated), a local file
    (the full Prism ``model.safetensors``, or a state dict of the resampler alone) / ``"hf_hub:<repo>/<file>"``,
    or "random" (loud warning). A ``config.json`` beside the file (the HF one) sets the sizes.
    ``net(torch.as_tensor(tiles.obsm["X_virchow"]))`` -> the 1280-d slide embedding;
    ``net.forward_features(x[None])`` also gives the 512 image latents.
    """
    from .weights import resolve, sha256_file

    spec, info, is_random = start(model, weights)
    if is_random:
        return PrismSlideEncoder(**spec.kwargs).eval().to(device), info
    source = weights if weights is not None else spec.weights[0]
    path = resolve(source)
    st = path.stat()
    key = (repr(spec.to_dict()), str(path), st.st_size, st.st_mtime_ns, str(device))
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
        extra = _companion(path)
        net = PrismSlideEncoder(**{**spec.kwargs, **extra})
        sd = _fold_aliases(_read_encoder_part(path), net, source)
        try:
            net.load_state_dict(sd, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"weights {source} do not fit {spec.name} (PRISM Perceiver resampler, "
                               f"{net.in_dim}-d tiles -> {net.embed_dim}-d; pathkit's xattn.k / tf.k are the reference's "
                               f"perceiver.layers.k.xattn / .tf, latents its perceiver.latents): {e}") from e
        info.update(weights=os.fspath(source), weights_sha256=sha256_file(path),
                    config=str(Path(path).parent / "config.json") if extra else "registry")
        _CACHE.clear()
        _CACHE[key] = (net.to(device).eval(), info)
        return _CACHE[key]


register(ModelSpec(
    name="prism", kind="slide", arch="pathkit:prism_perceiver", kwargs=dict(RELEASED),
    embed_dim=1280, input_size=0, resize=None, pool="latent_cls",
    weights=("hf_hub:paige-ai/Prism/model.safetensors",), n_params=99_037_440,  # counted (released config)
    license="CC BY-NC-ND 4.0 (HF model card; academic non-commercial research only); gated on the HF hub "
            "(institutional e-mail)", gated=True,
    source=("https://huggingface.co/paige-ai/Prism (remote code perceiver.py / modeling_prism.py, config.json), "
            "read in the copy vendored by https://github.com/DIAGNijmegen/unicorn_baseline "
            "(src/unicorn_baseline/vision_language/prism); TRIDENT PRISMSlideEncoder: "
            "slide_representations(x)['image_embedding']"),
    description="PRISM (Paige) slide encoder: Perceiver resampler over Virchow v1 tile features, 1280-d "
                "image embedding (the text decoder BioGPT is not loaded)",
    extra={"tile_model": "virchow", "coords": False, "in_chans": 2560, "mpp": 0.5, "tile_px": 224,
           "call": "pathkit.models.prism.load_prism('prism') -> net; net(features [N, 2560]) -> [1280]",
           # the text decoder (config.json biogpt_config + biogpt_context_dim), loaded by pathkit.models.prism_text
           "tokenizer": "hf_hub:microsoft/biogpt@eb0d815e95434dc9e3b78f464e52b899bee7d923",
           "decoder": {"vocab_size": 42384, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
                       "intermediate_size": 4096, "max_position_embeddings": 1024, "pad_token_id": 1,
                       "bos_token_id": 0, "eos_token_id": 2, "scale_embedding": True, "hidden_act": "gelu",
                       "context_dim": 1280}},
), overwrite=True)
