"""Model registry: every model pathkit knows is a `ModelSpec` entry (data), never a branch in code.

Entries live in `pathkit.models.zoo` (tile encoders), `pathkit.models.longnet` (slide encoders) and
`pathkit.models.clip` (image-text models); they register themselves when `pathkit.models` is imported.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ModelNotFoundError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What a model is: architecture, preprocessing, output, weights and provenance.

    pool: how the embedding is read off the network's token sequence —
      "cls" (class token after the final norm), "mean_patch" (mean of patch tokens, registers excluded),
      "cls+mean_patch" (concatenation, Virchow2), "head" (the model's own pooled output / head,
      e.g. a CNN's global average pool or CONCH's projected embedding).
    """

    name: str
    kind: str = "tile"  # "tile" | "slide" | "clip"
    arch: str = ""  # timm architecture name (or a pathkit builder name for non-timm models)
    kwargs: dict = field(default_factory=dict)
    embed_dim: int = 0
    input_size: int = 224  # network input (after crop)
    resize: int | None = None  # shorter side resized to this before the centre crop; None: resize to input_size
    interpolation: str = "bicubic"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    pool: str = "cls"
    weights: tuple = ()  # sources: "hf_hub:<repo>[/<filename>]", URLs, local paths
    key_map: str | None = None  # name of a key map in pathkit.models.weights.KEY_MAPS
    sha256: str | None = None  # of the weights file, when published
    n_params: int | None = None  # published parameter count
    license: str = ""
    gated: bool = False
    source: str = ""  # where the facts above were checked (model card / code URL)
    description: str = ""
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        d["weights"] = list(self.weights)
        return d


_REGISTRY: dict[str, ModelSpec] = {}


def register(spec: ModelSpec, overwrite: bool = False) -> ModelSpec:
    """Add a model to the registry (users can register their own)."""
    if spec.name in _REGISTRY and not overwrite:
        raise ValueError(f"model {spec.name!r} is already registered; pass overwrite=True to replace it")
    _REGISTRY[spec.name] = spec
    return spec


def get_spec(name: str | ModelSpec, kind: str | None = None) -> ModelSpec:
    """Look a model up by name. `timm:<arch>` gives an ad-hoc spec for any timm architecture."""
    if isinstance(name, ModelSpec):
        spec = name
    elif isinstance(name, str) and name.startswith("timm:"):
        spec = _timm_spec(name[len("timm:"):])
    elif name in _REGISTRY:
        spec = _REGISTRY[name]
    elif isinstance(name, str) and _casefold_match(name, kind):
        spec = _REGISTRY[_casefold_match(name, kind)]
    else:
        raise ModelNotFoundError(_unknown_model_message(name, kind))
    if kind is not None and spec.kind != kind:
        raise ModelNotFoundError(f"model {spec.name!r} is a {spec.kind} model, not a {kind} model")
    return spec


def _casefold_match(name: str, kind: str | None) -> str | None:
    """The registry name equal to `name` ignoring case, '-' and '_' (``UNI``, ``Gigapath-Tile``), if exactly
    one of `kind` matches."""
    def norm(s):
        return s.casefold().replace("-", "_")

    hits = [k for k, s in _REGISTRY.items() if norm(k) == norm(name) and (kind is None or s.kind == kind)]
    return hits[0] if len(hits) == 1 else None


def _unknown_model_message(name, kind: str | None) -> str:
    import difflib

    names = sorted(k for k, s in _REGISTRY.items() if kind is None or s.kind == kind)
    lower = {k.casefold(): k for k in names}
    close = [lower[k] for k in difflib.get_close_matches(str(name).casefold(), list(lower), n=3, cutoff=0.6)]
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    what = f"{kind} model" if kind else "model"
    return (f"unknown {what} {name!r}.{hint} Known {what}s: {', '.join(names)}. "
            "Use 'timm:<architecture>' for any timm model, or pathkit.models.register(ModelSpec(...)).")


def _timm_spec(arch: str) -> ModelSpec:
    import timm

    if arch not in timm.list_models() and arch.split(".")[0] not in timm.list_models():
        raise ModelNotFoundError(f"timm has no architecture {arch!r} (see timm.list_models())")
    cfg = timm.get_pretrained_cfg(arch.split(".")[0]) if hasattr(timm, "get_pretrained_cfg") else None
    mean = tuple(getattr(cfg, "mean", IMAGENET_MEAN) or IMAGENET_MEAN) if cfg else IMAGENET_MEAN
    std = tuple(getattr(cfg, "std", IMAGENET_STD) or IMAGENET_STD) if cfg else IMAGENET_STD
    size = int(cfg.input_size[-1]) if cfg and getattr(cfg, "input_size", None) else 224
    return ModelSpec(
        name=f"timm:{arch}", arch=arch, embed_dim=0, input_size=size, mean=mean, std=std,
        pool="head", description=f"timm architecture {arch} (head removed)",
        source="https://github.com/huggingface/pytorch-image-models",
    )


def registered(kind: str | None = None) -> list[ModelSpec]:
    """The registered models as :class:`ModelSpec` entries (``kind``: ``"tile"``, ``"slide"``, ... or None for
    all), in registration order; :func:`list_models` gives the same as a table."""
    return [s for s in _REGISTRY.values() if kind is None or s.kind == kind]


def list_models(kind: str | None = None):
    """The registry as a pandas DataFrame (one row per model), for notebooks."""
    import pandas as pd

    rows = []
    for s in registered(kind):
        rows.append({
            "name": s.name, "kind": s.kind, "architecture": s.arch, "embed_dim": s.embed_dim,
            "input": s.input_size, "resize": s.resize or s.input_size, "interpolation": s.interpolation,
            "pool": s.pool, "mean": tuple(round(float(m), 6) for m in s.mean),
            "std": tuple(round(float(v), 6) for v in s.std),
            "weights": s.weights[0] if s.weights else "", "key_map": s.key_map or "",
            "license": s.license, "gated": s.gated, "params": s.n_params, "source": s.source,
            "description": s.description,
        })
    return pd.DataFrame(rows).set_index("name") if rows else pd.DataFrame()
