"""Loading weights safely: local files (safetensors, .bin/.pth/.pt with weights_only=True), the HF hub, URLs.

Nothing here executes pickled code: torch checkpoints are read with ``torch.load(weights_only=True)`` and a
pickle that needs arbitrary globals is refused with `UnsafePickleError`. Checkpoints written in another
project's naming (mmcls BEiT, original DINOv2, a full ResNet-50) are renamed into timm's by the functions in
`KEY_MAPS`, named by a registry entry's ``key_map`` field.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

from .._hashing import sha256_file
from ..errors import ChecksumError, UnsafePickleError, WeightsError

# dict keys under which training scripts nest the tensors (DINO/DINOv2 "teacher", mmengine "state_dict", ...)
CONTAINER_KEYS = ("state_dict", "model", "teacher", "module", "model_state_dict", "net")
# key prefixes that wrappers add (DataParallel "module.", mmselfsup/mmcls "backbone.", Lightning "model.", ...)
STRIP_PREFIXES = ("module.", "backbone.", "model.", "encoder.", "trunk.", "teacher.", "_orig_mod.")



def verify_sha256(path, expected: str) -> str:
    """Raise ChecksumError when the file's sha256 is not `expected`; return the digest."""
    got = sha256_file(path)
    if got.lower() != str(expected).lower():
        raise ChecksumError(
            f"weights file {path} has sha256 {got}, expected {expected}: the download is corrupted or is a "
            "different release. Delete it and download it again.")
    return got


def _looks_like_safetensors(path: Path) -> bool:
    # 8-byte little-endian header length followed by a JSON object
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < path.stat().st_size


def read_state_dict(path) -> dict:
    """Read the tensors of a local checkpoint without ever executing pickled code.

    safetensors (by extension or content), or a torch file (.bin/.pth/.pt/.ckpt) read with
    ``torch.load(weights_only=True)``; containers (`CONTAINER_KEYS`) are unwrapped.
    Raises WeightsError (missing, corrupted, no tensors) or UnsafePickleError.
    """
    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    from .._files import looks_like

    kind = looks_like(path)
    if kind.startswith(("empty", "text")) and not _looks_like_safetensors(path):
        # a download that stopped at once or saved the server's error page in place of the weights
        raise WeightsError(f"{path}: not a checkpoint: the file is {kind}. Delete it and download it again "
                           "(a login or licence page saved in its place?), or pass another weights=")
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors.torch import load_file

        try:
            return unwrap(load_file(str(path)), path)
        except WeightsError:
            raise
        except Exception as e:
            raise WeightsError(f"{path}: not a valid safetensors file (corrupted or truncated?): {e}. "
                               "Delete it and download it again, or pass another weights=") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            obj = _training_checkpoint(path)
            if obj is not None:
                return unwrap(obj, path)
            first = next((ln for ln in msg.splitlines() if "GLOBAL" in ln or "global" in ln), msg.splitlines()[0])
            raise UnsafePickleError(
                f"{path} is a pickle that would import or run code when loaded, so pathkit refuses it. If you "
                "trust its origin, convert it once in a separate Python session: "
                "`sd = torch.load(p, weights_only=False)`; pick the tensor dict (e.g. sd['model']); then "
                "`safetensors.torch.save_file(sd, 'weights.safetensors')` (or `torch.save(sd, 'clean.pth')`), "
                f"and pass the new file. Detail: {first.strip()}"
            ) from e
        raise WeightsError(f"{path}: cannot be read as a torch checkpoint (corrupted or truncated?): {msg}. "
                           "Delete it and download it again, or pass another weights=") from e
    return unwrap(obj, path)


# Training bookkeeping that mmengine/mmcv (BEPH's BEPH_weight.pth: `meta`, `message_hub`, optimizer state) and
# numpy pickle next to the model's tensors. Their classes are never imported: `_Inert` stands in for each.
TRAINING_METADATA_MODULES = ("mmengine.", "mmcv.", "mmcls.", "mmpretrain.", "mmselfsup.", "numpy.", "_codecs.")


