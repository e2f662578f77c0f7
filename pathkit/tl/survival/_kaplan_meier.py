"""Kaplan-Meier curves (lifelines), with R ``survfit``'s log band and median CI rule as an option."""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._data import _survival_frame


# --------------------------------------------------------------------------------------------- Kaplan-Meier
@dataclass
class KaplanMeierResult:
    """Kaplan-Meier estimates, one curve per group.

    Attributes
    ----------
    median : pd.Series
        Median survival time per group (``inf`` when the curve never drops to 0.5); index = group
        (``"all"`` without ``groupby``).
    median_ci : pd.DataFrame
        CI of the median per group (columns ``lower``, ``upper``): first times where the lower / upper
        band reaches 0.5 (R's rule); ``inf`` when a band never does.
    curves : pd.DataFrame
        Long table with columns ``group``, ``time``, ``survival``, ``ci_lower``, ``ci_upper``, ``at_risk``
        (number at risk just before ``time``), ``events``, ``censored``; one row per distinct time plus
        ``time = 0``. CIs per ``conf_type``.
    counts : pd.DataFrame
        ``n`` and ``events`` per group.
    fitters : dict
        The lifelines ``KaplanMeierFitter`` per group.
    """

    median: pd.Series
    median_ci: pd.DataFrame
    curves: pd.DataFrame
    counts: pd.DataFrame
    fitters: dict
    time: str = "time"
    event: str = "event"
    groupby: str | None = None

    def survival_at(self, t: float | Iterable[float]) -> pd.DataFrame:
        """Survival probability per group at times ``t`` (rows = times, columns = groups)."""
        ts = np.atleast_1d(np.asarray(t, dtype=float))
        return pd.DataFrame({g: f.survival_function_at_times(ts).to_numpy() for g, f in self.fitters.items()},
                            index=pd.Index(ts, name=self.time))

    def __repr__(self) -> str:
        lines = [f"KaplanMeierResult(time={self.time!r}, event={self.event!r}, groupby={self.groupby!r})"]
        tab = self.counts.assign(median=self.median)
        lines.append(tab.to_string())
        return "\n".join(lines)


def _groups(df: pd.DataFrame, col: pd.Series) -> list:
    if isinstance(col.dtype, pd.CategoricalDtype):
        return [c for c in col.cat.categories if (col == c).any()]
    try:
        return sorted(pd.unique(col))
    except TypeError:
        return list(pd.unique(col))


def _log_ci(et: pd.DataFrame, surv: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """R ``survfit``'s default ``conf.type = "log"`` band: S * exp(+-z * Greenwood se of log S)."""
    from scipy import stats

    z = stats.norm.ppf(1 - alpha / 2)
    n, d = et["at_risk"].to_numpy(float), et["observed"].to_numpy(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        term = np.where(d > 0, d / (n * (n - d)), 0.0)
    se = np.sqrt(np.cumsum(term))
    with np.errstate(invalid="ignore", over="ignore"):
        lo = surv * np.exp(-z * se)
        hi = np.minimum(1.0, surv * np.exp(z * se))
    dead = surv <= 0
    lo[dead], hi[dead] = np.nan, np.nan
    return lo, hi


def _first_at_or_below(times: np.ndarray, values: np.ndarray, level: float = 0.5) -> float:
    hit = np.flatnonzero(values <= level)
    return float(times[hit[0]]) if len(hit) else float("inf")


def kaplan_meier(data, time, event, groupby=None, *, dropna: bool = False, alpha: float = 0.05,
                 conf_type: str = "log-log") -> KaplanMeierResult:
    """Kaplan-Meier survival curves, optionally one per group.

    Parameters
    ----------
    data
        AnnData (columns from ``obs``) or DataFrame.
    time, event
        Column names (or arrays). ``event`` = 1 when the event was observed, 0 when censored.
    groupby
        Column defining the groups (one curve each); ``None`` = one curve named ``"all"``.
    dropna
        Drop rows with a missing time, event or group (with a warning) instead of raising.
    alpha
        1 - confidence level of the bands (0.05 = 95%).
    conf_type
        ``"log-log"`` (lifelines' exponential Greenwood band, the default) or ``"log"`` (R ``survfit``'s
        default; use it to reproduce R's printed median CIs). The median's CI is read where each band
        crosses 0.5 (R's rule).
    """
    from lifelines import KaplanMeierFitter

    if conf_type not in ("log-log", "log"):
        raise ValueError(f"conf_type must be 'log-log' or 'log', not {conf_type!r}")
    extra = [(groupby, "group")] if groupby is not None else []
    df = _survival_frame(data, time, event, extra, dropna=dropna)
    names = df.attrs["names"]
    gcol = (groupby if isinstance(groupby, str) else "group") if groupby is not None else None
    groups = _groups(df, df[gcol]) if gcol else ["all"]
    fitters, rows, medians, med_ci, counts = {}, [], {}, [], []
    for g in groups:
        sub = df if gcol is None else df[df[gcol] == g]
        kmf = KaplanMeierFitter(alpha=alpha)
        kmf.fit(sub["time"], sub["event"], label=str(g))
        fitters[g] = kmf
        et = kmf.event_table
        sf = kmf.survival_function_.iloc[:, 0]
        if conf_type == "log":
            lo, hi = _log_ci(et, sf.to_numpy(), alpha)
        else:
            ci = kmf.confidence_interval_survival_function_
            lo, hi = ci.iloc[:, 0].to_numpy(), ci.iloc[:, 1].to_numpy()
        times = sf.index.to_numpy(dtype=float)
        curve = pd.DataFrame({
            "group": g, "time": times, "survival": sf.to_numpy(), "ci_lower": lo, "ci_upper": hi,
            "at_risk": et["at_risk"].to_numpy(), "events": et["observed"].to_numpy(),
            "censored": et["censored"].to_numpy()})
        rows.append(curve)
        medians[g] = float(kmf.median_survival_time_)
        med_ci.append((g, _first_at_or_below(times, np.nan_to_num(lo, nan=0.0)),
                       _first_at_or_below(times, np.nan_to_num(hi, nan=0.0))))
        counts.append((g, len(sub), int(sub["event"].sum())))
    curves = pd.concat(rows, ignore_index=True)
    for c in ("at_risk", "events", "censored"):
        curves[c] = curves[c].astype(int)
    median = pd.Series(medians, name=f"median {names['time']}")
    median.index.name = gcol or "group"
    median_ci = pd.DataFrame(med_ci, columns=["group", "lower", "upper"]).set_index("group")
    counts_df = pd.DataFrame(counts, columns=["group", "n", "events"]).set_index("group")
    return KaplanMeierResult(median=median, median_ci=median_ci, curves=curves, counts=counts_df,
                             fitters=fitters, time=names["time"], event=names["event"], groupby=gcol)
