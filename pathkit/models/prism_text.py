"""PRISM's text decoder (Paige; Shaikovski et al. 2024): BioGPT with cross-attention to the slide's image
latents, for slide captions ("reports").

The authors' remote code (paige-ai/Prism ``biogpt.py``, ``biogpt_hf.py``; read in the copy vendored by
github.com/DIAGNijmegen/unicorn_baseline, src/unicorn_baseline/vision_language/prism) is Hugging Face's BioGPT
(``BioGptForCausalLM``: 24 pre-LN layers of width 1024, 16 heads, GELU MLP 4096, learned positions offset by 2,
embeddings scaled by sqrt(1024), vocabulary 42384) in which each layer of the second half
(``i >= num_hidden_layers // 2``) gets, between its self-attention and its MLP, a pre-LN cross-attention to
the 512 image latents of the Perceiver (1280-d): ``x_attn_layer_norm`` and ``x_attn`` (q / k / v / out
projections with biases, keys and values from the latents, no mask), residual. ``Prism.generate`` starts from
``[[</s>]]`` (BioGPT uses its EOS as BOS) and calls HF ``generate`` with ``max_length=100``,
``do_sample=False``, ``num_beams=1``: greedy decoding. The tokenizer is BioGPT's (``BioGptTokenizer``,
Moses + BPE; ``microsoft/biogpt`` at revision eb0d815e95434dc9e3b78f464e52b899bee7d923).

pathkit builds ``transformers.BioGptForCausalLM`` (no remote code) and adds the cross-attention modules under
the authors' names (``biogpt.layers.N.x_attn.*``, ``biogpt.layers.N.x_attn_layer_norm.*``), so that the
``text_decoder.model.*`` tensors of the released ``model.safetensors`` load strictly. The cross-attention is
spliced in by hooks: the layer's input is kept, and the self-attention output ``a`` becomes
``a + x_attn(x_attn_layer_norm(input + a), latents)``, which makes the layer's residual sum exactly the
authors' ``input + a + x_attn(...)``. Checked against the authors' code in tests/test_parity_slide_text.py.
"""
from __future__ import annotations

import threading
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import WeightsError
from .registry import ModelSpec, get_spec, register

__all__ = ["PrismDecoder", "load_prism_decoder", "load_tokenizer", "save_demo_tokenizer", "save_random_weights",
           "tokenize"]

PREFIX = "text_decoder.model."
BIOGPT_REVISION = "eb0d815e95434dc9e3b78f464e52b899bee7d923"  # the tokenizer the authors pin
_CACHE: dict = {}
_CACHE_LOCK = threading.Lock()


def _need_transformers():
    try:
        import sacremoses  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(f"PRISM's text decoder needs transformers and sacremoses: pip install \"pathkit[text]\" "
                          f"({e})") from e


