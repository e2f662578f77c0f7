"""Probing frozen encoders (the eva protocol): linear head, kNN and few-shot on any representation, with
patient-level cross-validation and metrics (sklearn) with confidence intervals."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..errors import TableError

__all__ = ["compare_encoders", "patient_folds", "probe"]

METHODS = ("linear", "knn", "fewshot")


def _slides(adata):
    import mudata as md

    return adata.mod["slides"] if isinstance(adata, md.MuData) else adata


def _rep(adata, use_rep: str) -> np.ndarray:
    if use_rep == "X":
        X = adata.X
    elif use_rep in adata.obsm:
        X = adata.obsm[use_rep]
    else:
        raise TableError(f"use_rep={use_rep!r} is not in obsm ({list(adata.obsm)}); embed first or pass 'X'")
    X = X.to_numpy() if isinstance(X, pd.DataFrame) else X
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] == 0:
        raise TableError(f"{use_rep!r} has shape {X.shape}: need one feature vector per row")
    return X


def patient_folds(y, groups, folds, *, classification: bool, random_state=0) -> np.ndarray:
    """Fold number of each row: ``folds`` splits with every patient in exactly one fold (stratified by the
    label for classification), or the given fold assignment, checked."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    groups = np.asarray(groups).astype(str)
    if not isinstance(folds, (int, np.integer)):
        f = np.asarray(folds)
        table = pd.DataFrame({"g": groups, "f": f}).drop_duplicates()
        split = table["g"][table["g"].duplicated()].unique()
        if len(split):
            ex = table[table["g"] == split[0]]["f"].tolist()
            raise TableError(f"{len(split)} patient(s) are in more than one fold (e.g. {split[0]!r} in folds "
                             f"{ex}): slides of one patient must share a fold, or the test leaks")
        return f
    n_groups = len(np.unique(groups))
    if n_groups < folds:
        raise TableError(f"{n_groups} patients for {folds} folds: use fewer folds")
    out = np.empty(len(groups), dtype=int)
    if classification:
        cv = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=random_state)
        splits = cv.split(np.zeros(len(y)), y, groups)
    else:
        rng = np.random.default_rng(random_state)
        uniq = np.unique(groups)
        perm = dict(zip(uniq, rng.permutation(len(uniq))))
        splits = GroupKFold(n_splits=folds).split(np.zeros(len(y)), y, np.array([perm[g] for g in groups]))
    for k, (_, test) in enumerate(splits):
        out[test] = k
    return out


CS = np.logspace(-4, 1, 6)  # the linear head's inverse penalties tried by the inner patient-level CV


def _model(method: str, classification: bool, n_neighbors: int, C, random_state, groups=None):
    from sklearn.linear_model import LogisticRegression, LogisticRegressionCV, Ridge, RidgeCV
    from sklearn.model_selection import GroupKFold
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if method == "knn":
        return (KNeighborsClassifier if classification else KNeighborsRegressor)(n_neighbors=n_neighbors,
                                                                                 metric="cosine")
    if C == "auto" and groups is not None:  # penalty chosen on the training patients only
        if classification:
            cv = list(GroupKFold(n_splits=min(3, len(np.unique(groups)))).split(np.zeros(len(groups)), None, groups))
            head = LogisticRegressionCV(Cs=CS, cv=cv, max_iter=2000, random_state=random_state)
        else:
            head = RidgeCV(alphas=1.0 / CS)
    else:
        c = 1.0 if C == "auto" else float(C)
        head = LogisticRegression(C=c, max_iter=2000, random_state=random_state) if classification else \
            Ridge(alpha=1.0 / c)
    return make_pipeline(StandardScaler(), head)


def _metrics(y, pred, score, classes, classification: bool) -> dict:
    from sklearn import metrics as m

    if classification:
        out = {"accuracy": m.accuracy_score(y, pred), "balanced_accuracy": m.balanced_accuracy_score(y, pred),
               "f1_macro": m.f1_score(y, pred, average="macro")}
        if len(np.unique(y)) == len(classes) and len(classes) > 1:
            out["auroc"] = (m.roc_auc_score(y, score[:, 1]) if len(classes) == 2 else
                            m.roc_auc_score(y, score, multi_class="ovr", labels=classes))
        return out
    return {"pearson_r": float(np.corrcoef(y, pred)[0, 1]), "r2": m.r2_score(y, pred),
            "mae": m.mean_absolute_error(y, pred)}


