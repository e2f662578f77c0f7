"""Build tile encoders from registry entries (timm) and load their weights."""
from __future__ import annotations

import warnings

import torch
from torch import nn

from ..errors import WeightsError
from .registry import ModelSpec, get_spec
from . import weights as _weights


def _pool_cls(net, tokens):
    return tokens[:, 0]


def _pool_mean_patch(net, tokens):
    return tokens[:, getattr(net, "num_prefix_tokens", 1):].mean(dim=1)


def _pool_cls_mean(net, tokens):
    return torch.cat([_pool_cls(net, tokens), _pool_mean_patch(net, tokens)], dim=-1)


# pool name -> function(net, forward_features output) ; "head" uses the network's own forward
POOLS = {"cls": _pool_cls, "mean_patch": _pool_mean_patch, "cls+mean_patch": _pool_cls_mean}


class TileEncoder(nn.Module):
    """A network plus the recipe that turns its output into the published embedding.

    forward(x) takes a float batch [B, 3, input_size, input_size] that is already normalised.
    """

    def __init__(self, net: nn.Module, spec: ModelSpec):
        super().__init__()
        self.net = net
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.pool == "head":
            return self.net(x)
        return POOLS[self.spec.pool](self.net, self.net.forward_features(x))

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim or int(getattr(self.net, "num_features", 0))


def build_tile_encoder(model: str | ModelSpec, device: str | torch.device = "cpu") -> TileEncoder:
    """The exact architecture of a registry entry, randomly initialised (on `device`, "meta" allowed)."""
    import timm

    spec = get_spec(model)
    with torch.device(device):
        net = timm.create_model(spec.arch, pretrained=False, num_classes=0, **spec.kwargs)
    return TileEncoder(net, spec).eval()


def load_tile_encoder(model: str | ModelSpec, weights=None, device="cpu") -> tuple[TileEncoder, dict]:
    """Build a registry entry and load its weights.

    weights: None -> the entry's published source (HF hub), or random init with a loud warning when the
    entry has none (test models, `timm:<arch>`); "random" -> random init with a warning; a path or
    `hf_hub:<repo>` -> that checkpoint, loaded strictly.
    Returns (encoder, info) where info records the weights' source and sha256 for provenance.
    """
    spec = get_spec(model)
    enc = build_tile_encoder(spec, device="cpu")
    source = weights if weights is not None else (spec.weights[0] if spec.weights else "random")
    info = {"source": str(source), "sha256": None}
    if str(source) == "random":
        warnings.warn(
            f"model {spec.name!r} has RANDOM weights: its embeddings carry no biological meaning. "
            "Pass weights=PATH or weights='hf_hub:<repo>' for real features.", UserWarning, stacklevel=2)
    else:
        path = _weights.resolve(source)
        sd = _weights.read_state_dict(path)
        missing, unexpected = enc.net.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise WeightsError(
                f"weights {path} do not fit {spec.name} ({spec.arch}): missing keys {list(missing)[:10]}, "
                f"unexpected keys {list(unexpected)[:10]}")
        info["sha256"] = _weights.sha256_file(path)
    return enc.to(device).eval(), info
