"""Build tile encoders from registry entries (timm or pathkit builders) and load their weights strictly."""
from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable

import torch
from torch import nn

from ..errors import WeightsError
from . import weights as _weights
from .registry import ModelSpec, get_spec, registered

# Non-timm architectures: spec.arch = "pathkit:<name>" -> BUILDERS[name](spec) -> nn.Module that returns the
# embedding (pool "head"). Other modules register here (clip.py registers "conch_vision").
BUILDERS: dict[str, Callable[[ModelSpec], nn.Module]] = {}

# spec.kwargs stay plain data (h5ad-safe, printable); layer classes are named by these dotted paths
_REF_MODULES = ("timm.layers.", "torch.nn.")


def register_builder(name: str, fn: Callable[[ModelSpec], nn.Module] | None = None, overwrite: bool = False):
    """Register a builder for ``arch="pathkit:<name>"`` (usable as a decorator)."""
    def _add(f):
        if name in BUILDERS and not overwrite and BUILDERS[name] is not f:
            raise ValueError(f"builder {name!r} is already registered; pass overwrite=True to replace it")
        BUILDERS[name] = f
        return f
    return _add(fn) if fn is not None else _add


def resolve_kwargs(kwargs: dict) -> dict:
    """Turn dotted names of layer classes ("timm.layers.SwiGLUPacked", "torch.nn.SiLU") into the classes."""
    out = {}
    for k, v in kwargs.items():
        if isinstance(v, str) and v.startswith(_REF_MODULES):
            mod, _, attr = v.rpartition(".")
            try:
                v = getattr(importlib.import_module(mod), attr)
            except (ImportError, AttributeError) as e:
                raise WeightsError(f"model kwargs {k}={v!r}: no such layer in this timm/torch version") from e
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------------- pooling
def _prefix(net) -> int:
    return int(getattr(net, "num_prefix_tokens", 1))


def _pool_cls(net, tokens):
    return tokens[:, 0]


def _pool_mean_patch(net, tokens):
    # patch tokens only: class and register tokens (num_prefix_tokens) excluded
    return tokens[:, _prefix(net):].mean(dim=1)


def _pool_cls_mean(net, tokens):
    return torch.cat([_pool_cls(net, tokens), _pool_mean_patch(net, tokens)], dim=-1)


# pool name -> function(net, forward_features output); "head" uses the network's own forward
POOLS = {"cls": _pool_cls, "mean_patch": _pool_mean_patch, "cls+mean_patch": _pool_cls_mean}
POOL_DOC = {
    "cls": "class token after the final norm",
    "mean_patch": "mean of patch tokens after the final norm (class/register tokens excluded)",
    "cls+mean_patch": "class token concatenated with the mean of patch tokens (registers excluded)",
    "head": "the network's own pooled output (timm head with num_classes=0, CNN pool, or builder output)",
}


class TileEncoder(nn.Module):
    """A network plus the recipe that turns its output into the published embedding.

    forward(x) takes a float batch [B, 3, input_size, input_size] that is already normalised
    (see `spec.mean`, `spec.std`) and returns [B, spec.embed_dim].
    """

    def __init__(self, net: nn.Module, spec: ModelSpec):
        super().__init__()
        if spec.pool != "head" and spec.pool not in POOLS:
            raise ValueError(f"model {spec.name!r}: pool {spec.pool!r} is not one of {sorted(POOLS) + ['head']}")
        self.net = net
        self.spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spec.pool == "head":
            return self.net(x)
        return POOLS[self.spec.pool](self.net, self.net.forward_features(x))

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim or int(getattr(self.net, "num_features", 0))


def _build_net(spec: ModelSpec, meta: bool = False) -> nn.Module:
    if spec.arch.startswith("pathkit:"):
        name = spec.arch.split(":", 1)[1]
        if name not in BUILDERS:
            raise WeightsError(
                f"model {spec.name!r} needs the builder {name!r} (arch {spec.arch!r}), which is not registered "
                f"(known: {sorted(BUILDERS)}). Import the module that provides it.")
        return BUILDERS[name](spec)
    import timm

    kwargs = resolve_kwargs(spec.kwargs)
    if meta and "weight_init" not in kwargs:
        # on meta the random init is wasted work (x6 slower for ViT-g); timm ViTs can skip it
        try:
            return timm.create_model(spec.arch, pretrained=False, num_classes=0, weight_init="skip", **kwargs)
        except TypeError:
            pass
    return timm.create_model(spec.arch, pretrained=False, num_classes=0, **kwargs)


