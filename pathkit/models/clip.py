"""Image-text (CLIP-style) models for zero-shot: CONCH, PLIP, QuiltNet.

Each model is a registry entry (`ModelSpec(kind="clip")`) whose `extra` holds the backend, the architecture
config, the tokenizer and the name of its image tower as a tile encoder. `load_clip(name)` gives a
`ClipModel` with one interface for all three:

    model = load_clip("conch", weights="/path/pytorch_model.bin")
    img = model.encode_image(batch)          # [B, E], projected and L2-normalised
    txt = model.encode_text(["an H&E image of lung adenocarcinoma."])   # [T, E], L2-normalised
    probs = (img @ txt.T * model.logit_scale).softmax(-1)

Facts checked against the models' own code / cards:

- CONCH (github.com/mahmoodlab/CONCH, conch/open_clip_custom/: model_configs/conch_ViT-B-16.json,
  coca_model.py, vision_tower.py, transformer.py, transform.py, custom_tokenizer.py): CoCa with a timm
  ViT-B/16 trunk at 448 px (class token, final LayerNorm, all 785 tokens go to the poolers), a contrastive
  attentional pooler (1 query of width 512, 8 heads, keys/values of width 768, LayerNorms on queries and
  keys), `ln_contrast`, a 512x512 `proj_contrast`; text tower of 12 pre-LN blocks of width 768 (12 heads,
  GELU), 128 positions, vocabulary 32007, a CLS embedding appended after the first 127 tokens (causal mask
  plus a CLS row that sees only non-pad tokens), `ln_final` on the CLS token, then `text_projection`
  768 -> 512; `logit_scale` stored as a log. Preprocessing: resize shorter side to 448 (bicubic), centre
  crop 448, OpenAI CLIP mean/std. Tokenizer: `conch_byte_level_bpe_uncased.json` (HF tokenizers), 127
  tokens with <start_of_text>/<end_of_text>, padded with <pad> (id 0), one more <pad> for the CLS slot.
  The captioning decoder and caption pooler are not needed for embeddings: their keys are skipped (and
  only those) when a published checkpoint is loaded.
  The tokenizer file is not on the HF hub model repo; it ships inside the `conch` package
  (`pip install conch-fork`, a PyPI build of mahmoodlab/CONCH, CC-BY-NC-ND 4.0) or pass `tokenizer=PATH`.
- PLIP (huggingface.co/vinid/plip): OpenAI CLIP ViT-B/32 fine-tuned on OpenPath, transformers
  `CLIPModel` (vision 768-d x 12, patch 32, 224 px; text 512-d x 12, 77 positions; QuickGELU;
  projection 512). Preprocessing: CLIP processor (shorter side 224 bicubic, centre crop, OpenAI mean/std).
  Tokenizer: the CLIP BPE (same vocabulary as open_clip's `bpe_simple_vocab_16e6.txt.gz`, used here).
  The checkpoint's `config.json` (hub repo or next to a local file), when present, overrides the registry
  architecture keys.
- QuiltNet-B-32 (huggingface.co/wisdomik/QuiltNet-B-32): open_clip ViT-B-32 (`open_clip_pytorch_model.bin`);
  the `open_clip_config.json` of the hub repo (or next to a local checkpoint), when present, overrides the
  registry config (e.g. QuickGELU), as open_clip itself does; `ClipModel.info["config"]` says which was used.
  Tokenizer: open_clip's CLIP BPE, 77 tokens.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from . import weights as _weights
from .registry import ModelSpec, get_spec, register, registered
from .tile_encoders import BUILDERS
from ._conch import ConchNet, ConchText, ConchVisual  # noqa: F401
from ._tokenizers import ClipBPETokenizer, ConchTokenizer, conch_tokenizer_path, get_tokenizer  # noqa: F401

__all__ = [
    "ClipModel",
    "build_clip",
    "build_conch_vision",
    "clip_config",
    "conch_tokenizer_path",
    "get_tokenizer",
    "load_clip",
    "register_clip_variant",
]

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

CONCH_CONFIG = {
    "embed_dim": 512,
    "vision": {"image_size": 448, "patch_size": 16, "width": 768, "layers": 12, "heads": 12, "mlp_ratio": 4.0,
               "attn_pooler_heads": 8, "n_queries_contrast": 1},
    "text": {"context_length": 128, "vocab_size": 32007, "width": 768, "heads": 12, "layers": 12, "pad_id": 0},
}
PLIP_CONFIG = {
    "projection_dim": 512,
    "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
               "image_size": 224, "patch_size": 32, "hidden_act": "quick_gelu"},
    "text": {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
             "num_attention_heads": 8, "max_position_embeddings": 77, "hidden_act": "quick_gelu"},
}
QUILTNET_CONFIG = {  # open_clip's ViT-B-32 model config
    "embed_dim": 512, "quick_gelu": False,
    "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
}


# --------------------------------------------------------------------------------------------- registry
def _register_entries():
    clip_entries = [
        ModelSpec(
            name="conch", kind="clip", arch="pathkit:conch", embed_dim=512, input_size=448, resize=448,
            interpolation="bicubic", mean=OPENAI_MEAN, std=OPENAI_STD, pool="head",
            weights=("hf_hub:MahmoodLab/CONCH/pytorch_model.bin",), gated=True,
            license="CC-BY-NC-ND 4.0 (weights gated on the HF hub; tokenizer in the conch package)",
            source="https://github.com/mahmoodlab/CONCH (conch/open_clip_custom)",
            description="CONCH: CoCa ViT-B/16 at 448 px, 512-d image/text embeddings",
            extra={"backend": "conch", "config": CONCH_CONFIG, "tokenizer": "conch", "image_tower": "conch_vision_proj"},
        ),
        ModelSpec(
            name="plip", kind="clip", arch="transformers:CLIPModel", embed_dim=512, input_size=224, resize=224,
            interpolation="bicubic", mean=OPENAI_MEAN, std=OPENAI_STD, pool="head",
            weights=("hf_hub:vinid/plip",), n_params=151_277_313,
            license="non-commercial research (HF card vinid/plip, cross-checked with LazySlide 0.13's registry); not gated",
            source="https://huggingface.co/vinid/plip",
            description="PLIP: CLIP ViT-B/32 fine-tuned on OpenPath (transformers CLIPModel)",
            extra={"backend": "hf_clip", "config": PLIP_CONFIG, "tokenizer": "clip_bpe", "context_length": 77,
                   "image_tower": "plip_vision"},
        ),
        ModelSpec(
            name="quiltnet", kind="clip", arch="open_clip:ViT-B-32", embed_dim=512, input_size=224, resize=224,
            interpolation="bicubic", mean=OPENAI_MEAN, std=OPENAI_STD, pool="head",
            weights=("hf_hub:wisdomik/QuiltNet-B-32/open_clip_pytorch_model.bin",),
            n_params=151_277_313,
            license="see the model card at huggingface.co/wisdomik/QuiltNet-B-32 (not verified here)",
            source="https://huggingface.co/wisdomik/QuiltNet-B-32",
            description="QuiltNet-B-32: open_clip ViT-B/32 trained on Quilt-1M",
            extra={"backend": "open_clip", "config": QUILTNET_CONFIG, "tokenizer": "clip_bpe", "context_length": 77,
                   "image_tower": "quiltnet_vision"},
        ),
    ]
    for spec in clip_entries:
        _register_pair(spec)


def _register_pair(spec: ModelSpec, overwrite: bool = True):
    """Register a clip entry, and its image tower as a tile encoder (`pathkit:<tower>` builder)."""
    register(spec, overwrite=overwrite)
    tower = spec.extra["image_tower"]
    BUILDERS[tower] = _tower_builder(spec.name)
    # conch_vision is helper B's registry entry in zoo.py; add a tower entry only if none exists yet
    existing = {s.name: s for s in registered()}
    if tower not in existing or existing[tower].extra.get("clip") == spec.name:
        register(overwrite=True, spec=ModelSpec(
            name=tower, kind="tile", arch=f"pathkit:{tower}", embed_dim=spec.embed_dim,
            input_size=spec.input_size, resize=spec.resize, interpolation=spec.interpolation,
            mean=spec.mean, std=spec.std, pool="head", weights=spec.weights, license=spec.license,
            gated=spec.gated, source=spec.source,
            description=f"image tower of {spec.name}: projected {spec.embed_dim}-d image embedding "
                        "(the one zero-shot compares with text)",
            extra={"clip": spec.name},
        ))


def register_clip_variant(name: str, base: str, config: dict | None = None, *, input_size: int | None = None,
                          weights: tuple = (), description: str = "") -> ModelSpec:
    """Register a variant of a clip entry: same backend and tokenizer, architecture config overridden
    (e.g. a small random model for tests and offline demos, or a re-trained checkpoint). Its image tower
    is registered as the tile encoder `<name>_vision`. Returns the new clip spec."""
    import dataclasses

    b = get_spec(base, kind="clip")
    cfg = _merge(b.extra["config"], config)
    size = int(input_size or b.input_size)
    dim = int(cfg.get("embed_dim") or cfg.get("projection_dim") or b.embed_dim)
    spec = dataclasses.replace(
        b, name=name, embed_dim=dim, input_size=size, resize=size if b.resize else None, weights=tuple(weights),
        gated=False, license=f"architecture of {base}; weights: those you load (none: random)",
        description=description or f"variant of {base} (config overridden)",
        extra={**b.extra, "config": cfg, "image_tower": f"{name}_vision", "variant_of": base})
    _register_pair(spec)
    return spec


from ._clip_backends import BACKENDS, _merge, _Tower  # noqa: E402,F401


TOWER_OUTPUTS = ("projected", "pre_projection")


def _tower_builder(clip_name: str):
    def build(spec: ModelSpec) -> nn.Module:
        cspec = get_spec(clip_name, kind="clip")
        backend = BACKENDS[cspec.extra["backend"]]
        cfg = _merge(cspec.extra["config"], spec.extra.get("config"))
        output = spec.extra.get("tower_output", "projected")
        if output not in TOWER_OUTPUTS or (output == "pre_projection" and cspec.extra["backend"] != "conch"):
            raise WeightsError(f"model {spec.name!r}: tower_output {output!r} is not available for {clip_name!r} "
                               f"(known: {TOWER_OUTPUTS}; 'pre_projection' is CONCH's)")
        tower = backend.build_tower(cfg)
        tower.backend = backend
        tower.project = output == "projected"
        return tower.eval()

    def spec_for_source(spec: ModelSpec, source) -> ModelSpec:
        """The tower's architecture config for a weights source, found exactly as `load_clip` finds it
        (`clip_config`: the checkpoint's companion config overrides the registry's)."""
        import dataclasses

        if spec.extra.get("config") is not None:  # set explicitly (a variant, a test): used as is
            return spec
        cfg, where = clip_config(get_spec(clip_name, kind="clip"), source)
        return dataclasses.replace(spec, extra={**spec.extra, "config": cfg, "config_source": where})

    build.__name__ = f"build_{clip_name}_vision"
    build.__doc__ = f"Image tower of {clip_name!r}: forward(normalised batch) -> image embedding."
    build.spec_for_source = spec_for_source
    return build


def build_conch_vision(spec: ModelSpec) -> nn.Module:
    """CONCH's image tower for `pathkit:conch_vision`: forward(normalised [B,3,448,448]) -> [B,512], the
    pooled embedding before `proj_contrast` (``extra["tower_output"] = "pre_projection"``, CONCH's
    `encode_image(proj_contrast=False, normalize=False)`), or the projected one (``"projected"``, the
    `conch_vision_proj` entry that zero-shot uses). `load_state_dict` accepts the full CONCH checkpoint."""
    return _tower_builder("conch")(spec)


build_conch_vision.spec_for_source = _tower_builder("conch").spec_for_source


# ------------------------------------------------------------------------------------------ ClipModel
class ClipModel(nn.Module):
    """An image-text model with one interface (see the module docstring).

    spec: the registry entry (input_size, mean/std, resize, interpolation: the image preprocessing).
    info: weights provenance {"source", "sha256"}.
    """

    def __init__(self, net: nn.Module, spec: ModelSpec, tokenizer, info: dict, config: dict):
        super().__init__()
        self.net = net
        self.spec = spec
        self.tokenizer = tokenizer
        self.info = info
        self.config = config
        self.backend = BACKENDS[spec.extra["backend"]]

    @property
    def embed_dim(self) -> int:
        return int(self.config.get("embed_dim") or self.config.get("projection_dim") or self.spec.embed_dim)

    @property
    def logit_scale(self) -> float:
        return self.backend.logit_scale(self.net)

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def project_image(self, features: torch.Tensor) -> torch.Tensor:
        """Tile features of the pre-projection tower (`conch_vision`) -> the L2-normalised embeddings that
        `encode_image` gives (CONCH: ``features @ proj_contrast``). Other backends' towers are projected."""
        if self.spec.extra["backend"] != "conch":
            raise ValueError(f"{self.spec.name}: its image tower is already projected; use its features as they are")
        w = self.net.visual.proj_contrast
        return F.normalize(torch.as_tensor(features, dtype=w.dtype, device=w.device) @ w, dim=-1)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised image batch [B, 3, S, S] -> projected, L2-normalised embeddings [B, E]."""
        return F.normalize(self.backend.image(self.net, x.to(self.device)), dim=-1)

    def tokenize(self, texts) -> torch.Tensor:
        return self.tokenizer([texts] if isinstance(texts, str) else list(texts))

    def encode_text(self, texts, batch_size: int = 64) -> torch.Tensor:
        """Prompts -> L2-normalised text embeddings [T, E]."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = [self.backend.text(self.net, self.tokenize(texts[i:i + batch_size]).to(self.device))
               for i in range(0, len(texts), batch_size)]
        return F.normalize(torch.cat(out), dim=-1)


