"""Patient-level cross-validation of a MIL model: per-fold metrics, pooled out-of-fold metrics with
bootstrap CIs, out-of-fold predictions written under ``key_added``."""
from __future__ import annotations

import time as _time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..splits import patient_folds, read_splits, site_fold_sets
from . import tasks as T
from .bags import BagSet
from .covariates import bag_covariates
from .data import check_folds, cohort_obs, make_units, write_predictions
from .estimator import MIL


@dataclass
class MILCVResult:
    """What :func:`cross_validate_mil` returns.

    Attributes
    ----------
    metrics : pd.DataFrame
        One row per fold (index ``fold``: 0..k-1, then ``"pooled"``): ``n`` and the task's metrics
        (``auroc``, ``auprc``, ``balanced_accuracy``; ``pearson_r``, ``spearman_r``, ``r2``, ``mae``;
        ``c_index``), ``epochs`` (best epoch), ``seconds``.
    summary : pd.DataFrame
        Pooled out-of-fold metrics with bootstrap 95% CIs (``value``, ``ci_lower``, ``ci_upper``), and the
        mean and sd of the per-fold values (``fold_mean``, ``fold_sd``: what CLAM-style papers report). With
        few epochs or few bags the fold models' outputs are not on one scale, so the pooled value can sit
        below every fold's; ``fold_mean`` does not mix models.
    predictions : pd.DataFrame
        Out-of-fold predictions per slide (index slide_id): ``unit``, ``patient``, ``fold`` + the task's columns.
    importance : dict
        slide_id -> per-tile importance from the model of the fold where the slide was held out.
    estimators : list of MIL
        The fitted estimator of each fold (``predict`` / ``save`` work on each).
    history : pd.DataFrame
        ``fold``, ``epoch``, ``train_loss``, ``val_loss``.
    classes : list or None
    bins : dict or None
        ``survival``: fold -> bin edges of the discrete time axis.
    """

    task: str
    metrics: pd.DataFrame
    summary: pd.DataFrame
    predictions: pd.DataFrame
    importance: dict = field(repr=False)
    estimators: list = field(repr=False)
    history: pd.DataFrame = field(repr=False)
    classes: list | None = None
    bins: dict | None = None

    def __repr__(self) -> str:
        return (f"MILCVResult(task={self.task!r}, folds={len(self.estimators)}, "
                f"slides={len(self.predictions)})\n{self.summary.to_string()}")


def _user_folds(splits, patients: np.ndarray):
    user = read_splits(splits)
    fold_sets = []
    for tr, te in user:
        fold_sets.append((np.flatnonzero(np.isin(patients, list(tr))), np.flatnonzero(np.isin(patients, list(te)))))
    unknown = set().union(*[tr | te for tr, te in user]) - set(patients)
    if unknown:
        warnings.warn(f"{len(unknown)} ids in the splits have no usable slide in the cohort (ignored)", stacklevel=3)
    held = set().union(*[te for _, te in user])
    never = sorted(set(patients) - held)
    if never:
        warnings.warn(f"{len(never)} patients are in no held-out split and get no prediction (e.g. {never[:3]})",
                      stacklevel=3)
    return fold_sets


