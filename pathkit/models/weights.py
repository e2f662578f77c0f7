"""Loading weights safely: local files (safetensors, .bin/.pth/.pt with weights_only=True) or the HF hub."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..errors import UnsafePickleError, WeightsError

CONTAINER_KEYS = ("state_dict", "model", "teacher", "module")


def sha256_file(path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_state_dict(path) -> dict:
    """Read tensors from a local checkpoint without ever executing pickled code."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise WeightsError(f"{path}: not a valid safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = str(e)
        if "Weights only load failed" in msg or "Unsupported global" in msg or "GLOBAL" in msg:
            raise UnsafePickleError(
                f"{path} is a pickle that would run code when loaded (refused). Convert it in a trusted "
                "environment: `torch.save(torch.load(p, weights_only=False)['model'], 'clean.pth')` or save "
                f"it as safetensors. Detail: {msg.splitlines()[0]}"
            ) from e
        raise WeightsError(f"{path}: cannot be read as a torch checkpoint (corrupted or truncated?): {msg}") from e
    return unwrap(obj, path)


def unwrap(obj, path=None) -> dict:
    """Dig the tensor dict out of common checkpoint containers."""
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
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def resolve(source, filenames=("model.safetensors", "pytorch_model.bin")) -> Path:
    """A weights source -> a local file. `hf_hub:<repo>[/<file>]` goes through huggingface_hub
    (token from HF_TOKEN or `huggingface-cli login`; HF_HUB_OFFLINE and the local cache respected)."""
    source = os.fspath(source)
    if not source.startswith("hf_hub:"):
        return Path(source).expanduser()
    from huggingface_hub import hf_hub_download

    ref = source[len("hf_hub:"):]
    parts = ref.split("/")
    repo, explicit = "/".join(parts[:2]), "/".join(parts[2:]) or None
    errors = []
    for fname in ([explicit] if explicit else list(filenames)):
        try:
            return Path(hf_hub_download(repo_id=repo, filename=fname))
        except Exception as e:  # try the next file name, then report all
            errors.append(f"{fname}: {type(e).__name__}: {e}")
    raise WeightsError(
        f"could not get weights {source!r} from the Hugging Face hub or its local cache. "
        "Log in (`huggingface-cli login` or HF_TOKEN) and accept the model's terms, or pass a local file "
        "with weights=PATH. Tried: " + " | ".join(errors)
    )