_HF_ARCH_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                 "patch_size", "hidden_act", "layer_norm_eps", "vocab_size", "max_position_embeddings")


def _companion_config(backend: str, source: str) -> tuple[dict | None, str | None]:
    """The architecture config that ships with a checkpoint, as the model's own library reads it:
    open_clip_config.json (open_clip) or config.json (transformers), in the same hub repo or next to a local
    file. Returns (config in this module's format, where) or (None, None)."""
    fname = {"open_clip": "open_clip_config.json", "hf_clip": "config.json"}.get(backend)
    if fname is None or source == "random":
        return None, None
    if source.startswith("hf_hub:"):
        repo = "/".join(source[len("hf_hub:"):].split("/")[:2])
        try:
            path = _weights.resolve(f"hf_hub:{repo}/{fname}")
        except (WeightsError, OSError, ValueError):  # offline / not cached / absent: registry config used
            return None, None
    else:
        path = Path(source).expanduser().parent / fname
        if not path.is_file():
            return None, None
    raw = json.loads(Path(path).read_text())
    if backend == "open_clip":
        return raw.get("model_cfg", raw), str(path)
    if "vision_config" not in raw and "text_config" not in raw:
        return None, None
    cfg = {"vision": {k: v for k, v in (raw.get("vision_config") or {}).items() if k in _HF_ARCH_KEYS},
           "text": {k: v for k, v in (raw.get("text_config") or {}).items() if k in _HF_ARCH_KEYS}}
    if "projection_dim" in raw:
        cfg["projection_dim"] = raw["projection_dim"]
    return cfg, str(path)


