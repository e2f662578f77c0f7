"""The text half of TITAN (Mahmood Lab): its CoCa text tower and tokenizer, for slide-level zero-shot and
text search on slide embeddings.

TITAN's HF remote code (huggingface.co/MahmoodLab/TITAN, ``modeling_titan.py``) holds, beside the slide
vision encoder, ``text_encoder = build_text_tower(config.text_config)``: CONCH's CoCa text transformer (12
pre-LN blocks of width 768, 12 heads, 128 positions, vocabulary 32007, a CLS embedding appended after the
first 127 tokens, ``ln_final`` on the CLS output, ``text_projection`` 768 -> 768 without bias). Its
``encode_text`` drops the last token slot (room for the CLS), runs the tower and L2-normalises;
``zero_shot_classifier`` averages the normalised prompt embeddings over class names x templates and
re-normalises; ``zero_shot`` maps the slide embedding through the vision tower's ``proj`` (768 x 768),
L2-normalises it and takes ``softmax(slide @ classifier)`` -- no temperature. The tokenizer is CONCH's
byte-level BPE (``conch_byte_level_bpe_uncased.json``; the HF repo's ``tokenizer.json``), 127 tokens with
<start_of_text> / <end_of_text> and <pad> (id 0), one more <pad> for the CLS slot.

This module rebuilds the tower with pathkit's :class:`~pathkit.models._conch.ConchText` (same parameter
names as the authors': ``token_embedding``, ``positional_embedding``, ``cls_emb``, ``transformer.resblocks.N``,
``ln_final``, ``text_projection``) and reads ``text_encoder.*`` and ``vision_encoder.proj`` from the
released ``model.safetensors``; checked against the authors' code in tests/test_parity_slide_text.py.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import WeightsError
from .registry import ModelSpec, get_spec, register

__all__ = ["SlideTextModel", "load_slide_text", "save_random_weights"]

# the TitanTextConfig fields pathkit reads (the registry's extra["text"], or config.json's text_config)
TEXT_KEYS = ("embed_dim", "context_length", "vocab_size", "width", "heads", "layers", "pad_id")
TEXT_PREFIX, PROJ_KEY = "text_encoder.", "vision_encoder.proj"

_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


class SlideTextModel:
    """A slide model's text half: prompts -> embeddings in the space of the projected slide embeddings.

    ``encode_text(texts)`` -> [T, E] L2-normalised (the authors' ``encode_text(normalize=True)``);
    ``project(slide_embeddings)`` -> [S, E] L2-normalised (``slide @ vision_encoder.proj``, as ``zero_shot``);
    ``logit_scale``: the factor before the softmax of the authors' zero-shot (1.0 for TITAN).
    """

    def __init__(self, spec: ModelSpec, text, proj: torch.Tensor, tokenizer, info: dict, logit_scale: float = 1.0):
        self.spec, self.text, self.proj, self.tokenizer, self.info = spec, text, proj, tokenizer, info
        self.logit_scale = float(logit_scale)
        self.embed_dim = int(proj.shape[1])

    @property
    def name(self) -> str:
        return self.spec.name

    def check_prompts(self, texts) -> list[str]:
        """Refuse empty prompts and prompts longer than the tokenizer's 127 tokens (the authors' code would
        cut them silently, so the end of the sentence would not count)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError(f"{self.name}: no prompt given")
        empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if empty:
            raise ValueError(f"{self.name}: prompt(s) {empty} are empty or not strings ({[texts[i] for i in empty]!r})")
        limit = self.tokenizer.context_length - 1
        lengths = [len(ids) for ids in self.tokenizer.tok(texts, add_special_tokens=True)["input_ids"]]
        long = [(t, n) for t, n in zip(texts, lengths) if n > limit]
        if long:
            t, n = long[0]
            raise ValueError(f"{self.name}: prompt {t[:60]!r}{'...' if len(t) > 60 else ''} has {n} tokens, more "
                             f"than the {limit} of the text tower ({len(long)} prompt(s) too long): shorten it")
        return texts

    def tokenize(self, texts) -> torch.Tensor:
        return self.tokenizer(self.check_prompts(texts))

    @torch.inference_mode()
    def encode_text(self, texts, batch_size: int = 64) -> torch.Tensor:
        texts = self.check_prompts(texts)
        dev = self.proj.device
        out = [self.text(self.tokenizer(texts[i:i + batch_size]).to(dev)) for i in range(0, len(texts), batch_size)]
        return F.normalize(torch.cat(out).float(), dim=-1)

    @torch.inference_mode()
    def project(self, slide_embeddings) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(slide_embeddings, dtype=np.float32), device=self.proj.device)
        if x.ndim != 2 or x.shape[1] != self.proj.shape[0]:
            raise ValueError(f"{self.name}: slide embeddings must be [n_slides, {self.proj.shape[0]}] (the "
                             f"{self.name} slide encoder's output); got shape {tuple(x.shape)}")
        return F.normalize(x @ self.proj.float(), dim=-1)


