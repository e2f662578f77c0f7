"""The export cache: one ONNX export per (registry entry, weights sha256, input size, torch version), kept
beside the weights (``$PATHKIT_CACHE/weights/engines/<key>/``) and reused across sessions and Dask workers.

A folder is published whole: the export is written into a private temporary folder with ``export.json``
(sha256 of every file) last, then renamed into place. ``rename`` of a folder onto an existing non-empty
folder fails, so when two processes export at once the first rename wins and the loser deletes its copy:
a reader never sees a half-written export. Files are checked against ``export.json`` before use.
Per-engine records (``<engine>-<version>.json``: parity on the first real batch) are written atomically.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import torch

from .._hashing import sha256_file
from .._io import write_text_atomic

# bump when the export recipe changes: old folders are then simply not found (2: weights in model.onnx.data)
FORMAT = 2
MANIFEST = "export.json"


def cache_root() -> Path:
    """``$PATHKIT_CACHE/weights/engines`` (default ``~/.cache/pathkit/weights/engines``)."""
    from ..models.weights import weights_cache_dir

    return weights_cache_dir() / "engines"


def weights_fingerprint(encoder, winfo: dict) -> str:
    """sha256 of the weights file when it was read from one, else of the parameters themselves (random
    init, in-memory models); a module whose weights were released keeps the fingerprint they had."""
    if winfo.get("sha256"):
        return str(winfo["sha256"])
    from ._torch_source import released

    kept = released(encoder)
    if kept is not None:
        return kept
    h = hashlib.sha256()
    for name, t in sorted(encoder.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return "params:" + h.hexdigest()


def export_key(spec, weights_sha: str, input_size: int) -> str:
    """The folder name of an export: a hash of everything that changes the exported graph."""
    ident = {"spec": spec.to_dict(), "weights_sha256": weights_sha, "input_size": int(input_size),
             "torch": torch.__version__, "format": FORMAT}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in spec.name)[:40]
    return f"{safe}-{digest}"


def find_export(folder: Path) -> dict | None:
    """The manifest of a complete export whose files match their sha256; None when absent. A folder
    whose files do not match (disk error, a partial copy) is moved aside so it is made again."""
    man = folder / MANIFEST
    if not man.is_file():
        return None
    meta = json.loads(man.read_text())
    for name, digest in meta["files"].items():
        f = folder / name
        if not f.is_file() or sha256_file(f) != digest:
            bad = folder.with_name(f".{folder.name}.corrupt-{uuid.uuid4().hex[:8]}")
            try:
                os.rename(folder, bad)
                shutil.rmtree(bad, ignore_errors=True)
            except OSError:
                pass  # another process moved it first
            return None
    return meta


def publish(tmp: Path, folder: Path, meta: dict) -> dict:
    """Write the manifest into `tmp` and rename it to `folder`; when another process published first, keep
    theirs (same key, same content) and delete `tmp`."""
    meta = dict(meta)
    meta["files"] = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    (tmp / MANIFEST).write_text(json.dumps(meta, indent=1, sort_keys=True))
    try:
        os.rename(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        found = find_export(folder)
        if found is None:
            raise
        return found
    return meta


def private_tmp(folder: Path) -> Path:
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    tmp.mkdir(parents=True)
    return tmp


def read_record(folder: Path, engine: str, version: str) -> dict | None:
    f = folder / f"{engine}-{version}.json"
    try:
        return json.loads(f.read_text())
    except (OSError, ValueError):
        return None


def write_record(folder: Path, engine: str, version: str, record: dict) -> None:
    write_text_atomic(folder / f"{engine}-{version}.json", json.dumps(record, indent=1, sort_keys=True))
