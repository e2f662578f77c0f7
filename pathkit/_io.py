"""Atomic writes and h5ad-safe values: a reader never sees a half-written file, and an interrupted run
leaves no file at the destination (the cohort's resume logic relies on that)."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np

_LIBC: list = []


@contextlib.contextmanager
def atomic_write(path, suffix: str = ""):
    """Yield a temporary path beside `path`; on success it replaces `path` (``os.replace``), on error it is
    removed. The parent folder is created. `suffix` ends the temporary name, for writers that infer the
    format from it (``path.suffix`` for plotly's ``write_image``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    from ._owner import tag

    # the owner tag (host, pid, start time) lets a clean-up tell a dead writer's file from a live one's
    tmp = path.with_name(f".{path.name}.{tag()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text_atomic(path, text: str) -> Path:
    with atomic_write(path) as tmp:
        Path(tmp).write_text(text)
    return Path(path)


def write_h5ad_atomic(adata, path) -> Path:
    """``adata.write_h5ad(path)`` through :func:`atomic_write`."""
    with atomic_write(path) as tmp:
        adata.write_h5ad(tmp)
    return Path(path)


def h5ad_safe(obj):
    """A value h5ad can store in ``uns``: tuples -> lists, numpy scalars -> python, paths and dtypes -> str,
    None dropped from dicts (h5ad cannot hold None)."""
    if isinstance(obj, dict):
        return {str(k): h5ad_safe(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, (list, tuple)):
        return [h5ad_safe(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if type(obj).__module__ == "torch" and type(obj).__name__ == "dtype":
        return str(obj).replace("torch.", "")
    if isinstance(obj, str) and type(obj) is not str:  # torch.__version__ (TorchVersion) and kin: h5ad refuses them
        return str(obj)
    return obj


def malloc_trim() -> None:
    """Hand freed heap pages back to the OS (glibc). Without it a long embedding or training run creeps up by
    ~100 MB per 1,000 tiles from fragmentation of per-batch buffers (docs/benchmarks_memory.md)."""
    try:
        if not _LIBC:
            import ctypes

            _LIBC.append(ctypes.CDLL("libc.so.6"))
        _LIBC[0].malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows): nothing to trim
        pass


def h5ad_safe_obs(df):
    """A copy of a DataFrame that ``write_h5ad`` can store: an object column holding no value becomes float
    (all NaN), and one mixing strings with numbers or other objects holds their ``str`` (missing values stay
    missing). h5ad refuses both with a TypeError that names no column."""
    import pandas as pd

    out = df.copy()
    for c in out.columns:
        s = out[c]
        if s.dtype != object:
            continue
        present = s.notna()
        if not present.any():
            out[c] = pd.Series(np.nan, index=s.index, dtype=float)
        elif not s[present].map(lambda v: isinstance(v, str)).all():
            out[c] = s.map(lambda v: v if not pd.notna(v) or isinstance(v, str) else str(v)).where(present, np.nan)
    return out