# ---------------------------------------------------------------------------------------------- loading
def _text_config(spec: ModelSpec, companion: dict | None = None) -> dict:
    cfg = (spec.extra or {}).get("text")
    if not cfg:
        have = [s.name for s in _text_specs()]
        raise ValueError(f"{spec.name!r} has no text half in pathkit; slide models with one: {have}")
    return {**cfg, **(companion or {})}


def _text_specs():
    from .registry import registered

    return [s for s in registered("slide") if (s.extra or {}).get("text")]


def _build(cfg: dict):
    from ._conch import ConchText

    net = ConchText({"embed_dim": cfg["embed_dim"], "text": {k: cfg[k] for k in TEXT_KEYS[1:]}})
    return net.eval()


def _companion(path) -> dict:
    """text_config of the HF config.json beside the weights (width / heads / layers / ...), when present."""
    from ._slide_loading import companion_config

    raw, _ = companion_config(path)
    txt = raw.get("text_config") or {}
    return {k: txt[k] for k in TEXT_KEYS if k in txt}


def _split(sd: dict, source, net) -> tuple[dict, torch.Tensor]:
    """The tower's tensors (``text_encoder.`` prefix removed) and ``vision_encoder.proj``; a file without the
    text half is refused, naming the tensors it lacks."""
    text = {k[len(TEXT_PREFIX):]: v for k, v in sd.items() if k.startswith(TEXT_PREFIX)}
    want = list(net.state_dict())
    missing = [TEXT_PREFIX + k for k in want if k not in text] + ([PROJ_KEY] if PROJ_KEY not in sd else [])
    if missing:
        shown = ", ".join(missing[:6]) + (f", ... ({len(missing)} in all)" if len(missing) > 6 else "")
        raise WeightsError(
            f"weights {source} lack the text half of TITAN: missing {shown}. The released "
            "MahmoodLab/TITAN model.safetensors holds text_encoder.* and vision_encoder.proj; a file with the "
            "slide vision encoder alone (e.g. saved from pathkit's TitanSlideEncoder) cannot do zero-shot or "
            "text search: pass the full checkpoint as weights=")
    extra = sorted(set(text) - set(want))
    if extra:
        raise WeightsError(f"weights {source}: unexpected text-encoder tensors {extra[:6]} for {net.__class__.__name__} "
                           "(another text tower?)")
    return text, sd[PROJ_KEY]