def _fit_predict(X, y, fold, method, classification, classes, *, k_shot, rng, n_neighbors, C, random_state,
                 groups):
    pred = np.empty(len(y), dtype=object if classification else float)
    score = np.full((len(y), len(classes)), np.nan) if classification else None
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        if method == "fewshot":
            idx = np.flatnonzero(tr)
            pick = [rng.choice(idx[y[idx] == c], size=min(k_shot, int((y[idx] == c).sum())), replace=False)
                    for c in classes]
            tr = np.zeros(len(y), bool)
            tr[np.concatenate(pick)] = True
        g = None if method == "fewshot" else groups[tr]
        est = _model("linear" if method == "fewshot" else method, classification, n_neighbors, C, random_state, g)
        est.fit(X[tr], y[tr])
        pred[te] = est.predict(X[te])
        if classification:
            proba = est.predict_proba(X[te])
            cols = [list(classes).index(c) for c in est.classes_]
            score[np.ix_(te, cols)] = proba
    if classification:
        score = np.nan_to_num(score)
    return pred, score


def probe(adata, label: str, *, use_rep: str, method: str = "linear", k_shot: int = 8, n_draws: int = 10,
          folds=5, groups: str = "patient_id", task: str = "auto", n_neighbors: int = 20, C="auto",
          n_boot: int = 500, ci: float = 0.95, random_state=0, key_added: str | None = None,
          splits: str = "patient", site_key: str = "tss") -> pd.DataFrame:
    """Probe a frozen representation for a slide label with patient-level cross-validation.

    Parameters
    ----------
    adata
        Slides AnnData (one row per slide) or a linked MuData (its ``"slides"``).
    label
        ``obs`` column to predict; rows without a label are dropped (the warning counts them).
    use_rep
        The representation: an ``obsm`` key (``"X_uni"``) or ``"X"``.
    method
        ``"linear"`` (standardised features, logistic regression / ridge: eva's linear head), ``"knn"``
        (cosine k-nearest neighbours) or ``"fewshot"`` (linear head on ``k_shot`` training slides per class,
        ``n_draws`` repeated draws; classification only).
    k_shot, n_draws
        Few-shot size and repetitions.
    folds
        Number of folds, or an obs column of fold numbers (refused when a patient is in two folds).
    groups
        obs column naming the patient: all slides of a patient share a fold.
    task
        ``"classification"``, ``"regression"`` or ``"auto"`` (regression for a float label with > 10 values).
    n_neighbors, C
        kNN size; inverse penalty of the linear head: ``"auto"`` picks it from ``1e-4 .. 10`` by an inner
        3-fold patient-level CV on each training split (few-shot: 1.0), or a number.
    n_boot, ci
        Patient-level bootstrap of the out-of-fold predictions for the confidence intervals (few-shot: the
        spread over draws).
    random_state
        Seed of folds, draws and bootstrap.
    key_added
        ``obs`` column of the out-of-fold predictions; default ``"probe_<label>_<method>"``.
    splits
        ``"patient"``: patient-level folds; ``"site"``: site-preserved folds (no tissue source site in both
        train and test, class mix balanced across folds as Howard et al. 2021 propose; see
        :func:`pathkit.tl.splits.site_folds`). A label that is learnable only through the site drops to
        chance under ``"site"``.
    site_key
        obs column of the site for ``splits="site"``; ``"tss"``: parsed from TCGA barcodes.

    Returns
    -------
    DataFrame
        One row per metric: ``use_rep``, ``method``, ``metric``, ``value``, ``ci_low``, ``ci_high``, ``n``,
        ``n_patients``. Classification: accuracy, balanced_accuracy, f1_macro, auroc; regression: pearson_r,
        r2, mae. Sets ``obs[key_added]`` (out-of-fold prediction, NaN for dropped rows) and, for a binary
        label, ``obs[key_added + "_score"]`` (probability of the second class).
    """
    import sklearn

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    ad = _slides(adata)
    if label not in ad.obs.columns:
        raise TableError(f"label {label!r} is not an obs column ({list(ad.obs.columns)[:20]})")
    if groups not in ad.obs.columns:
        raise TableError(f"groups={groups!r} is not an obs column: name the patient column (link the cohort "
                         "with pk.io.link to get patient_id)")
    X_all = _rep(ad, use_rep)
    yser = ad.obs[label]
    has = yser.notna().to_numpy() & np.isfinite(X_all).all(axis=1)
    if (~has).any():
        warnings.warn(f"probe: {int((~has).sum())} of {ad.n_obs} slide(s) without a label {label!r} (or with "
                      "non-finite features) dropped", UserWarning, stacklevel=2)
    y = yser[has].to_numpy()
    if task == "auto":
        classification = not (pd.api.types.is_float_dtype(yser) and yser.nunique() > 10)
    else:
        classification = task == "classification"
    if method == "fewshot" and not classification:
        raise ValueError("method='fewshot' needs a class label")
    X, g = X_all[has], ad.obs[groups][has].astype(str).to_numpy()
    if classification:
        y = y.astype(str)
        classes = np.unique(y)
        if len(classes) < 2:
            raise TableError(f"label {label!r} has a single class {classes.tolist()}: nothing to probe")
    else:
        y, classes = y.astype(float), None
    fold_arg = folds if isinstance(folds, (int, np.integer)) else ad.obs[folds][has].to_numpy()
    if splits == "site":
        from ._site_labels import site_labels
        from .splits import site_folds

        if not isinstance(folds, (int, np.integer)):
            raise ValueError("splits='site' makes its own folds: pass folds as a number")
        site = site_labels(ad, site_key)[has]
        if site.isna().any():
            raise TableError(f"splits='site': {int(site.isna().sum())} slide(s) have no site ({site_key!r})")
        fold = site_folds(site.to_numpy(), y if classification else None, int(folds), seed=random_state)
    elif splits == "patient":
        fold = patient_folds(y, g, fold_arg, classification=classification, random_state=random_state)
    else:
        raise ValueError(f"splits must be 'patient' or 'site', got {splits!r}")
    rng = np.random.default_rng(random_state)
    kw = {"k_shot": k_shot, "rng": rng, "n_neighbors": n_neighbors, "C": C, "random_state": random_state,
          "groups": g}
    alpha = (1 - ci) / 2
    if method == "fewshot":
        draws = [_fit_predict(X, y, fold, method, classification, classes, **kw) for _ in range(n_draws)]
        per = pd.DataFrame([_metrics(y, p, s, classes, True) for p, s in draws])
        pred, score = draws[0]
        rows = [(k, per[k].mean(), per[k].quantile(alpha), per[k].quantile(1 - alpha)) for k in per.columns]
    else:
        pred, score = _fit_predict(X, y, fold, method, classification, classes, **kw)
        point = _metrics(y, pred, score, classes, classification)
        uniq = np.unique(g)
        pos = pd.Series(np.arange(len(g))).groupby(g).apply(np.asarray).reindex(uniq).to_list()
        # the bootstrap scores integer codes (sklearn's checks on string labels dominate the time otherwise)
        yc, pc, cc = (np.searchsorted(classes, y), np.searchsorted(classes, pred.astype(str)),
                      np.arange(len(classes))) if classification else (y, pred, None)
        boots = []
        with warnings.catch_warnings(), sklearn.config_context(skip_parameter_validation=True,
                                                               assume_finite=True):
            warnings.simplefilter("ignore")
            for _ in range(n_boot):
                idx = np.concatenate([pos[i] for i in rng.integers(0, len(uniq), len(uniq))])
                try:
                    boots.append(_metrics(yc[idx], pc[idx], None if score is None else score[idx], cc,
                                          classification))
                except ValueError:
                    continue
        b = pd.DataFrame(boots)
        rows = [(k, v, b[k].quantile(alpha) if k in b else np.nan, b[k].quantile(1 - alpha) if k in b else np.nan)
                for k, v in point.items()]
    key = key_added or f"probe_{label}_{method}"
    col = pd.Series(np.nan, index=ad.obs_names, dtype=object if classification else float)
    col[has] = pred
    ad.obs[key] = col.astype("category") if classification else col
    if classification and len(classes) == 2:
        s = pd.Series(np.nan, index=ad.obs_names)
        s[has] = score[:, 1]
        ad.obs[key + "_score"] = s
    return pd.DataFrame([{"use_rep": use_rep, "method": method, "metric": k, "value": float(v),
                          "ci_low": float(lo), "ci_high": float(hi), "n": len(y),
                          "n_patients": len(np.unique(g))} for k, v, lo, hi in rows])