def build_tile_encoder(model: str | ModelSpec, device: str | torch.device = "meta") -> TileEncoder:
    """The exact architecture of a registry entry, without weights (randomly initialised on a real device;
    "meta" builds it without allocating memory, e.g. to count parameters or check shapes)."""
    spec = get_spec(model)
    with torch.device(device):
        net = _build_net(spec, meta=torch.device(device).type == "meta")
    return TileEncoder(net, spec).eval()


def n_params(model) -> int:
    """Number of parameters of a built encoder or registry entry (meta build: no memory)."""
    enc = model if isinstance(model, nn.Module) else build_tile_encoder(model, device="meta")
    return sum(p.numel() for p in enc.parameters())


# ---------------------------------------------------------------------------------------------- signatures
_SIGNATURES: dict = {}


def signature(spec: ModelSpec) -> dict:
    """{state-dict key: shape} of an entry's network, from a meta build (cached per architecture)."""
    key = (spec.arch, repr(sorted(spec.kwargs.items())))
    if key not in _SIGNATURES:
        enc = build_tile_encoder(spec, device="meta")
        _SIGNATURES[key] = {k: tuple(v.shape) for k, v in enc.net.state_dict().items()}
    return _SIGNATURES[key]


def identify_checkpoint(sd: dict, kind: str = "tile") -> list[tuple[str, float]]:
    """Which registry entries a state dict fits: [(name, share of keys matching name and shape)], best first.

    Each entry's key map and the usual prefix stripping are applied to the checkpoint first, so a BEPH
    mmcls file or a DINOv2-named file is recognised too. Entries whose builder is missing are skipped.
    """
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    scores = []
    for spec in registered(kind):
        # best effort: this only words an error message, so an entry that cannot be built or mapped
        # (builder not imported, key map expecting other names) is simply not a candidate
        try:
            sig = signature(spec)
            mapped = _weights.apply_key_map(dict(sd), spec.key_map)
        except Exception:  # noqa: BLE001, S112
            continue
        mapped, _ = _weights.strip_prefixes(mapped, set(sig))
        mshapes = {k: tuple(v.shape) for k, v in mapped.items()} if mapped else shapes
        union = set(sig) | set(mshapes)
        good = sum(1 for k in set(sig) & set(mshapes) if sig[k] == mshapes[k])
        scores.append((spec.name, good / max(1, len(union))))
    return sorted(scores, key=lambda t: -t[1])


