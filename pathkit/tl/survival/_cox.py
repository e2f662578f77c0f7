"""Cox proportional-hazards models (lifelines ``CoxPHFitter``) on obs columns and ``obsm`` embeddings."""
from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ...errors import TableError
from ._data import _obs, _survival_frame


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


def _refuse_collinear(X: pd.DataFrame, penalizer: float) -> None:
    """Name the covariates that are linear combinations of earlier ones (lifelines only says 'collinear')."""
    if X.shape[1] < 2 or penalizer > 0:
        return
    A = X.to_numpy(dtype=float)
    A = A - A.mean(axis=0)
    kept, bad = [], []
    for j in range(A.shape[1]):
        cols = [*kept, j]
        if np.linalg.matrix_rank(A[:, cols], tol=1e-8 * max(1.0, float(np.abs(A).max()))) < len(cols):
            bad.append(X.columns[j])
        else:
            kept.append(j)
    if bad:
        raise TableError(f"covariate(s) {bad} are linear combinations of the others (collinear) over the {len(X)} rows "
                         f"used (e.g. one-hot levels that sum to another column, or a copy); drop them or pass "
                         "penalizer=0.1")


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
            if len(levels) < 2:
                raise TableError(f"covariate {c!r} has a single value {levels} over the {len(df)} rows used: it "
                                 "cannot be estimated; drop it")
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
    if int(design["event"].sum()) == 0:
        raise TableError(f"cox: no event among the {len(design)} rows used: hazard ratios cannot be estimated "
                         "(R's coxph gives none either); check the event column (1 = event observed)")
    _refuse_collinear(design.drop(columns=["time", "event", *strata_cols]), penalizer)
    from lifelines.exceptions import ConvergenceError

    cph = CoxPHFitter(penalizer=penalizer, l1_ratio=l1_ratio, alpha=alpha)
    try:
        cph.fit(design, duration_col="time", event_col="event", strata=strata_cols or None)
    except ConvergenceError as e:
        first = str(e).strip().splitlines()[0]
        raise TableError(f"cox did not converge with covariates {list(design.columns[2:])}: {first}. Common causes: "
                         "a covariate that separates events perfectly, or too few events; drop covariates or pass "
                         "penalizer=0.1") from None
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