def compare_encoders(adata, label: str, use_reps, *, method: str = "linear", metric: str | None = None, **kwargs):
    """Run the same :func:`probe` on several representations (one per foundation model).

    Parameters
    ----------
    adata
        Slides AnnData or linked MuData.
    label
        ``obs`` column to predict.
    use_reps
        ``obsm`` keys to compare, e.g. ``["X_uni", "X_conch", "X_gigapath"]``.
    method
        Probe method (see :func:`probe`).
    metric
        Metric drawn in the figure (default: ``auroc`` for classification, ``pearson_r`` for regression).
    **kwargs
        Passed to :func:`probe` (folds, groups, random_state, ...).

    Returns
    -------
    (DataFrame, plotly Figure)
        The tidy table of every probe (one row per representation x metric) and a bar chart of ``metric``
        with its confidence interval per representation. Each probe also sets its ``obs`` prediction
        column ``probe_<label>_<method>_<use_rep>``.
    """
    from ..pl._associate import encoder_comparison

    tables = [probe(adata, label, use_rep=r, method=method, key_added=f"probe_{label}_{method}_{r}", **kwargs)
              for r in use_reps]
    table = pd.concat(tables, ignore_index=True)
    if metric is None:
        metric = "auroc" if "auroc" in set(table["metric"]) else "pearson_r" if "pearson_r" in set(
            table["metric"]) else "balanced_accuracy"
    return table, encoder_comparison(table, metric=metric, title=f"{label} ({method} probe)")
