"""Survival analysis: Kaplan-Meier, log-rank, Cox, c-index, risk groups (built on lifelines).

Conventions (GUIDE.md): ``event`` is 1 when the event (death, progression) was observed and 0 when the
subject is censored; convert ``censorship`` columns first (``event = 1 - censorship``). Times keep the unit
of the column they come from (days, months); results name that column. Risk scores follow the convention
*higher risk = shorter survival* everywhere (:func:`cindex`, :func:`risk_groups`, ABMIL's ``abmil_risk``).

``data`` is an AnnData (columns are read from ``obs``; embeddings from ``obsm``) or a pandas DataFrame.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ...errors import TableError
from ._cox import CoxResult, cox
from ._data import _column, _obs, _survival_frame
from ._kaplan_meier import KaplanMeierResult, _groups, kaplan_meier

__all__ = [
    "CoxResult",
    "KaplanMeierResult",
    "LogrankResult",
    "cindex",
    "cox",
    "kaplan_meier",
    "logrank",
    "risk_groups",
]


# --------------------------------------------------------------------------------------------- log-rank
@dataclass
class LogrankResult:
    """Log-rank (Mantel-Cox) test of equal survival across groups.

    ``statistic`` is the chi-square statistic with ``dof`` = groups - 1 degrees of freedom, ``p_value`` its
    upper tail; ``table`` has per group ``n``, ``observed`` and ``expected`` events (as R's ``survdiff``).
    """

    statistic: float
    p_value: float
    dof: int
    table: pd.DataFrame
    groupby: str | None = None

    def __repr__(self) -> str:
        return (f"LogrankResult(statistic={self.statistic:.4g}, dof={self.dof}, p_value={self.p_value:.4g})\n"
                f"{self.table.to_string()}")


def _observed_expected(time: np.ndarray, event: np.ndarray, codes: np.ndarray, k: int):
    """Observed and expected events per group (R ``survdiff``'s table) from lifelines' grouped survival
    table: expected = sum over event times of d_t * n_g,t / n_t."""
    from lifelines.utils import group_survival_table_from_events

    _, removed, observed, _ = group_survival_table_from_events(codes, time, event)
    cols = [f"observed:{g}" for g in range(k)]
    d = observed[cols].to_numpy(float)
    out = removed[[f"removed:{g}" for g in range(k)]].to_numpy(float)
    at_risk = out[::-1].cumsum(axis=0)[::-1]  # subjects still followed just before each time
    n_t, d_t = at_risk.sum(axis=1), d.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        exp = np.nansum(at_risk * (d_t / n_t)[:, None], axis=0)
    return d.sum(axis=0), exp


def logrank(data, time, event, groupby, *, dropna: bool = False) -> LogrankResult:
    """Log-rank test across the groups of ``groupby`` (two or more groups).

    The test is lifelines' ``multivariate_logrank_test`` (equal to R ``survival::survdiff(rho = 0)``); the
    observed / expected table comes from lifelines' grouped survival table. Returns
    :class:`LogrankResult` (``statistic``, ``p_value``, ``dof``, ``table`` with observed/expected events per
    group).
    """
    from lifelines.statistics import multivariate_logrank_test

    if groupby is None:
        raise TableError("logrank needs a groupby column naming the groups to compare")
    df = _survival_frame(data, time, event, [(groupby, "group")], dropna=dropna)
    gcol = groupby if isinstance(groupby, str) else "group"
    groups = _groups(df, df[gcol])
    if len(groups) < 2:
        raise TableError(f"logrank needs at least two groups in {gcol!r}; found {groups}")
    if int(df["event"].sum()) == 0:
        raise TableError(f"logrank: no event among the {len(df)} rows: the groups cannot be compared (every "
                         "survival curve stays at 1); check the event column (1 = event observed)")
    if len(groups) > 10 and pd.api.types.is_numeric_dtype(df[gcol]):
        warnings.warn(f"logrank: {gcol!r} is numeric with {len(groups)} distinct values, so each value is a group; "
                      f"for a continuous score make groups first (pk.tl.risk_groups) or use pk.tl.cox",
                      UserWarning, stacklevel=2)
    codes = pd.Categorical(df[gcol], categories=groups).codes.astype(int)
    k = len(groups)
    t, e = df["time"].to_numpy(), df["event"].to_numpy()
    res = multivariate_logrank_test(t, codes, e)
    stat, dof, p = float(res.test_statistic), int(res.degrees_of_freedom), float(res.p_value)
    obs, exp = _observed_expected(t, e, codes, k)
    table = pd.DataFrame({"n": np.bincount(codes, minlength=k), "observed": obs, "expected": exp},
                         index=pd.Index(groups, name=gcol))
    return LogrankResult(statistic=stat, p_value=p, dof=dof, table=table, groupby=gcol)


# --------------------------------------------------------------------------------------------- c-index
def cindex(time, risk, event, *, data=None) -> float:
    """Harrell's concordance index of a risk score.

    **Higher risk = shorter survival**: a perfect risk score gives 1.0, a random one about 0.5, and a
    score where higher means *longer* survival (e.g. predicted survival time) gives values below 0.5 —
    negate it first. Pairs tied in risk count 1/2 (lifelines' ``concordance_index`` on ``-risk``).

    ``time``, ``risk``, ``event`` are arrays, or column names of ``data`` (AnnData / DataFrame).
    """
    from lifelines.utils import concordance_index

    if data is not None:
        df = _survival_frame(data, time, event, [(risk, "risk")])
        t, e, r = df["time"].to_numpy(), df["event"].to_numpy(), df[risk if isinstance(risk, str) else "risk"]
        r = pd.to_numeric(r).to_numpy(dtype=float)
    else:
        t = np.asarray(time, dtype=float)
        r = np.asarray(risk, dtype=float)
        e = np.asarray(event).astype(int)
        if not (len(t) == len(r) == len(e)):
            raise ValueError(f"time, risk and event differ in length: {len(t)}, {len(r)}, {len(e)}")
        bad = np.isnan(t) | np.isnan(r)
        if bad.any():
            raise ValueError(f"{int(bad.sum())} missing values in time/risk; drop them first")
    if e.sum() == 0:
        raise ValueError("c-index is undefined without any observed event")
    return float(concordance_index(t, -r, e))


# --------------------------------------------------------------------------------------------- risk groups
def risk_groups(cohort, score, method: str | float = "median", key_added: str = "risk_group",
                labels: Sequence[str] | None = None) -> pd.Series:
    """Split subjects into risk groups by a score (higher score = higher risk).

    Parameters
    ----------
    cohort
        AnnData (written to ``obs[key_added]``) or DataFrame (written to column ``key_added``).
    score
        Column name (e.g. ``"abmil_risk"``) or array.
    method
        ``"median"`` -> ``low`` / ``high`` (score > median is high), ``"tertile"`` -> ``low`` / ``mid`` /
        ``high``, ``"quartile"`` -> ``Q1``..``Q4``, or a number: the cut (score > cut is high).
    labels
        Custom group names (low to high).

    Returns
    -------
    Writes an ordered categorical column ``key_added`` (missing scores stay missing) and, for AnnData,
    ``uns[key_added] = {"score", "method", "cutoffs"}``. Returns the column.
    """
    df = _obs(cohort)
    s = pd.to_numeric(_column(df, score, "score"), errors="coerce").astype(float)
    valid = s.dropna()
    if valid.empty:
        raise TableError(f"score {score!r} has no numeric values")
    if valid.nunique() < 2:
        raise TableError(f"score {score!r} has a single value ({valid.iloc[0]:g}) over {len(valid)} rows: it cannot "
                         "split them into risk groups")
    if isinstance(method, str):
        qs = {"median": [0.5], "tertile": [1 / 3, 2 / 3], "quartile": [0.25, 0.5, 0.75]}
        if method not in qs:
            raise ValueError(f"method must be 'median', 'tertile', 'quartile' or a number, not {method!r}")
        cutoffs = [float(np.quantile(valid, q)) for q in qs[method]]
        default = {"median": ["low", "high"], "tertile": ["low", "mid", "high"],
                   "quartile": ["Q1", "Q2", "Q3", "Q4"]}[method]
    else:
        cutoffs = [float(method)]
        default = ["low", "high"]
    labels = list(labels) if labels is not None else default
    if len(labels) != len(cutoffs) + 1:
        raise ValueError(f"{len(cutoffs) + 1} labels needed for method {method!r}, got {labels}")
    codes = np.searchsorted(np.asarray(cutoffs), s.to_numpy(), side="left")
    cat = pd.Categorical.from_codes(np.where(s.isna(), -1, codes), categories=labels, ordered=True)
    empty = [lab for lab, n in zip(labels, np.bincount(codes[s.notna().to_numpy()], minlength=len(labels))) if n == 0]
    if empty:
        warnings.warn(f"risk_groups: group(s) {empty} are empty (ties in {score!r} at the cutoffs {cutoffs})",
                      UserWarning, stacklevel=2)
    out = pd.Series(cat, index=df.index, name=key_added)
    df[key_added] = out
    if hasattr(cohort, "uns"):
        cohort.uns[key_added] = {"score": score if isinstance(score, str) else "array",
                                 "method": method if isinstance(method, str) else float(method),
                                 "cutoffs": np.asarray(cutoffs)}
    return out