class _Inert:
    """Placeholder for a class named in a checkpoint's training metadata: built from any arguments, keeps
    its state as plain data, runs nothing."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs

    def __new__(cls, *args, **kwargs):
        return object.__new__(cls)

    def __setstate__(self, state):
        self.state = state


def _training_checkpoint(path) -> dict | None:
    """Read a training checkpoint whose only non-tensor globals are training metadata
    (`TRAINING_METADATA_MODULES`), with torch's weights-only unpickler and an inert placeholder for each of
    those classes: nothing from the file is imported or run. Returns the tensor dict under `state_dict` /
    `model` (the metadata is dropped with a warning), or None (then the file is refused as unsafe)."""
    import torch
    from torch import serialization as ser

    if not hasattr(ser, "get_unsafe_globals_in_checkpoint"):
        return None
    try:
        names = ser.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001  (not a zip checkpoint: refused by the caller)
        return None
    if not names or not all(n.startswith(TRAINING_METADATA_MODULES) for n in names):
        return None
    stubs = [(type(n.rsplit(".", 1)[-1], (_Inert,), {}), n) for n in names]
    try:
        with ser.safe_globals(stubs):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001
        return None
    if not isinstance(obj, dict):
        return None
    inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
    if inner is None or not inner or not all(isinstance(v, torch.Tensor) for v in inner.values()):
        return None
    skipped = sorted(k for k in obj if obj[k] is not inner)
    warnings.warn(f"{path}: a training checkpoint; read its tensors only and skipped {skipped} "
                  f"(training metadata of {sorted({n.split('.')[0] for n in names})}, never imported or run)",
                  UserWarning, stacklevel=4)
    return inner


def unwrap(obj, path=None) -> dict:
    """Dig the tensor dict out of common checkpoint containers ({'model': {...}}, {'state_dict': ...})."""
    import torch

    for _ in range(4):
        if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in CONTAINER_KEYS if k in obj and isinstance(obj[k], dict)), None)
            if inner is None:
                break
            obj = inner
        else:
            break
    if not isinstance(obj, dict) or not obj:
        raise WeightsError(f"{path}: no state dict found in the checkpoint")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise WeightsError(f"{path}: the checkpoint holds no tensors (keys: {list(obj)[:10]})")
    return tensors


def strip_prefixes(sd: dict, expected: set) -> tuple[dict, list]:
    """Remove wrapper prefixes ('module.', 'backbone.', ...) until the keys meet the model's `expected` keys.

    A prefix is removed when every key carries it, or when the keys carrying it are the model's and the
    rest are training-only heads (e.g. mmselfsup's `neck.*`/`head.*`): the dropped groups are returned so
    the caller can report them. Returns (state dict, dropped top-level key groups).
    """
    dropped: list = []
    for _ in range(4):
        if set(sd) & expected and not (set(sd) - expected):
            break
        best = None
        for p in STRIP_PREFIXES:
            with_p = {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
            if not with_p:
                continue
            score = len(set(with_p) & expected)
            if score > len(set(sd) & expected) and (best is None or score > best[0]):
                best = (score, p, with_p)
        if best is None:
            break
        _, p, with_p = best
        rest = sorted({k.split(".")[0] for k in sd if not k.startswith(p)})
        dropped += rest
        sd = with_p
    return sd, dropped


# ---------------------------------------------------------------------------------------------- key maps
from ._key_maps import KEY_MAPS, apply_key_map  # noqa: F401  (re-exported: weights.KEY_MAPS, apply_key_map)


# ---------------------------------------------------------------------------------------------- sources
def _truthy(v) -> bool:
    return str(v or "").strip().lower() in ("1", "true", "yes", "on")


def offline() -> bool:
    """HF_HUB_OFFLINE / PATHKIT_OFFLINE, read at call time (huggingface_hub reads its env at import)."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("PATHKIT_OFFLINE"))


def _hf_cache_dir():
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None  # huggingface_hub's default


def weights_cache_dir() -> Path:
    """Where URL weights are cached: $PATHKIT_CACHE/weights or ~/.cache/pathkit/weights."""
    root = os.environ.get("PATHKIT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "pathkit")
    return Path(root) / "weights"


def _resolve_hf(source: str, filenames) -> Path:
    from huggingface_hub import hf_hub_download

    ref = source.split(":", 1)[1]
    parts = ref.split("/")
    if len(parts) < 2:
        raise WeightsError(f"{source!r}: write hf_hub:<org>/<repo>[@<revision>][/<file>]")
    repo, explicit = "/".join(parts[:2]), "/".join(parts[2:]) or None
    repo, _, revision = repo.partition("@")  # hf_hub:org/repo@<commit or tag>/file pins a revision
    local_only = offline()
    errors = []
    for fname in ([explicit] if explicit else list(filenames)):
        try:
            # the token comes from HF_TOKEN or `huggingface-cli login` inside huggingface_hub; never logged here
            return Path(hf_hub_download(repo_id=repo, filename=fname, revision=revision or None,
                                        cache_dir=_hf_cache_dir(), local_files_only=local_only))
        except Exception as e:  # noqa: BLE001  (hub, HTTP and cache errors alike: try the next name, report all)
            errors.append(f"{fname}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    where = _hf_cache_dir() or "the default Hugging Face cache"
    hint = (f"HF_HUB_OFFLINE is set and the file is not in {where}: download it once while online "
            f"(`huggingface-cli download {repo}`) or unset HF_HUB_OFFLINE. " if local_only else
            "Log in (`huggingface-cli login` or the HF_TOKEN environment variable) and accept the model's "
            f"terms on https://huggingface.co/{repo}, or ")
    raise WeightsError(
        f"could not get weights {source!r} from the Hugging Face hub or its cache. {hint}"
        "You can also pass a local file with weights=PATH. Tried: " + " | ".join(errors))


def url_cache_path(url: str, sha256: str | None = None) -> Path:
    """Where a URL's file is cached: ``sha256/<digest>/<name>`` when its sha256 is known (a new release
    under the same name is a new file), else ``url/<sha256 of the URL>[:16]/<name>`` (never the bare file
    name, which two releases or two sites may share)."""
    import hashlib

    name = url.rstrip("/").split("/")[-1].split("?")[0] or "weights"
    if sha256:
        return weights_cache_dir() / "sha256" / str(sha256).lower() / name
    return weights_cache_dir() / "url" / hashlib.sha256(url.encode()).hexdigest()[:16] / name


def _resolve_url(url: str, sha256: str | None = None) -> Path:
    dest = url_cache_path(url, sha256)
    if dest.is_file():
        return dest
    if offline():
        raise WeightsError(f"{url} is not in the cache {dest} and HF_HUB_OFFLINE/PATHKIT_OFFLINE is set: "
                           "download it once while online, or pass weights=PATH")
    import torch

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=True)
        if sha256:
            verify_sha256(tmp, sha256)  # a wrong file never enters the cache under the expected digest
        os.replace(tmp, dest)
    except ChecksumError:
        raise
    except Exception as e:
        raise WeightsError(f"could not download {url}: {e}. Download it by hand and pass weights=PATH") from e
    finally:
        if tmp.exists():
            tmp.unlink()
    return dest


def hf_revision(path) -> str | None:
    """The commit a file from the HF cache belongs to (`.../snapshots/<commit>/<file>`), for provenance."""
    parts = Path(path).parts
    if "snapshots" in parts[:-1]:
        i = parts.index("snapshots")
        return parts[i + 1] if i + 2 < len(parts) else None
    return None


def resolve(source, filenames=("model.safetensors", "pytorch_model.bin"), sha256: str | None = None) -> Path:
    """A weights source -> a local file.

    - ``hf_hub:<org>/<repo>[@<revision>][/<file>]`` through huggingface_hub (token from HF_TOKEN or
      ``huggingface-cli login``; ``HF_HUB_OFFLINE``, ``HF_HUB_CACHE`` and ``HF_HOME`` read at call time);
      without a file name, `filenames` are tried in order;
    - ``http(s)://...`` downloaded once into `weights_cache_dir()` (atomic; refused when offline), cached
      under its `sha256` when given (`url_cache_path`);
    - anything else is a local path.
    """
    source = os.fspath(source)
    if source.startswith(("hf_hub:", "hf-hub:")):
        return _resolve_hf(source, filenames)
    if source.startswith(("https://", "http://")):
        return _resolve_url(source, sha256)
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    return path