def _looks_like(sd: dict, exclude: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scores = [s for s in identify_checkpoint(sd) if s[0] != exclude]
    exact = [n for n, s in scores if s >= 0.999]
    if exact:
        return f"It looks like a checkpoint for registry entry {' / '.join(exact)}: pass model={exact[0]!r}."
    if scores and scores[0][1] >= 0.5:
        return f"The closest registry entry is {scores[0][0]!r} ({scores[0][1]:.0%} of keys and shapes match)."
    return "It matches no registry entry (is it a tile-encoder checkpoint?)."


def check_state_dict(sd: dict, net: nn.Module, spec: ModelSpec, path=None, raw: dict | None = None):
    """Raise WeightsError listing missing / unexpected / wrong-shape keys (and which entry the file fits;
    `raw` is the checkpoint before `spec`'s key map, which identification maps per candidate itself)."""
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    wrong = sorted(k for k in set(want) & set(sd) if tuple(sd[k].shape) != want[k])
    if not (missing or unexpected or wrong):
        return

    def show(keys, n=12):
        return f"{keys[:n]}{f' ... (+{len(keys) - n} more)' if len(keys) > n else ''}"

    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys {show(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys {show(unexpected)}")
    if wrong:
        parts.append("wrong shapes " + show([f"{k}: file {tuple(sd[k].shape)} vs model {want[k]}" for k in wrong], 6))
    raise WeightsError(
        f"weights {path} do not fit {spec.name!r} ({spec.arch}): " + "; ".join(parts) + ". "
        + _looks_like(raw if raw is not None else sd, spec.name))


def _custom_loader(net: nn.Module) -> bool:
    """A builder module that selects its part of a bigger checkpoint in its own `load_state_dict`
    (e.g. an image tower given a whole CLIP checkpoint) is loaded through it, still strictly."""
    return type(net).load_state_dict is not nn.Module.load_state_dict


def load_tile_encoder(model: str | ModelSpec, weights=None, device="cpu") -> tuple[TileEncoder, dict]:
    """Build a registry entry and load its weights strictly.

    Parameters
    ----------
    model
        Registry name (`pk.list_models()`), a ModelSpec, or ``"timm:<arch>"``.
    weights
        None: the entry's published source (``spec.weights[0]``: HF hub or URL, cached), or random init with
        a loud warning when the entry has none (test models, ``timm:<arch>``); ``"random"``: random init with a
        warning; a local file (safetensors, .bin, .pth/.pt) or ``"hf_hub:<org>/<repo>[/<file>]"`` or a URL.
    device
        Where the encoder ends up.

    Returns
    -------
    (encoder, info): info has ``source``, ``path``, ``sha256`` (of the file), ``revision`` (HF hub commit,
    when from the hub cache), ``key_map``, ``dropped`` (top-level key groups left out, e.g. a training head)
    and ``verified`` (sha256 checked against the registry). Raises WeightsError (missing file, wrong architecture, missing/unexpected keys),
    UnsafePickleError, ChecksumError.
    """
    spec = get_spec(model)
    if weights is None and not spec.weights and spec.extra.get("manual_weights"):
        # a real model whose weights cannot be fetched: never fall back to random ones
        raise WeightsError(f"model {spec.name!r}: {spec.extra['manual_weights']}. "
                           "(weights='random' gives an untrained network, for testing only.)")
    source = weights if weights is not None else (spec.weights[0] if spec.weights else "random")
    info = {"source": str(source), "path": None, "sha256": None, "key_map": spec.key_map, "dropped": [],
            "verified": False, "revision": None}
    if str(source) == "random":
        warnings.warn(
            f"model {spec.name!r} has RANDOM weights: its embeddings carry no biological meaning. "
            "Pass weights=PATH or weights='hf_hub:<repo>' for real features.", UserWarning,
            stacklevel=_user_stacklevel())
        enc = build_tile_encoder(spec, device="cpu")
        return enc.to(device).eval(), info

    hook = getattr(BUILDERS.get(spec.arch.split(":", 1)[1]), "spec_for_source", None) \
        if spec.arch.startswith("pathkit:") else (_timm_hub_config if spec.extra.get("timm_hub_config") else None)
    if hook is not None:  # e.g. an image tower reads its checkpoint's companion config, as load_clip does
        spec = hook(spec, source)
        info["config"] = spec.extra.get("config_source")
    published = weights is None or str(weights) in spec.weights
    expected = spec.sha256 if published else None
    path = _weights.resolve(source, sha256=expected)
    if expected:
        info["sha256"] = _weights.verify_sha256(path, expected)
        info["verified"] = True
    raw = _weights.read_state_dict(path)
    sd = _weights.apply_key_map(raw, spec.key_map)
    # check names and shapes on a meta build first: a wrong file fails fast, before GBs are allocated
    meta = build_tile_encoder(spec, device="meta")
    custom = _custom_loader(meta.net)
    dropped: list = []
    if not custom:
        sd, dropped = _weights.strip_prefixes(sd, set(meta.net.state_dict()))
        check_state_dict(sd, meta.net, spec, path, raw=raw)
    if dropped:
        warnings.warn(f"{path}: left out the checkpoint's {dropped} (not part of {spec.name}'s network)",
                      UserWarning, stacklevel=2)
    persistent = meta.net.state_dict()
    if not custom and all(n in persistent for n, _ in meta.net.named_buffers()):
        # every tensor comes from the file: adopt them into the meta build instead of random-initialising
        # GBs first (cast to the model's dtypes, as a copying load would)
        sd = {k: v.to(persistent[k].dtype) if v.is_floating_point() else v for k, v in sd.items()}
        meta.net.load_state_dict(sd, strict=True, assign=True)
        enc = meta
        if any(t.is_meta for t in [*enc.parameters(), *enc.buffers()]):
            raise WeightsError(f"{spec.name}: some tensors were not filled from {path} (pathkit bug: report it)")
    else:  # buffers computed at build time (BEiT's position index) need a real build
        del meta
        enc = build_tile_encoder(spec, device="cpu")
        try:
            enc.net.load_state_dict(sd, strict=True)
        except RuntimeError as e:  # builders with their own (strict) loading: same error type as ours
            raise WeightsError(f"weights {path} do not fit {spec.name!r} ({spec.arch}): {e}. "
                               + _looks_like(raw, spec.name)) from e
    info.update(path=str(path), dropped=dropped, revision=_weights.hf_revision(path))
    if info["sha256"] is None:
        info["sha256"] = _weights.sha256_file(path)
    return enc.to(device).eval(), info


def _timm_hub_config(spec: ModelSpec, source) -> ModelSpec:
    """A timm hub model's own `config.json` (hub repo, or beside a local file): its ``architecture`` and
    ``model_args``, as ``timm.create_model("hf-hub:...")`` reads them, under the kwargs the model card passes
    explicitly (``extra["card_kwargs"]``), which win as they do in the card's call. Without a readable
    config the registry's kwargs are used (``info["config"] = "registry"``)."""
    import dataclasses
    import json
    from pathlib import Path

    source = str(source)
    path = None
    if source.startswith(("hf_hub:", "hf-hub:")):
        repo = "/".join(source.split(":", 1)[1].split("/")[:2])
        try:
            path = _weights.resolve(f"hf_hub:{repo}/config.json")
        except (WeightsError, OSError, ValueError):
            path = None
    elif not source.startswith(("http://", "https://")) and (Path(source).expanduser().parent / "config.json").is_file():
        path = Path(source).expanduser().parent / "config.json"
    raw = json.loads(Path(path).read_text()) if path else {}
    if not raw.get("model_args") and not raw.get("architecture"):
        return dataclasses.replace(spec, extra={**spec.extra, "config_source": "registry"})
    card = {k: spec.kwargs[k] for k in spec.extra.get("card_kwargs", ()) if k in spec.kwargs}
    args = {k: v for k, v in (raw.get("model_args") or {}).items() if k not in ("num_classes", "pretrained_cfg")}
    kwargs = {**spec.kwargs, **args, **card}
    return dataclasses.replace(spec, arch=raw.get("architecture") or spec.arch, kwargs=kwargs,
                               extra={**spec.extra, "config_source": str(path)})


# ---------------------------------------------------------------------------------------------- builders
class ResNetTrunk(nn.Module):
    """ResNet-50 up to layer3 then adaptive average pooling (CLAM's `resnet50_baseline`): 1024-d.

    Parameter names follow torchvision/timm (conv1, bn1, layer1..3), so ImageNet checkpoints load after
    dropping layer4 and fc (key map "resnet50_trunc").
    """

    def __init__(self, arch: str = "resnet50"):
        super().__init__()
        import timm

        full = timm.create_model(arch, pretrained=False, num_classes=0)
        self.conv1, self.bn1, self.act1, self.maxpool = full.conv1, full.bn1, full.act1, full.maxpool
        self.layer1, self.layer2, self.layer3 = full.layer1, full.layer2, full.layer3
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = int(self.layer3[-1].conv3.out_channels)

    def forward(self, x):
        x = self.maxpool(self.act1(self.bn1(self.conv1(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.pool(x).flatten(1)


register_builder("resnet50_trunc", lambda spec: ResNetTrunk(**spec.kwargs))


from .._warn import user_stacklevel as _user_stacklevel  # last: touches no import order (issue 29)
