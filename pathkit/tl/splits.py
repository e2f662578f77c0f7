"""Cross-validation splits at the patient level (no patient in two folds)."""
from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TableError

__all__ = ["inner_split", "patient_folds", "read_splits", "site_folds"]


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


def site_folds(sites: Sequence, y: Sequence | None = None, folds: int = 3, seed: int = 0,
               n_tries: int = 500) -> np.ndarray:
    """Site-preserved folds (Howard et al., Nat Commun 2021): fold number of each row, with every site (and so
    every patient of it) in exactly one fold, so no site is in both train and test.

    Whole sites are assigned to folds so that each fold's size and class mix are as close as possible to an
    even share of the total: Howard et al. solve this with quadratic programming; here the best of
    `n_tries` seeded random greedy assignments is kept (the same objective: squared deviation of every fold's
    per-class counts from its even share).
    """
    sites = np.asarray(sites).astype(str)
    uniq, site_idx = np.unique(sites, return_inverse=True)
    if len(uniq) < folds:
        raise TableError(f"{len(uniq)} site(s) for {folds} site-preserved folds: a fold needs a site of its "
                         "own; use fewer folds or a finer site key")
    strat = _strat_labels(None if y is None else np.asarray(y), len(sites))
    counts = np.zeros((len(uniq), strat.max() + 1))
    np.add.at(counts, (site_idx, strat), 1)
    target = counts.sum(0) / folds
    rng = np.random.default_rng(seed)
    best, best_cost = None, np.inf
    order_by_size = np.argsort(-counts.sum(1), kind="stable")
    for t in range(n_tries):
        # first try: largest sites first; then random orders
        order = order_by_size if t == 0 else rng.permutation(len(uniq))
        load = np.zeros((folds, counts.shape[1]))
        assign = np.empty(len(uniq), dtype=int)
        for s in order:
            cost = (((load + counts[s]) - target) ** 2).sum(1) - ((load - target) ** 2).sum(1)
            f = int(np.argmin(cost + 1e-9 * rng.random(folds)))
            assign[s] = f
            load[f] += counts[s]
        if (load.sum(1) == 0).any():
            continue
        total = float(((load - target) ** 2).sum())
        if total < best_cost:
            best, best_cost = assign.copy(), total
    if best is None:
        raise TableError(f"could not give each of {folds} folds a site; use fewer folds")
    return best[site_idx]


def site_fold_sets(ids: Sequence, y: Sequence | None = None, folds: int = 5, seed: int = 0
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train_idx, test_idx) pairs of :func:`site_folds` over rows named by TCGA barcodes (patient or slide):
    the tissue source site is the barcode's second field."""
    from ..tcga import parse_barcodes

    parts = parse_barcodes(pd.Series(list(ids), dtype=object).astype(str), errors="coerce")
    site = parts["patient"].str.split("-").str[1]
    if site.isna().any():
        bad = [str(i) for i, m in zip(ids, site.isna()) if m][:3]
        raise TableError(f"splits='site' needs TCGA barcodes to read the tissue source site; not barcodes: "
                         f"{bad}")
    f = site_folds(site.to_numpy(), y, folds=folds, seed=seed)
    return [(np.flatnonzero(f != k), np.flatnonzero(f == k)) for k in range(folds)]