class _CrossAttention(nn.Module):
    """Text tokens (queries) attend to the image latents (keys / values); BioGptAttention's projections."""

    def __init__(self, dim: int, heads: int, context_dim: int):
        super().__init__()
        self.heads = heads
        self.k_proj = nn.Linear(context_dim, dim)
        self.v_proj = nn.Linear(context_dim, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def keys_values(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, m, _ = ctx.shape
        return (self.k_proj(ctx).view(b, m, self.heads, -1).transpose(1, 2),
                self.v_proj(ctx).view(b, m, self.heads, -1).transpose(1, 2))

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        b, n, d = x.shape
        q = self.q_proj(x).view(b, n, self.heads, -1).transpose(1, 2)
        a = F.scaled_dot_product_attention(q, kv[0], kv[1])
        return self.out_proj(a.transpose(1, 2).reshape(b, n, d))


class PrismDecoder(nn.Module):
    """``transformers.BioGptForCausalLM`` + PRISM's cross-attention layers; ``generate(latents)`` -> token ids.

    ``lm`` is the transformers model (its state dict names are the authors' without ``text_decoder.model.``).
    """

    def __init__(self, config: dict):
        super().__init__()
        _need_transformers()
        from transformers import BioGptConfig, BioGptForCausalLM

        cfg = dict(config)
        self.context_dim = int(cfg.pop("context_dim"))
        self.lm = BioGptForCausalLM(BioGptConfig(**cfg)).eval()
        self.first_x_attn_layer = self.lm.config.num_hidden_layers // 2
        self._ctx: torch.Tensor | None = None
        self._kv: dict = {}
        self._lock = threading.Lock()
        for layer in self.lm.biogpt.layers[self.first_x_attn_layer:]:
            layer.x_attn_layer_norm = nn.LayerNorm(self.lm.config.hidden_size)
            layer.x_attn = _CrossAttention(self.lm.config.hidden_size, self.lm.config.num_attention_heads,
                                           self.context_dim)
            layer.register_forward_pre_hook(self._keep_input, with_kwargs=True)
            layer.self_attn.register_forward_hook(self._cross_attend)
            layer.self_attn._pk_layer = [layer]  # a list: not registered as a submodule (no state-dict loop)

    @staticmethod
    def _keep_input(layer, args, kwargs):
        layer._pk_input = args[0] if args else kwargs["hidden_states"]

    def _cross_attend(self, attn, args, output):
        layer = attn._pk_layer[0]
        ctx = self._ctx
        if ctx is None:
            raise RuntimeError("PrismDecoder: the image latents are missing; call generate(latents) / "
                               "forward(ids, latents)")
        a = output[0] if isinstance(output, tuple) else output
        # the latents' keys / values are the same at every decoding step: projected once per call (the
        # authors recompute them each step; 512 latents x 12 layers, most of a step's work)
        kv = self._kv.get(id(layer))
        if kv is None:
            kv = self._kv[id(layer)] = layer.x_attn.keys_values(ctx.to(a.dtype))
        if kv[0].shape[0] != a.shape[0]:  # beam search runs batch x num_beams rows, each slide's beams together
            kv = tuple(t.repeat_interleave(a.shape[0] // t.shape[0], dim=0) for t in kv)
        h = layer._pk_input + a
        a = a + layer.x_attn(layer.x_attn_layer_norm(h), kv)
        layer._pk_input = None
        return (a, *output[1:]) if isinstance(output, tuple) else a

    def _with_latents(self, latents, fn):
        with self._lock:
            self._ctx, self._kv = latents, {}
            try:
                return fn()
            finally:
                self._ctx, self._kv = None, {}

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits [B, L, vocab] of `input_ids` [B, L] given the image latents [B, M, context_dim]."""
        return self._with_latents(latents, lambda: self.lm(input_ids=input_ids).logits)

    @torch.inference_mode()
    def generate(self, latents: torch.Tensor, input_ids: torch.Tensor | None = None, max_new_tokens: int = 99,
                 num_beams: int = 1, do_sample: bool = False, **kwargs) -> torch.LongTensor:
        """Token ids [B, L] (the start token included), as ``Prism.generate``: from ``[[</s>]]`` unless
        `input_ids` are given; defaults = the authors' (greedy, ``max_length=100`` = 99 new tokens)."""
        cfg = self.lm.config
        if input_ids is None:
            input_ids = torch.full((latents.shape[0], 1), cfg.eos_token_id, dtype=torch.long, device=latents.device)
        return self._with_latents(latents, lambda: self.lm.generate(
            inputs=input_ids, attention_mask=torch.ones_like(input_ids), max_new_tokens=int(max_new_tokens),
            num_beams=int(num_beams), do_sample=bool(do_sample), pad_token_id=cfg.pad_token_id,
            eos_token_id=cfg.eos_token_id, bos_token_id=cfg.bos_token_id, **kwargs))


# ---------------------------------------------------------------------------------------------- loading
def _decoder_config(spec: ModelSpec) -> dict:
    cfg = (spec.extra or {}).get("decoder")
    if not cfg:
        raise ValueError(f"{spec.name!r} has no text decoder in pathkit (captions: 'prism', 'prism_small_demo')")
    return dict(cfg)


def load_tokenizer(spec: ModelSpec, tokenizer=None):
    """BioGPT's tokenizer: a folder with vocab.json + merges.txt, or the entry's hub source."""
    _need_transformers()
    from transformers import BioGptTokenizer

    source = tokenizer or (spec.extra or {}).get("tokenizer")
    if source is None:
        raise WeightsError(f"{spec.name}: no tokenizer; pass tokenizer=FOLDER (vocab.json and merges.txt)")
    source = str(source)
    if source.startswith("hf_hub:"):
        repo, _, rev = source[len("hf_hub:"):].partition("@")
        from .weights import offline

        return BioGptTokenizer.from_pretrained(repo, revision=rev or None, local_files_only=offline())
    d = Path(source).expanduser()
    if not (d / "vocab.json").is_file() or not (d / "merges.txt").is_file():
        raise WeightsError(f"tokenizer folder {d} must hold BioGPT's vocab.json and merges.txt")
    return BioGptTokenizer(str(d / "vocab.json"), str(d / "merges.txt"))


def save_demo_tokenizer(folder) -> Path:
    """Write a tiny BioGPT-format tokenizer (vocab.json + merges.txt: BioGPT's four special tokens, single
    characters and a few merges) for offline demonstrations with ``prism_small_demo``; the same files as
    tests/fixtures/parity/biogpt_tiny (made by make_slide_text.py). Real captions need BioGPT's own vocabulary
    (``microsoft/biogpt``, the entry's default)."""
    import json

    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?%()/+-~&'\"<>[]=_"
                       "üïéβ—"))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for c in chars:
        for t in (c, c + "</w>"):
            vocab.setdefault(t, len(vocab))
    merges = [("t", "h"), ("th", "e</w>"), ("o", "f</w>"), ("a", "n"), ("an", "d</w>"), ("i", "n"), ("t", "u"),
              ("tu", "m"), ("o", "u"), ("r", "</w>"), ("c", "a"), ("ca", "r"), ("in", "o"), ("m", "a")]
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, indent=0))
    (folder / "merges.txt").write_text("".join(f"{a} {b} 1\n" for a, b in merges))
    return folder


