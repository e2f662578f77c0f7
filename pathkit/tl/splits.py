"""Cross-validation splits at the patient level (no patient in two folds)."""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TableError

__all__ = ["inner_split", "patient_folds", "read_splits"]


def _strat_labels(y: np.ndarray | None, n: int) -> np.ndarray:
    if y is None:
        return np.zeros(n, dtype=int)
    return pd.factorize(pd.Series(y).astype(str))[0]


def patient_folds(groups: Sequence, y: Sequence | None = None, folds: int = 5, seed: int = 0
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``folds`` (train_idx, test_idx) pairs over rows, stratified by ``y`` and grouped by ``groups``.

    Uses sklearn's ``StratifiedGroupKFold``: every group (patient) lands in exactly one test fold.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    groups = np.asarray(groups)
    n_groups = len(pd.unique(groups))
    if n_groups < folds:
        raise TableError(f"{folds} folds need at least {folds} patients; found {n_groups}")
    strat = _strat_labels(y, len(groups))
    cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The least populated class")
        return [(tr, te) for tr, te in cv.split(np.zeros(len(groups)), strat, groups)]


def inner_split(groups: Sequence, y: Sequence | None = None, val_fraction: float = 0.2, seed: int = 0
                ) -> tuple[np.ndarray, np.ndarray]:
    """One grouped, stratified (train_idx, val_idx) split holding out about ``val_fraction`` of the
    patients, for early stopping inside a training fold."""
    n_splits = max(2, round(1 / val_fraction))
    n_groups = len(pd.unique(np.asarray(groups)))
    n_splits = min(n_splits, n_groups)
    if n_splits < 2:
        raise TableError("an inner validation split needs at least two patients in the training fold")
    return patient_folds(groups, y, folds=n_splits, seed=seed)[0]


def read_splits(splits) -> list[tuple[set, set]]:
    """User splits as a list of (train_ids, test_ids) sets.

    ``splits`` is a folder of ``splits_{k}.csv`` files (columns ``train`` and ``val``: the ids held in
    each part, as in ``tcga/*/splits_5fold``), a list of such csv paths, or a list of ``(train_ids,
    test_ids)`` pairs. The ``val`` column is the held-out (test) part of each fold.
    """
    if isinstance(splits, (str, Path)):
        folder = Path(splits)
        if not folder.is_dir():
            raise TableError(f"splits folder {folder} does not exist")
        files = sorted(folder.glob("splits_*.csv"), key=lambda p: int(re.sub(r"\D", "", p.stem) or 0))
        if not files:
            raise TableError(f"no splits_<k>.csv files in {folder}")
        splits = files
    out = []
    for item in splits:
        if isinstance(item, (str, Path)):
            df = pd.read_csv(item)
            missing = [c for c in ("train", "val") if c not in df.columns]
            if missing:
                raise TableError(f"{item}: columns {missing} missing (need 'train' and 'val' id columns)")
            tr = set(df["train"].dropna().astype(str))
            te = set(df["val"].dropna().astype(str))
            src = str(item)
        else:
            tr, te = (set(map(str, part)) for part in item)
            src = f"fold {len(out)}"
        both = tr & te
        if both:
            raise TableError(f"{src}: {len(both)} ids are in both train and val, e.g. {sorted(both)[:3]}")
        out.append((tr, te))
    return out
