"""Pieces shared by zero-shot scoring and its evaluation: the slides of a tile input, cohort ids, softmax."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import TableError
from . import prompts as _prompts


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


def encode_prompts(encoder, classes: dict, templates: list[str], batch_size: int = 64,
                   progress: bool = False) -> dict:
    """Embed every (class name x template) prompt once: {class: array [n_names, n_templates, E]},
    each prompt embedding L2-normalised. `encoder`: anything with `encode_text(list[str]) -> [T, E]`."""
    import torch

    from .._progress import progress_bar

    texts = [_prompts.fill(t, n) for names in classes.values() for n in names for t in templates]
    starts = range(0, len(texts), batch_size)
    with torch.inference_mode():
        emb = np.concatenate([_as_numpy(encoder.encode_text(texts[i:i + batch_size]))
                              for i in progress_bar(starts, desc=f"text prompts ({len(texts)})", unit="batch",
                                            disable=not progress or len(starts) < 2)])
    emb = _l2n(emb)
    out, i = {}, 0
    for c, names in classes.items():
        n = len(names) * len(templates)
        out[c] = emb[i:i + n].reshape(len(names), len(templates), -1)
        i += n
    return out


def class_embeddings(prompt_emb: dict, names=None, template_mask=None) -> np.ndarray:
    """Average the (normalised) prompt embeddings of each class and re-normalise -> [C, E].
    names: per class, the index of the one name to use (None: all names); template_mask: bool [T]."""
    rows = []
    for i, e in enumerate(prompt_emb.values()):
        e = e if names is None else e[names[i]:names[i] + 1]
        e = e if template_mask is None else e[:, np.asarray(template_mask, bool)]
        rows.append(e.reshape(-1, e.shape[-1]).mean(axis=0))
    return _l2n(np.stack(rows))


def _l2n(x: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(x, axis=-1, keepdims=True)
    if np.any(n == 0):
        raise ValueError("a zero vector cannot be L2-normalised (empty tile features or text embedding)")
    return x / n


# -------------------------------------------------------------------------------------------- text


def _as_numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().float().cpu().numpy()
    return np.asarray(t, dtype=np.float64)