def cross_validate_mil(bags, cohort, model: str = "abmil", label=None, *, task: str = "binary",
                       time: str | None = None, event: str | None = None, folds: int = 5, splits=None,
                       split_by: str = "patient_id", bag_by: str = "slide", use_rep: str | None = None,
                       covariates=None, covariate_nan: str = "raise", key_added: str | None = None, n_bootstrap: int = 1000, random_state: int = 0,
                       **kwargs) -> MILCVResult:
    """Cross-validate a MIL model with patient-level folds; write out-of-fold predictions.

    Parameters
    ----------
    bags, cohort, label, time, event, use_rep, split_by, covariates, covariate_nan
        As in :meth:`MIL.fit` (``use_rep`` default: the bags' single ``X_<model>`` key). Each fold's
        covariates are standardised with its own training bags' mean and sd.
    model, task
        As in :class:`MIL`.
    folds
        Patient-level folds (sklearn ``StratifiedGroupKFold``, stratified by label, event or quartile of a
        regression target).
    splits
        User folds instead: a folder of ``splits_{k}.csv`` (``train`` / ``val`` columns of ``split_by`` ids;
        ``val`` is held out), or a list of (train_ids, test_ids). A patient in two test folds, or on both
        sides of a fold, is refused. ``"site"``: `folds` site-preserved folds (no TCGA tissue source site in
        both train and test; :func:`pathkit.tl.splits.site_fold_sets`).
    bag_by
        ``"slide"`` or ``"patient"`` (a patient's slides pooled in one bag).
    key_added
        Prefix of the columns written (default: the model name).
    n_bootstrap
        Resamples (over units) for the pooled metrics' 95% CIs.
    random_state
        Seeds folds, inner splits, initialisation, shuffling and dropout.
    **kwargs
        :class:`MIL` settings (``epochs``, ``lr``, ``patience``, ``batch_size``, ``device``, ``progress``, …)
        and the network's hyper-parameters.

    Returns
    -------
    :class:`MILCVResult`. Sets the following fields (out of fold: a slide is scored only by the model
    that did not see its patient):

    ``cohort.obs[f"{key_added}_fold"]``
        held-out fold, -1 when never held out;
    ``cohort.obs[f"{key_added}_prob_<class>"]``, ``_pred``, ``_risk``, …
        the task's columns, as :meth:`MIL.predict` writes them;
    ``tiles.obs[f"{key_added}_importance"]``
        each in-memory tile AnnData (NaN for tiles of slides never held out).
    """
    from ..._progress import progress_bar

    key = key_added or model
    progress = kwargs.get("progress", True)
    est0 = MIL(model, task, bag_by=bag_by, random_state=random_state, **kwargs)
    need = T.label_columns(task, label, time, event)
    obs = cohort_obs(cohort)
    bagset = BagSet(bags, use_rep)
    try:
        units = make_units(cohort, bagset, bag_by=bag_by, split_by=split_by, need=need)
        C = spec = None
        if covariates is not None and len(covariates):
            units, C, spec = bag_covariates(cohort, units, covariates, nan=covariate_nan,
                                            where="cross_validate_mil")
        tg, classes = T.encode_targets(task, units.table, label, time, event)
        fold_sets = (site_fold_sets(units.patient, tg.get("strat"), folds, random_state) if str(splits) == "site"
                     else _user_folds(splits, units.patient) if splits is not None else
                     patient_folds(units.patient, tg.get("strat"), folds=folds, seed=random_state))
        check_folds(units.patient, fold_sets)
        n = len(units)
        n_out = {"survival": est0.n_bins, "cox": 1}.get(task, len(classes or []))
        raw = np.full((n, n_out), np.nan)
        fold_of = np.full(n, -1)
        importance, estimators, hist, fold_rows, bins = {}, [], [], [], {}
        for k in progress_bar(range(len(fold_sets)), desc=f"{model} folds", disable=not progress):
            t0 = _time.perf_counter()
            tr, te = fold_sets[k]
            est = MIL(model, task, bag_by=bag_by, random_state=random_state, **kwargs)
            est.label_, est.time_, est.event_, est.use_rep_ = label, time, event, bagset.use_rep
            est.split_by_ = split_by
            est._fit_units(bagset, units, tg, classes, tr, fold=k, C=C, cov_spec=spec)
            out, imp = est._predict_units(bagset, units, te, C)
            raw[te] = out
            fold_of[te] = k
            importance.update(imp)
            estimators.append(est)
            hist.append(est.history_)
            if est.bins_ is not None:
                bins[k] = est.bins_
            fold_rows.append((est.best_epoch_, _time.perf_counter() - t0))
        held = np.flatnonzero(fold_of >= 0)
        pred = np.full((n, n_out) if task not in ("survival", "cox") else n, np.nan)
        for k, est in enumerate(estimators):
            te = fold_sets[k][1]
            pred[te] = T.transform(task, raw[te], est.y_mean_, est.y_sd_)
        table = write_predictions(obs, units, held, task, pred, classes, key)
        fold_col = np.full(len(obs), -1, dtype=int)
        for i in held:
            fold_col[units.rows[i]] = fold_of[i]
        obs[f"{key}_fold"] = fold_col
        table.insert(2, "fold", fold_col[np.concatenate([units.rows[i] for i in held])])
        bagset.write_obs(importance, f"{key}_importance")
    finally:
        bagset.close()

    # ---------------------------------------------------------------- metrics (over units)
    truth = ({"time": tg["time"], "event": tg["event"], "risk": pred} if task in ("survival", "cox")
             else {"y": tg["y"], "p": pred})
    fns = T.metric_fns(task, n_out)
    recs = []
    for k, (_, te) in enumerate(fold_sets):
        rec = {"fold": k, "n": len(te)}
        rec.update({m: T.safe(f, T.subset(truth, te)) for m, f in fns.items()})
        rec.update(epochs=fold_rows[k][0], seconds=fold_rows[k][1])
        recs.append(rec)
    pooled_t = T.subset(truth, held)
    pooled = {"fold": "pooled", "n": len(held)}
    summ = []
    for m, f in fns.items():
        v = T.safe(f, pooled_t)
        lo, hi = T.bootstrap_ci(f, pooled_t, n_bootstrap, random_state)
        pooled[m] = v
        per_fold = np.array([r[m] for r in recs], dtype=float)
        ok = per_fold[np.isfinite(per_fold)]
        summ.append((m, v, lo, hi, float(ok.mean()) if len(ok) else np.nan,
                     float(ok.std(ddof=1)) if len(ok) > 1 else np.nan))
    pooled.update(epochs=np.nan, seconds=float(sum(r[1] for r in fold_rows)))
    metrics = pd.DataFrame(recs + [pooled]).set_index("fold")
    summary = pd.DataFrame(summ, columns=["metric", "value", "ci_lower", "ci_upper", "fold_mean", "fold_sd"]
                           ).set_index("metric")
    return MILCVResult(task=task, metrics=metrics, summary=summary, predictions=table, importance=importance,
                       estimators=estimators, history=pd.concat(hist, ignore_index=True), classes=classes,
                       bins=bins or None)