def clip_config(spec: ModelSpec, source, config: dict | None = None) -> tuple[dict, str]:
    """The architecture config of a clip entry for a weights source: `config` when given, else the
    checkpoint's companion config (open_clip_config.json / config.json, as open_clip and transformers read
    it) when there is one, else the registry's. The one code path of `load_clip` and the image-tower tile
    encoders. Returns (full config, "argument" | "registry" | path of the companion file)."""
    where = "registry" if config is None else "argument"
    if config is None:
        found, at = _companion_config(spec.extra["backend"], str(source))
        if found is not None:
            config, where = found, at
    return _merge(spec.extra["config"], config), where


def build_clip(model: str | ModelSpec, config: dict | None = None) -> tuple[nn.Module, dict]:
    """The network of a clip entry with random weights; `config` overrides parts of the entry's config
    (e.g. fewer layers for tests). Returns (net, resolved config)."""
    spec = get_spec(model, kind="clip")
    cfg = _merge(spec.extra["config"], config)
    return BACKENDS[spec.extra["backend"]].build(cfg).eval(), cfg


def load_clip(model: str | ModelSpec, weights=None, device="cpu", *, config: dict | None = None,
              tokenizer=None) -> ClipModel:
    """Build an image-text model and load its weights.

    weights: None -> the entry's published source (HF hub, may be gated: log in first); "random" -> random
    init with a loud warning; a local path or "hf_hub:<repo>[/<file>]" -> that checkpoint, loaded strictly
    (keys pathkit does not use, e.g. CONCH's captioning decoder, are dropped by name first).
    config: overrides of the architecture config (for small test models).
    tokenizer: path of a tokenizer file (CONCH) when it is not found in an installed package.
    """
    spec = get_spec(model, kind="clip")
    backend = BACKENDS[spec.extra["backend"]]
    source = weights if weights is not None else (spec.weights[0] if spec.weights else "random")
    cfg, config_source = clip_config(spec, source, config)
    net, cfg = build_clip(spec, cfg)
    info = {"source": str(source), "sha256": None, "config": config_source}
    if str(source) == "random":
        warnings.warn(
            f"image-text model {spec.name!r} has RANDOM weights: its similarities carry no biological meaning. "
            "Pass weights=PATH or weights='hf_hub:<repo>' for real zero-shot results.", UserWarning,
            stacklevel=_user_stacklevel())
    else:
        path = _weights.resolve(source)
        sd = backend.clean_state_dict(_weights.read_state_dict(path))
        missing, unexpected = net.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise WeightsError(
                f"weights {path} do not fit {spec.name} ({spec.arch}): missing keys {list(missing)[:10]}, "
                f"unexpected keys {list(unexpected)[:10]}")
        info["sha256"] = _weights.sha256_file(path)
    tok_kwargs = {"context_length": spec.extra.get("context_length") or cfg.get("text", {}).get("context_length")}
    tok = get_tokenizer(spec.extra["tokenizer"], str(tokenizer) if tokenizer else None, **tok_kwargs)
    return ClipModel(net.to(device).eval(), spec, tok, info, cfg)


_register_entries()
BUILDERS["conch_vision"] = build_conch_vision


from .._warn import user_stacklevel as _user_stacklevel  # last: touches no import order (issue 29)