def load_slide_text(model="titan", weights=None, device="cpu", tokenizer=None) -> SlideTextModel:
    """A slide model's text half -> :class:`SlideTextModel` (cached: one per process).

    model
        A slide registry entry with a text half (``"titan"``, ``"titan_small_demo"``).
    weights
        None (the entry's hub source: MahmoodLab/TITAN ``model.safetensors``, gated), a local file or
        ``"hf_hub:..."`` (a ``config.json`` beside it with a ``text_config`` sets the sizes), a state dict with
        the authors' key names (``text_encoder.*``, ``vision_encoder.proj``), or ``"random"`` (loud warning).
    tokenizer
        CONCH's tokenizer file (default: the one shipped in the ``conch`` package, ``pip install
        "pathkit[text]"``; or $PATHKIT_CONCH_TOKENIZER).
    """
    from ._tokenizers import ConchTokenizer
    from .weights import read_state_dict, resolve, sha256_file

    spec = get_spec(model, kind="slide")
    cfg = _text_config(spec)
    info = {"name": spec.name, "weights": None, "weights_sha256": None, "config": "registry"}
    if isinstance(weights, str) and weights == "random":
        warnings.warn(f"{spec.name}: text encoder with RANDOM weights: zero-shot and search results are "
                      "meaningless except for testing", UserWarning, stacklevel=2)
        net = _build(cfg)
        proj = torch.randn(spec.embed_dim, cfg["embed_dim"]) / spec.embed_dim ** 0.5
        info["weights"] = "random"
        tok = ConchTokenizer(tokenizer, cfg["context_length"])
        return SlideTextModel(spec, net.to(device), proj.to(device), tok, info)
    source = weights if weights is not None else spec.weights[0] if spec.weights else None
    if source is None:
        raise WeightsError(f"{spec.name}: no weights source in the registry; pass weights=PATH")
    if isinstance(source, dict):
        key = None
    else:
        local = Path(str(source)).expanduser()
        stamp = (local.stat().st_mtime_ns, local.stat().st_size) if local.is_file() else None
        key = (spec.name, repr(cfg), str(source), stamp, str(device), str(tokenizer))
    with _CACHE_LOCK:
        if key is not None and key in _CACHE:
            return _CACHE[key]
        if isinstance(source, dict):
            sd, path, extra = source, None, {}
            info["weights"] = "state dict passed by the user"
        else:
            path = resolve(source)
            extra = _companion(path)
            sd = read_state_dict(path)
            info.update(weights=str(source), weights_sha256=sha256_file(path),
                        config=str(Path(path).parent / "config.json") if extra else "registry")
        cfg = _text_config(spec, extra)
        net = _build(cfg)
        text, proj = _split(sd, "(a state dict)" if path is None else path, net)
        try:
            net.load_state_dict(text, strict=True)
        except RuntimeError as e:
            raise WeightsError(f"weights {source}: the text encoder tensors do not fit {spec.name}'s text tower "
                               f"({cfg}): {e}") from e
        if tuple(proj.shape) != (spec.embed_dim, cfg["embed_dim"]):
            raise WeightsError(f"weights {source}: {PROJ_KEY} is {tuple(proj.shape)}, expected "
                               f"({spec.embed_dim}, {cfg['embed_dim']}): slide embedding -> text space")
        out = SlideTextModel(spec, net.to(device), proj.float().to(device),
                             ConchTokenizer(tokenizer, cfg["context_length"]), info)
        if key is not None:
            _CACHE.clear()
            _CACHE[key] = out
        return out


def save_random_weights(model, path, seed: int = 0) -> Path:
    """Write a random checkpoint of a slide entry with its text half, under the authors' key names
    (``vision_encoder.*`` of :class:`~pathkit.models.titan.TitanSlideEncoder`, ``text_encoder.*``,
    ``vision_encoder.proj``): what the demo entries (``titan_small_demo``) load, offline. Random weights:
    the numbers mean nothing."""
    from safetensors.torch import save_file

    from .titan import TitanSlideEncoder

    spec = get_spec(model, kind="slide")
    cfg = _text_config(spec)
    torch.manual_seed(seed)
    vis = TitanSlideEncoder(**spec.kwargs)
    with torch.no_grad():
        vis.proj.copy_(torch.randn_like(vis.proj) / vis.proj.shape[0] ** 0.5)
        vis.cls_token.normal_(std=0.02)
        vis.pooler.query.normal_()
    sd = {}
    for k, v in vis.state_dict().items():
        k = k.replace("blocks.", "blocks.modules_list.", 1) if k.startswith("blocks.") else k
        k = "attn_pool_contrastive." + k[len("pooler."):] if k.startswith("pooler.") else k
        sd["vision_encoder." + k] = v
    sd.update({TEXT_PREFIX + k: v for k, v in _build(cfg).state_dict().items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


register(ModelSpec(
    name="titan_small_demo", kind="slide", arch="pathkit:titan",
    kwargs={"in_chans": 32, "embed_dim": 48, "depth": 2, "heads": 4, "mlp_ratio": 2.0, "pool_heads": 4},
    embed_dim=48, input_size=0, resize=None, pool="attention", weights=(), key_map="titan_vision",
    license="test entry: random weights made locally (save_random_weights)",
    source="pathkit: TITAN's architecture reduced (vision 2 x 48-d, text 2 x 48-d), for offline demonstrations",
    description="A small TITAN with RANDOM weights (pathkit.models.slide_text.save_random_weights): the real "
                "pipeline (grid, ALiBi, tokenizer, text tower, prompts) but meaningless predictions",
    extra={"tile_model": "conch_v15", "in_chans": 32, "coords": True, "tile_px": 512, "mpp": 0.5,
           "templates": "titan",
           "text": {"embed_dim": 48, "context_length": 128, "vocab_size": 32007, "width": 48, "heads": 4,
                    "layers": 2, "pad_id": 0}},
), overwrite=True)
