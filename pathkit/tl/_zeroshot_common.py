"""Pieces shared by zero-shot scoring and its evaluation: the slides of a tile input, cohort ids, softmax."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import TableError


def softmax(scores: np.ndarray, logit_scale: float) -> np.ndarray:
    z = np.asarray(scores, dtype=np.float64) * float(logit_scale)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _slides(tiles) -> list[tuple[str, object]]:
    from anndata import AnnData

    if isinstance(tiles, AnnData):
        items = [(None, tiles)]
    elif isinstance(tiles, dict):
        items = list(tiles.items())
    elif isinstance(tiles, (list, tuple)):
        items = [(None, a) for a in tiles]
    else:
        raise TypeError(f"tiles must be a tile AnnData, or a list / dict of them (got {type(tiles).__name__})")
    out = []
    for sid, a in items:
        if not isinstance(a, AnnData):
            raise TypeError(f"tiles: expected AnnData, got {type(a).__name__}")
        if sid is None:
            sid = (a.uns.get("slide", {}) or {}).get("slide_id")
        if sid is None and "slide_id" in a.obs and a.n_obs:
            sid = str(a.obs["slide_id"].iloc[0])
        out.append((str(sid) if sid is not None else f"slide_{len(out)}", a))
    ids = [s for s, _ in out]
    if len(set(ids)) != len(ids):
        dup = sorted({s for s in ids if ids.count(s) > 1})
        raise TableError(f"tiles: duplicate slide ids {dup}; pass a dict {{slide_id: adata}}")
    return out


def _cohort_ids(cohort) -> pd.Index:
    if "slide_id" in cohort.obs:
        return pd.Index(cohort.obs["slide_id"].astype(str))
    return pd.Index(cohort.obs_names.astype(str))
