"""Tile encoders whose published form is a transformers vision model (Phikon: `ViTModel`; Phikon-v2, kaiko
Midnight-12k: `Dinov2Model`; Hibou: `Dinov2WithRegistersModel`).

The network is built from the transformers class named in the entry (``kwargs["model_class"]``) and its
config (``kwargs["config"]``); never ``trust_remote_code``. When the weights come from a hub repository or a
local file with a ``config.json`` beside it, that config is used instead of the registry's defaults, as
``AutoModel.from_pretrained`` would (`spec_for_source`); ``info["config"]`` says which one was used.
Checkpoints in the transformers naming load as they are: a ``vit.``/``dinov2.``/``model.`` wrapper prefix is
removed and the unused pooler (ViTModel's ``pooler.dense``) is dropped by name, everything else strictly.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from torch import nn

from ..errors import WeightsError
from . import weights as _weights
from .registry import ModelSpec
from .tile_encoders import register_builder

MODEL_CLASSES = ("ViTModel", "Dinov2Model", "Dinov2WithRegistersModel")
_ARCH_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
              "patch_size", "hidden_act", "layer_norm_eps", "qkv_bias", "layerscale_value", "mlp_ratio",
              "use_swiglu_ffn", "num_register_tokens", "num_channels", "encoder_stride")
_WRAPPERS = ("vit.", "dinov2.", "dinov2_with_registers.", "model.", "backbone.")
_UNUSED = ("pooler.",)


def _config(model_class: str, cfg: dict):
    import transformers

    if model_class not in MODEL_CLASSES:
        raise WeightsError(f"transformers model class {model_class!r} is not one of {MODEL_CLASSES}")
    config_cls = {"ViTModel": transformers.ViTConfig, "Dinov2Model": transformers.Dinov2Config,
                  "Dinov2WithRegistersModel": transformers.Dinov2WithRegistersConfig}[model_class]
    return config_cls(**cfg)


class HFVision(nn.Module):
    """A transformers vision backbone as a tile encoder: `forward_features(x)` is the final-LayerNorm token
    sequence ``last_hidden_state`` [B, prefix + patches, D] (class token first, then registers), which the
    entry's pool reads (``num_prefix_tokens`` = 1 + registers)."""

    def __init__(self, model_class: str, config: dict):
        super().__init__()
        import transformers

        cfg = _config(model_class, config)
        cls = getattr(transformers, model_class)
        self.hf = cls(cfg, add_pooling_layer=False) if model_class == "ViTModel" else cls(cfg)
        self.num_prefix_tokens = 1 + int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.num_features = int(cfg.hidden_size)

    def forward_features(self, x):
        return self.hf(pixel_values=x).last_hidden_state

    def forward(self, x):
        return self.forward_features(x)[:, 0]

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Takes the checkpoint as transformers saves it (keys of the model class, optionally wrapped), through
        transformers' own loading so that its renamings of older checkpoints apply (transformers 5 renames
        e.g. Dinov2's `attention.attention.query` and splits `mlp.weights_in`); strict: any missing,
        unexpected or wrong-shape key raises RuntimeError."""
        import transformers

        sd = dict(state_dict)
        if sd and all(k.startswith("hf.") for k in sd):
            sd = {k[3:]: v for k, v in sd.items()}
        for p in _WRAPPERS:
            if sd and all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
        sd = {k: v for k, v in sd.items() if not k.startswith(_UNUSED)}
        cls = type(self.hf)
        extra = {"add_pooling_layer": False} if cls.__name__ == "ViTModel" else {}
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            model, report = cls.from_pretrained(None, config=self.hf.config, state_dict=sd, output_loading_info=True,
                                                **extra)
        finally:
            transformers.logging.set_verbosity(verbosity)
        bad = {k: list(report.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if strict and any(bad.values()):
            raise RuntimeError(f"Error(s) in loading state_dict for {cls.__name__}: "
                               + "; ".join(f"{k}: {v[:10]}" for k, v in bad.items() if v))
        self.hf = model.eval()
        return nn.modules.module._IncompatibleKeys(bad["missing_keys"], bad["unexpected_keys"])


def _companion(source) -> tuple[dict | None, str | None]:
    """config.json of the hub repo or beside a local checkpoint: its architecture keys, and where."""
    source = str(source)
    if source.startswith(("hf_hub:", "hf-hub:")):
        repo = "/".join(source.split(":", 1)[1].split("/")[:2])
        try:
            path = _weights.resolve(f"hf_hub:{repo}/config.json")
        except (WeightsError, OSError, ValueError):
            return None, None
    elif source.startswith(("http://", "https://")):
        return None, None
    else:
        path = Path(source).expanduser().parent / "config.json"
        if not path.is_file():
            return None, None
    try:
        raw = json.loads(Path(path).read_text())
    except ValueError as exc:  # a download cut short, or an error page saved in its place
        raise WeightsError(f"{path}: the model config beside the weights is not valid JSON ({exc}); delete it and "
                           "download it again, or remove it to use the registry's architecture") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: the model config beside the weights is not a JSON object; delete it and "
                           "download it again, or remove it to use the registry's architecture")
    return {k: v for k, v in raw.items() if k in _ARCH_KEYS}, str(path)


def build_hf_vision(spec: ModelSpec) -> HFVision:
    kw = spec.kwargs
    return HFVision(kw["model_class"], dict(kw["config"])).eval()


def _spec_for_source(spec: ModelSpec, source) -> ModelSpec:
    found, where = _companion(source)
    if found is None:
        return dataclasses.replace(spec, extra={**spec.extra, "config_source": "registry"})
    kwargs = {**spec.kwargs, "config": {**spec.kwargs["config"], **found}}
    return dataclasses.replace(spec, kwargs=kwargs, extra={**spec.extra, "config_source": where})


build_hf_vision.spec_for_source = _spec_for_source
register_builder("hf_vision", build_hf_vision)
