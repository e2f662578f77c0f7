"""MIL units: which cohort rows (slides) form each bag (one slide, or all slides of a patient), and where
predictions go back."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..._ids import slide_id_from_path
from ...errors import TableError


def match_slides(cohort_ids: list[str], bag_ids: list[str]) -> dict[str, str]:
    """cohort slide id -> bag slide id: exact, else after dropping a slide-file extension."""
    bags = set(bag_ids)
    stripped: dict[str, str] = {}
    for b in bag_ids:
        stripped.setdefault(slide_id_from_path(b), b)
    out = {}
    for c in cohort_ids:
        if c in bags:
            out[c] = c
        elif slide_id_from_path(c) in stripped:
            out[c] = stripped[slide_id_from_path(c)]
    return out


@dataclass
class Units:
    """One bag per unit: ``bags[i]`` (bag ids pooled into unit i), ``rows[i]`` (cohort row positions),
    ``patient[i]``, ``table`` (one row of the cohort per unit, for its targets)."""

    ids: np.ndarray
    bags: list
    rows: list
    patient: np.ndarray
    table: pd.DataFrame

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray) -> Units:
        """The units where ``keep`` (a boolean mask) is True."""
        idx = np.flatnonzero(keep)
        return Units(ids=self.ids[idx], bags=[self.bags[i] for i in idx], rows=[self.rows[i] for i in idx],
                     patient=self.patient[idx], table=self.table.iloc[idx])


def cohort_obs(cohort) -> pd.DataFrame:
    """The slides table of a cohort: a DataFrame, an AnnData's ``obs``, or a MuData's ``"slides"`` obs."""
    if isinstance(cohort, pd.DataFrame):
        return cohort
    if hasattr(cohort, "mod"):  # MuData from pk.io.link
        if "slides" not in cohort.mod:
            raise TableError(f"MuData has modalities {list(cohort.mod)}; MIL needs 'slides' (pk.io.link)")
        return cohort.mod["slides"].obs
    return cohort.obs


def slide_ids(obs: pd.DataFrame) -> np.ndarray:
    return (obs["slide_id"] if "slide_id" in obs.columns else pd.Series(obs.index, index=obs.index)).astype(
        str).to_numpy()


def make_units(cohort, bagset, *, bag_by: str = "slide", split_by: str | None = "patient_id",
               need: list[str] | None = None, require_split: bool = True) -> Units:
    """Line the cohort up with the bags; drop (with a warning and a count) slides without a bag and
    patients without a value in ``need``."""
    if bag_by not in ("slide", "patient"):
        raise ValueError(f"bag_by must be 'slide' or 'patient', not {bag_by!r}")
    obs = cohort_obs(cohort)
    need = list(need or [])
    for c in need:
        if c not in obs.columns:
            raise TableError(f"cohort has no column {c!r}; available: {list(obs.columns)}")
    has_split = split_by is not None and split_by in obs.columns
    if (require_split or bag_by == "patient") and not has_split:
        raise TableError(f"cohort has no column {split_by!r} to group slides by patient (add obs['patient_id'], "
                         f"or pass split_by='slide_id' if every slide is its own patient)")
    sids = slide_ids(obs)
    match = match_slides(list(sids), bagset.ids())
    has_bag = np.array([s in match for s in sids], dtype=bool)
    if not has_bag.any():
        raise TableError(f"no cohort slide id matches a tile bag: cohort e.g. {list(sids[:3])}, bags e.g. "
                         f"{bagset.ids()[:3]}")
    if (~has_bag).sum():
        warnings.warn(f"{int((~has_bag).sum())} cohort slides have no tile features and are skipped "
                      f"(e.g. {list(sids[~has_bag][:3])})", stacklevel=3)
    patient = obs[split_by].astype(object).to_numpy() if has_split else sids.astype(object)
    ok_pat = pd.notna(patient)
    if (has_bag & ~ok_pat).sum():
        warnings.warn(f"{int((has_bag & ~ok_pat).sum())} slides have no {split_by!r} value and are dropped",
                      stacklevel=3)
    has_label = obs[need].notna().all(axis=1).to_numpy() if need else np.ones(len(obs), bool)
    miss = has_bag & ok_pat & ~has_label
    if miss.sum():
        n_pat = len(pd.unique(patient[miss].astype(str)))
        warnings.warn(f"labels missing for {n_pat} patients ({int(miss.sum())} slides) in {need}: dropped",
                      stacklevel=3)
    use = np.flatnonzero(has_bag & ok_pat & has_label)
    patient = patient.astype(str)
    if bag_by == "slide":
        return Units(ids=sids[use], bags=[[match[sids[i]]] for i in use], rows=[np.array([i]) for i in use],
                     patient=patient[use], table=obs.iloc[use])
    groups: dict[str, list[int]] = {}
    for i in use:
        groups.setdefault(patient[i], []).append(i)
    ids, bags, rows, first = [], [], [], []
    for p, idx in groups.items():
        if need:
            vals = obs.iloc[idx][need].astype(str).drop_duplicates()
            if len(vals) > 1:
                raise TableError(f"patient {p!r} has slides with different {need} values "
                                 f"({vals.to_dict('list')}); bags per patient need one value per patient")
        ids.append(p)
        bags.append([match[sids[i]] for i in idx])
        rows.append(np.array(idx))
        first.append(idx[0])
    return Units(ids=np.array(ids, dtype=object).astype(str), bags=bags, rows=rows, patient=np.array(ids).astype(str),
                 table=obs.iloc[first])


def check_folds(patient: np.ndarray, fold_sets) -> None:
    """Refuse folds that put a patient on both sides, or a patient in two test folds."""
    seen: dict[str, int] = {}
    for k, (tr, te) in enumerate(fold_sets):
        leak = set(patient[tr]) & set(patient[te])
        if leak:
            raise TableError(f"fold {k}: {len(leak)} patients in both train and test, e.g. {sorted(leak)[:3]}")
        if len(tr) == 0 or len(te) == 0:
            raise TableError(f"fold {k} has an empty train or test set")
        for p in set(patient[te]):
            if p in seen:
                raise TableError(f"patient {p!r} is held out in folds {seen[p]} and {k}; out-of-fold "
                                 f"predictions need each patient in one test fold")
            seen[p] = k


def write_predictions(obs: pd.DataFrame, units: Units, sel: np.ndarray, task: str, pred: np.ndarray,
                      classes, key: str) -> pd.DataFrame:
    """Write the predictions of units ``sel`` to every slide row of those units; return the per-slide table.

    Columns: ``{key}_prob_<class>`` + ``{key}_pred`` (binary / multiclass), ``{key}_prob_<label>`` +
    ``{key}_pred_<label>`` (multilabel), ``{key}_pred`` or ``{key}_pred_<column>`` (regression, one or several
    columns), ``{key}_risk`` (survival / cox). Rows not predicted are NaN / missing.
    """
    rows = np.concatenate([units.rows[i] for i in sel]) if len(sel) else np.array([], int)
    rep = np.concatenate([np.full(len(units.rows[i]), j) for j, i in enumerate(sel)]) if len(sel) else rows
    P = pred[rep]
    sids = slide_ids(obs)
    table = pd.DataFrame({"unit": units.ids[sel][rep] if len(sel) else [], "patient": units.patient[sel][rep]
                          if len(sel) else []}, index=pd.Index(sids[rows], name="slide_id"))

    def put(name, values, dtype=float):
        if dtype is float:
            col = np.full(len(obs), np.nan)
            col[rows] = values
        else:
            col = pd.Series(pd.NA if dtype == "boolean" else None, index=obs.index, dtype=dtype)
            col.iloc[rows] = values
        obs[f"{key}_{name}"] = col
        table[name] = np.asarray(values)

    if task in ("binary", "multiclass", "multilabel"):
        for j, c in enumerate(classes):
            put(f"prob_{c}", P[:, j])
        if task == "multilabel":
            for j, c in enumerate(classes):
                put(f"pred_{c}", P[:, j] >= 0.5, dtype="boolean")
        else:
            labels = np.array(classes, dtype=object)[P.argmax(1)] if len(P) else np.array([], dtype=object)
            col = pd.Series(None, index=obs.index, dtype=object)
            col.iloc[rows] = labels
            obs[f"{key}_pred"] = pd.Categorical(col, categories=classes)
            table["pred"] = labels
    elif task == "regression":
        if len(classes) == 1:
            put("pred", P[:, 0])
        else:
            for j, c in enumerate(classes):
                put(f"pred_{c}", P[:, j])
    else:
        put("risk", P)
    return table
