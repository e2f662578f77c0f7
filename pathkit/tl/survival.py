"""Survival analysis: Kaplan-Meier, log-rank, Cox, c-index, risk groups (built on lifelines).

Conventions (GUIDE.md): ``event`` is 1 when the event (death, progression) was observed and 0 when the
subject is censored; convert ``censorship`` columns first (``event = 1 - censorship``). Times keep the unit
of the column they come from (days, months); results name that column. Risk scores follow the convention
*higher risk = shorter survival* everywhere (:func:`cindex`, :func:`risk_groups`, ABMIL's ``abmil_risk``).

``data`` is an AnnData (columns are read from ``obs``; embeddings from ``obsm``) or a pandas DataFrame.
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import TableError

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


# --------------------------------------------------------------------------------------------- inputs
def _obs(data) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    obs = getattr(data, "obs", None)
    if isinstance(obs, pd.DataFrame):
        return obs
    raise TypeError(f"data must be an AnnData or a pandas DataFrame, not {type(data).__name__}")


def _column(df: pd.DataFrame, col, role: str) -> pd.Series:
    """A column by name, or values passed directly (array-like of the frame's length)."""
    if isinstance(col, str):
        if col not in df.columns:
            raise TableError(f"{role} column {col!r} not found; available columns: {list(df.columns)}")
        return df[col]
    values = np.asarray(col)
    if values.ndim != 1 or len(values) != len(df):
        raise TableError(f"{role} values must be a column name or a 1-d array of length {len(df)}, "
                         f"got shape {values.shape}")
    return pd.Series(values, index=df.index, name=role)


def _survival_frame(data, time, event, extra: Sequence[tuple[Any, str]] = (), dropna: bool = False,
                    ) -> pd.DataFrame:
    """A clean frame with columns ``time``, ``event`` and the extra columns; validates values.

    Missing values raise :class:`TableError` naming each column and its count, unless ``dropna=True``, in
    which case the rows are dropped and a warning reports how many and why.
    """
    df = _obs(data)
    cols = {"time": _column(df, time, "time"), "event": _column(df, event, "event")}
    names = {"time": time if isinstance(time, str) else "time",
             "event": event if isinstance(event, str) else "event"}
    for col, role in extra:
        key = col if isinstance(col, str) else role
        cols[key] = _column(df, col, role)
        names[key] = key
    out = pd.DataFrame(cols, index=df.index)
    missing = {names[c]: int(n) for c, n in out.isna().sum().items() if n}
    if missing:
        what = ", ".join(f"{c!r}: {n} missing" for c, n in missing.items())
        if not dropna:
            raise TableError(f"missing values in {what} (of {len(out)} rows); fill or drop them, or pass "
                             f"dropna=True to drop those rows")
        keep = out.notna().all(axis=1)
        warnings.warn(f"dropna=True: dropped {int((~keep).sum())} of {len(out)} rows ({what})", stacklevel=3)
        out = out[keep]
    try:
        out["time"] = pd.to_numeric(out["time"]).astype(float)
    except (ValueError, TypeError) as e:
        raise TableError(f"time column {names['time']!r} is not numeric: {e}") from None
    if (out["time"] < 0).any():
        raise TableError(f"time column {names['time']!r} has {int((out['time'] < 0).sum())} negative values")
    ev = out["event"]
    if ev.dtype == bool:
        ev = ev.astype(int)
    try:
        ev = pd.to_numeric(ev)
    except (ValueError, TypeError):
        raise TableError(f"event column {names['event']!r} must be 0/1 (1 = event observed), got values "
                         f"{sorted(map(str, pd.unique(out['event'])))[:5]}") from None
    bad = ~ev.isin([0, 1])
    if bad.any():
        raise TableError(f"event column {names['event']!r} must be 0/1 (1 = event observed); found "
                         f"{sorted(pd.unique(ev[bad]))[:5]}. For a censorship column use event = 1 - censorship")
    out["event"] = ev.astype(int)
    if len(out) == 0:
        raise TableError("no rows left to analyse")
    out.attrs["names"] = names
    return out


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


def _logrank_core(time: np.ndarray, event: np.ndarray, codes: np.ndarray, k: int):
    """Observed, expected and the covariance of O - E over distinct event times (hypergeometric)."""
    order = np.argsort(time, kind="mergesort")
    time, event, codes = time[order], event[order], codes[order]
    uniq = np.unique(time[event == 1])
    n = len(time)
    obs = np.zeros(k)
    exp = np.zeros(k)
    V = np.zeros((k, k))
    # at risk at t: subjects with time >= t
    for t in uniq:
        at = time >= t
        n_t = at.sum()
        n_g = np.bincount(codes[at], minlength=k).astype(float)
        dmask = (time == t) & (event == 1)
        d_g = np.bincount(codes[dmask], minlength=k).astype(float)
        d = d_g.sum()
        obs += d_g
        e = d * n_g / n_t
        exp += e
        if n_t > 1:
            f = d * (n_t - d) / (n_t * n_t * (n_t - 1))
            V += f * (np.diag(n_g * n_t) - np.outer(n_g, n_g))
    del n
    return obs, exp, V


def logrank(data, time, event, groupby, *, dropna: bool = False) -> LogrankResult:
    """Log-rank test across the groups of ``groupby`` (two or more groups).

    Computed as R ``survival::survdiff(rho = 0)``; the statistic equals lifelines'
    ``multivariate_logrank_test``. Returns :class:`LogrankResult` (``statistic``, ``p_value``, ``dof``,
    ``table`` with observed/expected events per group).
    """
    from scipy import stats

    if groupby is None:
        raise TableError("logrank needs a groupby column naming the groups to compare")
    df = _survival_frame(data, time, event, [(groupby, "group")], dropna=dropna)
    gcol = groupby if isinstance(groupby, str) else "group"
    groups = _groups(df, df[gcol])
    if len(groups) < 2:
        raise TableError(f"logrank needs at least two groups in {gcol!r}; found {groups}")
    codes = pd.Categorical(df[gcol], categories=groups).codes.astype(int)
    k = len(groups)
    obs, exp, V = _logrank_core(df["time"].to_numpy(), df["event"].to_numpy(), codes, k)
    diff = (obs - exp)[:-1]
    Vr = V[:-1, :-1]
    stat = float(diff @ np.linalg.pinv(Vr) @ diff)
    dof = k - 1
    p = float(stats.chi2.sf(stat, dof))
    table = pd.DataFrame({"n": np.bincount(codes, minlength=k), "observed": obs, "expected": exp},
                         index=pd.Index(groups, name=gcol))
    return LogrankResult(statistic=stat, p_value=p, dof=dof, table=table, groupby=gcol)


# --------------------------------------------------------------------------------------------- Cox
@dataclass
class CoxResult:
    """A fitted Cox proportional-hazards model (lifelines ``CoxPHFitter``, Efron ties as R's ``coxph``).

    Attributes: ``params`` (log hazard ratios, pd.Series by covariate), ``standard_errors``,
    ``hazard_ratios`` (exp(params)), ``confidence_intervals`` (95% CI of the hazard ratio: columns
    ``lower``, ``upper``), ``p_values`` (Wald), ``concordance`` (Harrell's c on the fitted data),
    ``log_likelihood``, ``lr_test`` (likelihood-ratio statistic, dof, p), ``summary`` (all of it as one
    table), ``references`` (reference level of each one-hot covariate), ``n``, ``n_events``, ``fitter``.
    """

    params: pd.Series
    standard_errors: pd.Series
    hazard_ratios: pd.Series
    confidence_intervals: pd.DataFrame
    p_values: pd.Series
    concordance: float
    log_likelihood: float
    lr_test: dict
    summary: pd.DataFrame
    references: dict
    n: int
    n_events: int
    fitter: Any = field(repr=False)
    design: pd.DataFrame = field(repr=False, default=None)

    def predict_risk(self, data=None) -> pd.Series:
        """Linear predictor (log partial hazard; higher = shorter survival) for the fitted rows, or for
        a design-matrix DataFrame with the same columns as ``self.design``."""
        X = self.design if data is None else data
        return self.fitter.predict_log_partial_hazard(X)

    def __repr__(self) -> str:
        return (f"CoxResult(n={self.n}, events={self.n_events}, concordance={self.concordance:.3f})\n"
                f"{self.summary.to_string()}")


_OBSM_RE = re.compile(r"^(?P<key>[^\[\]]+)\[\s*(?P<start>\d*)\s*:\s*(?P<stop>\d*)\s*\]$")


def _embedding_block(data, spec: str, n_components: int | None, index) -> pd.DataFrame | None:
    """Columns from ``obsm``: ``"X_pca[:10]"`` (first 10 columns as stored) or a bare key (all columns,
    or its first ``n_components`` principal components when ``n_components`` is given)."""
    obsm = getattr(data, "obsm", None)
    if obsm is None:
        return None
    m = _OBSM_RE.match(spec)
    key = m.group("key") if m else spec
    if key not in obsm:
        return None
    X = np.asarray(obsm[key], dtype=float)
    if m:
        start = int(m.group("start") or 0)
        stop = int(m.group("stop") or X.shape[1])
        X = X[:, start:stop]
        names = [f"{key}_{i}" for i in range(start, start + X.shape[1])]
    elif n_components is not None:
        from sklearn.decomposition import PCA

        if np.isnan(X).any():
            raise TableError(f"obsm[{key!r}] has missing values; drop those rows first")
        X = PCA(n_components=n_components, random_state=0).fit_transform(X)
        names = [f"{key}_pc{i + 1}" for i in range(X.shape[1])]
    else:
        names = [f"{key}_{i}" for i in range(X.shape[1])]
    return pd.DataFrame(X, index=index, columns=names)


def cox(data, time, event, covariates, *, penalizer: float = 0.0, l1_ratio: float = 0.0, strata=None,
        reference: dict | None = None, n_components: int | None = None, dropna: bool = False,
        alpha: float = 0.05) -> CoxResult:
    """Fit a Cox proportional-hazards model.

    Parameters
    ----------
    data
        AnnData or DataFrame.
    time, event
        Column names; ``event`` = 1 when observed.
    covariates
        A column name or a list of them. Numeric/bool columns enter as they are; categorical / string
        columns are one-hot encoded against a reference level (the first category, or the smallest value,
        unless ``reference={"col": level}``), named ``"col[level]"``. Embeddings (AnnData only): an
        ``obsm`` key with a column slice, ``"X_pca[:10]"`` (columns ``X_pca_0..X_pca_9``), or a bare key
        such as ``"X_gigapath_slide"`` with ``n_components=10`` to use its first 10 principal components
        (``X_gigapath_slide_pc1..``); combine with ``penalizer`` for many columns.
    penalizer, l1_ratio
        Elastic-net penalty as lifelines: ``penalizer * ((1 - l1_ratio) * ||b||^2 / 2 + l1_ratio * ||b||_1)``.
        0 = the unpenalised fit (equal to R's ``coxph``).
    strata
        Column name(s) to stratify the baseline hazard on.
    reference
        Reference level per categorical covariate.
    n_components
        Principal components kept for bare ``obsm`` keys.
    dropna
        Drop rows with missing values (with a warning) instead of raising.
    """
    from lifelines import CoxPHFitter

    if isinstance(covariates, str):
        covariates = [covariates]
    covariates = list(covariates)
    strata_cols = [strata] if isinstance(strata, str) else list(strata or [])
    obs = _obs(data)
    blocks, plain = [], []
    for c in covariates:
        if isinstance(c, str) and c not in obs.columns:
            block = _embedding_block(data, c, n_components, obs.index)
            if block is None:
                raise TableError(f"covariate {c!r} is neither an obs column nor an obsm key (optionally sliced, "
                                 f"e.g. 'X_pca[:10]'); obs columns: {list(obs.columns)}"
                                 + (f"; obsm keys: {list(data.obsm.keys())}" if hasattr(data, "obsm") else ""))
            blocks.append(block)
        else:
            plain.append(c)
    df = _survival_frame(data, time, event, [(c, c) for c in plain + strata_cols], dropna=dropna)
    for b in blocks:
        df = df.join(b)
    if dropna:
        keep = df.notna().all(axis=1)
        if not keep.all():
            cols = {c: int(n) for c, n in df.isna().sum().items() if n}
            warnings.warn(f"dropna=True: dropped {int((~keep).sum())} of {len(df)} rows (missing: {cols})",
                          stacklevel=2)
            df = df[keep]
    else:
        cols = {c: int(n) for c, n in df.isna().sum().items() if n}
        if cols:
            raise TableError(f"missing values in covariates {cols} (of {len(df)} rows); pass dropna=True to "
                             f"drop those rows")
    reference = dict(reference or {})
    refs: dict = {}
    design = df[["time", "event"]].copy()
    for c in plain:
        s = df[c]
        if s.dtype == bool or pd.api.types.is_numeric_dtype(s):
            design[c] = s.astype(float)
        else:
            levels = list(s.cat.categories) if isinstance(s.dtype, pd.CategoricalDtype) else sorted(
                pd.unique(s.astype(str)))
            levels = [lv for lv in levels if (s.astype(str) == str(lv)).any()]
            ref = reference.get(c, levels[0])
            if str(ref) not in map(str, levels):
                raise TableError(f"reference level {ref!r} of {c!r} not among its values {levels}")
            refs[c] = ref
            for lv in levels:
                if str(lv) != str(ref):
                    design[f"{c}[{lv}]"] = (s.astype(str) == str(lv)).astype(float)
    for b in blocks:
        for name in b.columns:
            design[name] = df[name].astype(float)
    for c in strata_cols:
        design[c] = df[c]
    const = [c for c in design.columns if c not in ("time", "event", *strata_cols) and design[c].nunique() < 2]
    if const:
        raise TableError(f"covariates {const} are constant over the {len(design)} rows used; drop them")
    cph = CoxPHFitter(penalizer=penalizer, l1_ratio=l1_ratio, alpha=alpha)
    cph.fit(design, duration_col="time", event_col="event", strata=strata_cols or None)
    s = cph.summary
    params = cph.params_.copy()
    params.name = "coef"
    ci = pd.DataFrame({"lower": s["exp(coef) lower 95%"] if alpha == 0.05 else np.exp(
        cph.confidence_intervals_.iloc[:, 0]),
        "upper": s["exp(coef) upper 95%"] if alpha == 0.05 else np.exp(cph.confidence_intervals_.iloc[:, 1])})
    lr = cph.log_likelihood_ratio_test()
    summary = pd.DataFrame({"coef": params, "exp(coef)": np.exp(params), "se(coef)": cph.standard_errors_,
                            "hr_lower": ci["lower"], "hr_upper": ci["upper"], "z": s["z"], "p": s["p"]})
    summary.index.name = "covariate"
    return CoxResult(params=params, standard_errors=cph.standard_errors_.rename("se"),
                     hazard_ratios=np.exp(params).rename("hazard_ratio"), confidence_intervals=ci,
                     p_values=s["p"].rename("p"), concordance=float(cph.concordance_index_),
                     log_likelihood=float(cph.log_likelihood_),
                     lr_test={"statistic": float(lr.test_statistic), "dof": int(lr.degrees_freedom),
                              "p_value": float(lr.p_value)},
                     summary=summary, references=refs, n=len(design), n_events=int(design["event"].sum()),
                     fitter=cph, design=design.drop(columns=["time", "event"]))


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
    out = pd.Series(cat, index=df.index, name=key_added)
    df[key_added] = out
    if hasattr(cohort, "uns"):
        cohort.uns[key_added] = {"score": score if isinstance(score, str) else "array",
                                 "method": method if isinstance(method, str) else float(method),
                                 "cutoffs": np.asarray(cutoffs)}
    return out
