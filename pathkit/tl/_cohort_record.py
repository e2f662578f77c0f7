"""The resume record of a per-slide h5ad (``uns["cohort_job"]``) and the checks on what a resume reuses.

A per-slide file holds one tiling of one slide file and the features of every tile model run on it, side by
side (``obsm["X_<model>"]``). Its record::

    {"slide_sha256": ..., "tiling_hash": ..., "n_tiles": ...,
     "features": {"X_<model>": {"params_hash": ..., "sha256": <sha256 of the float32 feature bytes>}},
     "slide_params": {<slide key>: <hash of the slide model's parameters and of its tile features'>}}

Files written before features sat side by side (one ``params_hash`` for model + tiling) are read as a record
of their single model, so an old ``out_dir`` resumes without recomputing.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np


def stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def feature_sha256(X) -> str:
    """sha256 of a feature matrix (its float32 bytes and shape): what a resume checks before reusing it."""
    a = np.ascontiguousarray(np.asarray(X, dtype=np.float32))
    h = hashlib.sha256(str(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


def read_uns(path: Path, key: str):
    """One uns entry of an h5ad without loading X (None when absent or unreadable)."""
    import h5py
    from anndata.io import read_elem

    try:
        with h5py.File(path, "r") as f:
            if "uns" in f and key in f["uns"]:
                return read_elem(f["uns"][key])
    except (OSError, KeyError, ValueError):
        return None
    return None


def read_obsm(path: Path, key: str):
    """``obsm[key]`` of an h5ad without loading the rest (None when absent or unreadable)."""
    import h5py
    from anndata.io import read_elem

    try:
        with h5py.File(path, "r") as f:
            if "obsm" in f and key in f["obsm"]:
                return np.asarray(read_elem(f["obsm"][key]))
    except (OSError, KeyError, ValueError):
        return None
    return None


def unreadable(path: Path) -> str:
    """Why the h5ad at `path` cannot be opened ("" when it can)."""
    from .._files import open_h5
    from ..errors import CorruptFileError

    try:
        with open_h5(path, "per-slide h5ad"):
            return ""
    except CorruptFileError as exc:
        return str(exc).split(": cannot read this per-slide h5ad: ", 1)[-1].split(";", 1)[0]


def read_record(path: Path, feature_key: str, legacy_hash: str, tiling_hash: str, params_hash: str) -> dict | None:
    """The record of `path`, in the current form (old single-model records converted); None if none."""
    rec = read_uns(path, "cohort_job") if Path(path).exists() else None
    if not isinstance(rec, dict) or "slide_sha256" not in rec:
        return None
    rec = dict(rec)
    if "features" not in rec:  # written before several models could share a file
        old = rec.pop("params_hash", None)
        rec["features"] = {}
        if old == legacy_hash:  # same model and same tiling as now
            rec["tiling_hash"] = tiling_hash
            rec["features"] = {feature_key: {"params_hash": params_hash, "sha256": ""}}
        rec["slide_params"] = {}  # the slide keys now name their tile model: computed again (cheap)
    rec["features"] = {k: dict(v) for k, v in dict(rec.get("features") or {}).items()}
    rec["slide_params"] = dict(rec.get("slide_params") or {})
    return rec


def features_intact(path: Path, key: str, entry: dict, n_tiles: int | None = None) -> bool:
    """True when ``obsm[key]`` of `path` is there, finite and has the checksum recorded when it was written
    (a record without one, from an older pathkit, only needs finite values of the right length)."""
    X = read_obsm(path, key)
    if X is None or X.ndim != 2 or (n_tiles is not None and X.shape[0] != int(n_tiles)):
        return False
    if entry.get("sha256"):
        return feature_sha256(X) == entry["sha256"]
    return bool(np.isfinite(X).all())


def check_finite(X, what: str, weights_hint: str) -> None:
    """Raise :class:`~pathkit.errors.WeightsError` when features hold NaN or inf (weights with NaN tensors, a
    half-precision overflow), naming how many and where to look."""
    from ..errors import WeightsError

    X = np.asarray(X)
    bad = ~np.isfinite(X)
    if bad.any():
        rows = int(bad.reshape(len(X), -1).any(axis=1).sum()) if X.ndim > 1 else int(bad.sum())
        raise WeightsError(f"{what}: {rows} of {len(X)} feature row(s) hold NaN or inf ({int(bad.sum())} value(s)). "
                           f"The model's output is not usable; check its weights ({weights_hint}) for NaN/inf "
                           "tensors, or try dtype='float32' in case half precision overflowed")