def tokenize(tokenizer, texts) -> torch.Tensor:
    """The authors' ``BioGPT.tokenize``: each text + </s>, BioGPT's special tokens (a leading </s>), padded
    with <pad> (id 1) to the longest -> [T, L] token ids."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    enc = tokenizer(text=[t + tokenizer.eos_token for t in texts], add_special_tokens=True, padding=True,
                    return_tensors="pt", return_token_type_ids=False, return_attention_mask=False)
    return enc["input_ids"]


def _decoder_part(sd: dict, source, net: PrismDecoder) -> dict:
    part = {k[len(PREFIX):]: v for k, v in sd.items() if k.startswith(PREFIX)}
    want = set(net.lm.state_dict())
    tied = "output_projection.weight"
    missing = sorted(want - set(part) - ({tied} if net.lm.config.tie_word_embeddings else set()))
    if missing:
        shown = ", ".join(PREFIX + k for k in missing[:6]) + (f", ... ({len(missing)} in all)" if len(missing) > 6 else "")
        raise WeightsError(f"weights {source} lack PRISM's text decoder: missing {shown}. The released "
                           "paige-ai/Prism model.safetensors holds text_decoder.model.*; a file with the Perceiver "
                           "alone (image_resampler.*) can embed slides but not caption them")
    extra = sorted(set(part) - want)
    if extra:
        raise WeightsError(f"weights {source}: unexpected decoder tensors {extra[:6]} (another decoder configuration?)")
    return part


def load_prism_decoder(model="prism", weights=None, device="cpu", tokenizer=None):
    """PRISM's decoder and tokenizer -> (PrismDecoder in eval mode, tokenizer, info); cached (one per process).

    weights: None (the entry's ``model.safetensors`` of paige-ai/Prism, gated), a local file /
    ``"hf_hub:..."``, a state dict with the authors' names (``text_decoder.model.*``), or ``"random"``.
    tokenizer: a folder with BioGPT's vocab.json and merges.txt; default the entry's (``microsoft/biogpt``).
    """
    from .weights import resolve, sha256_file

    spec = get_spec(model, kind="slide")
    cfg = _decoder_config(spec)
    info = {"name": spec.name, "weights": None, "weights_sha256": None}
    tok = load_tokenizer(spec, tokenizer)
    if isinstance(weights, str) and weights == "random":
        warnings.warn(f"{spec.name}: text decoder with RANDOM weights: captions are meaningless except for "
                      "testing", UserWarning, stacklevel=2)
        info["weights"] = "random"
        return PrismDecoder(cfg).to(device), tok, info
    source = weights if weights is not None else spec.weights[0] if spec.weights else None
    if source is None:
        raise WeightsError(f"{spec.name}: no weights source in the registry; pass weights=PATH")
    key = None if isinstance(source, dict) else (spec.name, str(source), str(device), str(tokenizer))
    if key is not None:
        local = Path(str(source)).expanduser()
        key += ((local.stat().st_mtime_ns, local.stat().st_size) if local.is_file() else None,)
    with _CACHE_LOCK:
        if key is not None and key in _CACHE:
            return _CACHE[key]
        if isinstance(source, dict):
            sd, path = source, "a state dict"
            info["weights"] = "state dict passed by the user"
        else:
            path = resolve(source)
            sd = _read_decoder(path)
            info.update(weights=str(source), weights_sha256=sha256_file(path))
        net = PrismDecoder(cfg)
        part = _decoder_part(sd, path, net)
        res = net.lm.load_state_dict(part, strict=False)
        left = [k for k in res.missing_keys if k != "output_projection.weight"]
        if left or res.unexpected_keys:
            raise WeightsError(f"weights {source}: decoder tensors do not fit: missing {left[:6]}, "
                               f"unexpected {res.unexpected_keys[:6]}")
        if net.lm.config.tie_word_embeddings:
            net.lm.output_projection.weight = net.lm.biogpt.embed_tokens.weight
        out = (net.to(device).eval(), tok, info)
        if key is not None:
            _CACHE.clear()
            _CACHE[key] = out
        return out


def _read_decoder(path) -> dict:
    """The ``text_decoder.model.*`` tensors of a checkpoint (lazily from safetensors: the Perceiver and the
    contrastive heads are not read)."""
    from .weights import _looks_like_safetensors, read_state_dict

    path = Path(path)
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys() if k.startswith(PREFIX)}  # noqa: SIM118
        except Exception as e:
            raise WeightsError(f"{path}: not a valid safetensors file (corrupted or truncated?): {e}") from e
    return read_state_dict(path)


def save_random_weights(model, path, seed: int = 0) -> Path:
    """A random checkpoint of a PRISM entry under the authors' names (``image_resampler.*`` for the
    Perceiver, ``text_decoder.model.*`` for the decoder): what ``prism_small_demo`` loads offline."""
    from safetensors.torch import save_file

    from .prism import PrismSlideEncoder

    spec = get_spec(model, kind="slide")
    torch.manual_seed(seed)
    enc = PrismSlideEncoder(**spec.kwargs)
    sd = {}
    for k, v in enc.state_dict().items():  # pathkit's folded names -> the reference's per-layer aliases
        if k.startswith(("xattn.", "tf.")):
            kind, idx, rest = k.split(".", 2)
            for i in range(enc.depth):
                if enc.block_of_layer(i)[0 if kind == "xattn" else 1] == int(idx):
                    sd[f"image_resampler.perceiver.layers.{i}.{kind}.{rest}"] = v
        else:
            sd["image_resampler." + ("perceiver.latents" if k == "latents" else k)] = v
    dec = PrismDecoder(_decoder_config(spec))
    sd.update({PREFIX + k: v for k, v in dec.lm.state_dict().items() if k != "output_projection.weight"})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous().clone() for k, v in sd.items()}, str(path))
    return path


register(ModelSpec(
    name="prism_small_demo", kind="slide", arch="pathkit:prism_perceiver",
    kwargs={"in_dim": 32, "latent_dim": 24, "latent_seq": 8, "mhsa_heads": 2, "perceiver_depth": 2,
            "transformer_depth": 1, "share_xattn_start_layer": 1, "share_tf_start_layer": 0, "xattn_heads": 1,
            "mlp_mult": 1, "mlp_activation": "geglu"},
    embed_dim=24, input_size=0, resize=None, pool="latent_cls", weights=(),
    license="test entry: random weights made locally (pathkit.models.prism_text.save_random_weights)",
    source="pathkit: PRISM's architecture reduced (Perceiver 2 x 24-d, BioGPT decoder 4 x 32-d), offline demos",
    description="A small PRISM with RANDOM weights: the real caption pipeline (Perceiver, cross-attending "
                "BioGPT, generate) with meaningless words",
    extra={"tile_model": "virchow", "coords": False, "in_chans": 32, "mpp": 0.5, "tile_px": 224,
           "decoder": {"vocab_size": 42384, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
                       "intermediate_size": 64, "max_position_embeddings": 128, "pad_token_id": 1,
                       "bos_token_id": 0, "eos_token_id": 2, "scale_embedding": True, "hidden_act": "gelu",
                       "context_dim": 24}},
), overwrite=True)
