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

import copy
import importlib.util
import json
import math
import os
import warnings
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from . import weights as _weights
from .registry import ModelSpec, get_spec, register, registered
from .tile_encoders import BUILDERS

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
            license="see the model card at huggingface.co/vinid/plip (not verified here)",
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


# ------------------------------------------------------------------------------------------- backends
def _merge(base: dict, override: dict | None) -> dict:
    out = copy.deepcopy(base)
    for k, v in (override or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _Backend:
    """How one family of models is built, run and loaded. Subclasses are data + a few lines each."""

    ignored_prefixes: tuple = ()
    ignored_suffixes: tuple = ()

    def clean_state_dict(self, sd: dict) -> dict:
        """Published checkpoint -> the keys pathkit's module has (drop `module.` and unused parts)."""
        if sd and all(k.startswith("module.") for k in sd):
            sd = {k[len("module."):]: v for k, v in sd.items()}
        return {k: v for k, v in sd.items()
                if not k.startswith(self.ignored_prefixes) and not k.endswith(self.ignored_suffixes)}


class _ConchBackend(_Backend):
    ignored_prefixes = ConchNet.IGNORED_PREFIXES
    tower_prefixes = ("visual.",)

    def build(self, cfg):
        return ConchNet(cfg)

    def image(self, net, x):
        return net.visual(x)

    def text(self, net, tokens):
        return net.text(tokens)

    def logit_scale(self, net):
        return float(net.logit_scale.detach().exp())

    def build_tower(self, cfg):
        tower = _Tower()
        tower.visual = ConchVisual(cfg)
        return tower

    def tower_forward(self, tower, x):
        return tower.visual(x, project=tower.project)


def _trim_after_eot(tokens: torch.Tensor) -> torch.Tensor:
    """CLIP BPE ids: drop the columns after the last <end_of_text> of the batch. The text towers are causal
    and read the <end_of_text> position, so those padding columns cannot change the output."""
    return tokens[:, : int(tokens.argmax(dim=-1).max()) + 1]


class _HFClipBackend(_Backend):
    ignored_suffixes = ("position_ids",)  # older transformers saved these buffers
    tower_prefixes = ("vision_model.", "visual_projection.")

    @staticmethod
    def _config(cfg):
        from transformers import CLIPConfig

        return CLIPConfig(text_config=cfg["text"], vision_config=cfg["vision"], projection_dim=cfg["projection_dim"])

    def build(self, cfg):
        from transformers import CLIPModel

        return CLIPModel(self._config(cfg)).eval()

    def image(self, net, x):
        return net.visual_projection(net.vision_model(pixel_values=x).pooler_output)

    def text(self, net, tokens):
        tokens = _trim_after_eot(tokens)
        eot = tokens.argmax(dim=-1)  # CLIP BPE: <end_of_text> has the highest id
        mask = (torch.arange(tokens.shape[1], device=tokens.device)[None] <= eot[:, None]).long()
        out = net.text_model(input_ids=tokens, attention_mask=mask).last_hidden_state
        return net.text_projection(out[torch.arange(tokens.shape[0], device=tokens.device), eot])

    def logit_scale(self, net):
        return float(net.logit_scale.detach().exp())

    def build_tower(self, cfg):
        from transformers import CLIPVisionModelWithProjection

        vcfg = self._config(cfg).vision_config
        vcfg.projection_dim = cfg["projection_dim"]
        inner = CLIPVisionModelWithProjection(vcfg)
        tower = _Tower()
        tower.vision_model, tower.visual_projection = inner.vision_model, inner.visual_projection
        return tower

    def tower_forward(self, tower, x):
        return tower.visual_projection(tower.vision_model(pixel_values=x).pooler_output)


class _OpenClipBackend(_Backend):
    ignored_suffixes = ("attn_mask",)
    tower_prefixes = ("visual.",)

    @staticmethod
    def _cfgs(cfg):
        from open_clip.model import CLIPTextCfg, CLIPVisionCfg

        return CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"])

    def build(self, cfg):
        from open_clip.model import CLIP

        vcfg, tcfg = self._cfgs(cfg)
        return CLIP(embed_dim=cfg["embed_dim"], vision_cfg=vcfg, text_cfg=tcfg, quick_gelu=cfg.get("quick_gelu", False))

    def image(self, net, x):
        return net.encode_image(x, normalize=False)

    def text(self, net, tokens):
        return net.encode_text(tokens, normalize=False)  # open_clip needs the full context length

    def logit_scale(self, net):
        return float(net.logit_scale.detach().exp())

    def build_tower(self, cfg):
        from open_clip.model import _build_vision_tower

        vcfg, _ = self._cfgs(cfg)
        tower = _Tower()
        tower.visual = _build_vision_tower(cfg["embed_dim"], vcfg, quick_gelu=cfg.get("quick_gelu", False))
        return tower

    def tower_forward(self, tower, x):
        return tower.visual(x)


BACKENDS = {"conch": _ConchBackend(), "hf_clip": _HFClipBackend(), "open_clip": _OpenClipBackend()}


class _Tower(nn.Module):
    """An image tower used as a tile encoder. Its parameter names are those of the full image-text model,
    so `load_state_dict` takes a whole published checkpoint and keeps the image-tower part.
    `project=False` (CONCH only) returns the pooled embedding before the contrastive projection."""

    backend: _Backend = None
    project: bool = True

    def forward(self, x):
        return self.backend.tower_forward(self, x)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        sd = self.backend.clean_state_dict(dict(state_dict))
        sd = {k: v for k, v in sd.items() if k.startswith(self.backend.tower_prefixes)}
        return super().load_state_dict(sd, strict=strict, assign=assign)


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


# ----------------------------------------------------------------------------------------- tokenizers
def conch_tokenizer_path(path=None) -> Path:
    """Where CONCH's tokenizer file is: `path`, $PATHKIT_CONCH_TOKENIZER, or the installed `conch` package."""
    candidates = [path, os.environ.get("PATHKIT_CONCH_TOKENIZER")]
    spec = importlib.util.find_spec("conch")
    for loc in (spec.submodule_search_locations or []) if spec else []:
        candidates.append(Path(loc) / "open_clip_custom" / "tokenizers" / "conch_byte_level_bpe_uncased.json")
    for c in candidates:
        if c and Path(c).is_file():
            return Path(c)
    raise WeightsError(
        "CONCH's tokenizer (conch_byte_level_bpe_uncased.json) was not found. It ships in the `conch` package: "
        "`pip install conch-fork` (or mahmoodlab/CONCH from GitHub), or pass tokenizer=PATH / set "
        "PATHKIT_CONCH_TOKENIZER.")


class ConchTokenizer:
    """CONCH's byte-level BPE: 127 tokens (<start_of_text> ... <end_of_text>, <pad> = 0) + one <pad> for CLS.

    Same settings as CONCH's `custom_tokenizer.tokenize`, called through the tokenizer itself because
    `batch_encode_plus`, which CONCH's function uses, is gone from transformers 5.
    """

    def __init__(self, path=None, context_length: int = 128):
        from transformers import PreTrainedTokenizerFast

        self.path = conch_tokenizer_path(path)
        self.context_length = context_length
        self.tok = PreTrainedTokenizerFast(tokenizer_file=str(self.path), bos_token="<start_of_text>",
                                           eos_token="<end_of_text>", pad_token="<pad>")

    def __call__(self, texts: list[str]) -> torch.Tensor:
        enc = self.tok(list(texts), max_length=self.context_length - 1, add_special_tokens=True,
                       return_token_type_ids=False, truncation=True, padding="max_length", return_tensors="pt")
        return F.pad(enc["input_ids"], (0, 1), value=self.tok.pad_token_id)


class ClipBPETokenizer:
    """The OpenAI CLIP BPE shipped with open_clip (bpe_simple_vocab_16e6): <start_of_text>=49406,
    <end_of_text>=49407, zero padding, truncated to `context_length` keeping <end_of_text>."""

    def __init__(self, context_length: int = 77):
        from open_clip.tokenizer import SimpleTokenizer

        self.context_length = context_length
        self.tok = SimpleTokenizer(context_length=context_length)

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.tok(list(texts), context_length=self.context_length)


@lru_cache(maxsize=8)
def get_tokenizer(kind: str, path: str | None = None, context_length: int | None = None):
    """The real tokenizer of a clip entry ("conch" or "clip_bpe"), from files shipped in installed packages."""
    if kind == "conch":
        return ConchTokenizer(path, context_length or 128)
    if kind == "clip_bpe":
        return ClipBPETokenizer(context_length or 77)
    raise ValueError(f"unknown tokenizer {kind!r}; known: 'conch', 'clip_bpe'")


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
            "Pass weights=PATH or weights='hf_hub:<repo>' for real zero-shot results.", UserWarning, stacklevel=2)
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
