"""MIL tasks: target encoding, losses, prediction transforms and metrics (sklearn / lifelines).

* ``binary`` / ``multiclass``: one logit per class, cross-entropy;
* ``multilabel``: one logit per 0/1 label column, binary cross-entropy;
* ``regression``: one output per numeric column (e.g. a gene's expression), standardised with the training
  mean and sd, mean squared error;
* ``survival``: discrete-time hazards over ``n_bins`` bins cut at the quantiles of the training units'
  uncensored times (Zadeh & Schmid 2020; PORPOISE / MCAT), negative log-likelihood with the uncensored term
  up-weighted by ``alpha_surv``; risk = -sum of the survival curve (higher = shorter survival);
* ``cox``: one risk score, negative Cox partial log-likelihood (Breslow) over each mini-batch of bags.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pandas as pd

from ...errors import TableError

TASKS = ("binary", "multiclass", "multilabel", "regression", "survival", "cox")
CLASSIFICATION = ("binary", "multiclass", "multilabel")


# ============================================================================================ losses
def nll_surv(logits, y, c, alpha: float, eps: float = 1e-7):
    """Discrete-time survival NLL (PORPOISE/MCAT form). ``y`` bin index, ``c`` censorship (1 = censored)."""
    import torch

    h = torch.sigmoid(logits)
    S = torch.cumprod(1 - h, dim=1)
    S_pad = torch.cat([torch.ones_like(S[:, :1]), S], dim=1)
    y = y.view(-1, 1)
    c = c.view(-1, 1).float()
    s_prev = torch.gather(S_pad, 1, y).clamp(min=eps)
    h_this = torch.gather(h, 1, y).clamp(min=eps)
    s_this = torch.gather(S_pad, 1, y + 1).clamp(min=eps)
    uncensored = -(1 - c) * (torch.log(s_prev) + torch.log(h_this))
    censored = -c * torch.log(s_this)
    loss = (1 - alpha) * (censored + uncensored) + alpha * uncensored
    return loss.mean()


def cox_nll(risk, time, event):
    """Negative Cox partial log-likelihood (Breslow ties) averaged over events; None without events."""
    import torch

    if float(event.sum()) == 0:
        return None
    order = torch.argsort(time, descending=True)
    r, e = risk.view(-1)[order], event[order].float()
    log_cum = torch.logcumsumexp(r, dim=0)
    return -((r - log_cum) * e).sum() / e.sum()


def task_loss(task: str, out, tg: dict, alpha_surv: float):
    """Loss of a batch of bag outputs ``out [B, n_out]`` against the batch's targets ``tg`` (tensors)."""
    import torch.nn.functional as F

    if task in ("binary", "multiclass"):
        return F.cross_entropy(out, tg["y"])
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(out, tg["y"])
    if task == "regression":
        return F.mse_loss(out, tg["y"])
    if task == "survival":
        return nll_surv(out, tg["bin"], 1 - tg["event"], alpha_surv)
    return cox_nll(out.view(-1), tg["time"], tg["event"])


def bag_loss(task: str, out, extras: list, tg: dict, alpha_surv: float):
    """The task loss plus the networks' own terms: CLAM's instance loss (weighted by ``bag_weight``), and the
    mean with DSMIL's instance stream (``max_out``). None for a Cox batch without events."""
    import torch

    loss = task_loss(task, out, tg, alpha_surv)
    if loss is None:
        return None
    if extras and "instance_loss" in extras[0]:
        bw = extras[0]["bag_weight"]
        loss = bw * loss + (1 - bw) * torch.stack([e["instance_loss"] for e in extras]).mean()
    if extras and "max_out" in extras[0]:
        loss = 0.5 * loss + 0.5 * task_loss(task, torch.stack([e["max_out"] for e in extras]), tg, alpha_surv)
    return loss


# ============================================================================================ targets
def label_columns(task: str, label, time, event) -> list[str]:
    """The cohort columns a task needs (checked by the caller)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    if task in ("survival", "cox"):
        if time is None or event is None:
            raise TableError(f"task={task!r} needs time= and event= columns")
        return [time, event]
    if label is None:
        raise TableError(f"task={task!r} needs label=")
    if task == "multilabel" and isinstance(label, str):
        raise TableError("task='multilabel' needs label= a list of 0/1 columns")
    return [label] if isinstance(label, str) else list(label)


def encode_targets(task: str, df: pd.DataFrame, label, time, event, classes=None) -> tuple[dict, list | None]:
    """Targets of the units (rows of ``df``) as numpy arrays (``y``; ``time``, ``event``; ``strat`` for
    stratified folds) and the class names (classification) / label columns (multilabel, regression)."""
    if task in ("binary", "multiclass"):
        col = df[label]
        if classes is None:
            cats = list(col.cat.categories) if isinstance(col.dtype, pd.CategoricalDtype) else sorted(pd.unique(col))
            classes = [c for c in cats if (col == c).any()]
            if task == "binary" and len(classes) != 2:
                raise TableError(f"task='binary' needs 2 classes in {label!r}; found {classes}")
            if task == "multiclass" and len(classes) < 2:
                raise TableError(f"{label!r} has fewer than 2 classes: {classes}")
        y = pd.Categorical(col, categories=classes).codes.astype(np.int64)
        return {"y": y, "strat": y}, list(classes)
    if task == "multilabel":
        cols = list(label)
        Y = df[cols].astype(float).to_numpy()
        if not np.isin(Y, [0, 1]).all():
            raise TableError(f"multilabel columns {cols} must hold 0/1 values")
        return {"y": Y.astype(np.float32), "strat": Y[:, 0]}, cols
    if task == "regression":
        cols = [label] if isinstance(label, str) else list(label)
        try:
            Y = df[cols].apply(pd.to_numeric).to_numpy(dtype=np.float64)
        except (ValueError, TypeError) as err:
            raise TableError(f"task='regression' needs numeric columns {cols}: {err}") from None
        strat = pd.qcut(Y[:, 0], q=min(4, len(Y)), labels=False, duplicates="drop") if len(Y) > 1 else None
        return {"y": Y.astype(np.float32), "strat": strat}, cols
    from ..survival._data import _survival_frame

    sf = _survival_frame(df, time, event)
    t, e = sf["time"].to_numpy(dtype=np.float64), sf["event"].to_numpy().astype(np.int64)
    return {"time": t, "event": e, "strat": e}, None


def batch_targets(task: str, tg: dict, idx, dev, y_mean=None, y_sd=None, bins=None) -> dict:
    """The targets of units ``idx`` as tensors on ``dev``: ``y`` (regression standardised with the training
    ``y_mean`` / ``y_sd``), ``time`` / ``event`` and the survival ``bin`` (with ``bins``)."""
    import torch

    out = {}
    if "y" in tg:
        y = tg["y"][idx]
        if task == "regression":
            out["y"] = torch.as_tensor((y - y_mean) / y_sd, dtype=torch.float32, device=dev)
        else:
            out["y"] = torch.as_tensor(y, device=dev)
    if "time" in tg:
        out["time"] = torch.as_tensor(tg["time"][idx], dtype=torch.float32, device=dev)
        out["event"] = torch.as_tensor(tg["event"][idx], dtype=torch.float32, device=dev)
        if bins is not None:
            out["bin"] = torch.as_tensor(to_bins(tg["time"][idx], bins), device=dev)
    return out


def quantile_bins(times: np.ndarray, events: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin edges at the quantiles of uncensored times; the outer edges are open (-inf, inf)."""
    unc = times[events == 1]
    if len(unc) < n_bins:
        raise TableError(f"survival task: {len(unc)} uncensored training bags are too few for {n_bins} "
                         f"time bins; lower n_bins or use task='cox'")
    edges = np.quantile(unc, np.linspace(0, 1, n_bins + 1))
    edges[0], edges[-1] = -np.inf, np.inf
    return edges


def to_bins(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    return np.clip(np.searchsorted(edges, times, side="right") - 1, 0, len(edges) - 2).astype(np.int64)


def transform(task: str, out: np.ndarray, y_mean=None, y_sd=None) -> np.ndarray:
    """Raw outputs ``[n, n_out]`` -> probabilities (classification), values (regression) or risk ``[n]``."""
    out = np.asarray(out, dtype=np.float64)
    if task in ("binary", "multiclass"):
        e = np.exp(out - out.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    if task == "multilabel":
        return 1 / (1 + np.exp(-out))
    if task == "regression":
        return out * np.asarray(y_sd) + np.asarray(y_mean)
    if task == "survival":
        S = np.cumprod(1 - 1 / (1 + np.exp(-out)), axis=1)
        return -S.sum(1)
    return out[:, 0]


# ============================================================================================ metrics
def _pearson(y, p) -> float:
    if np.std(y) == 0 or np.std(p) == 0:
        return float("nan")
    return float(np.corrcoef(y, p)[0, 1])


def metric_fns(task: str, n_classes: int) -> dict[str, Callable]:
    """name -> f(truth dict) over the arrays ``y`` + ``p`` (prediction) or ``time`` + ``event`` + ``risk``."""
    from sklearn.metrics import (
        average_precision_score,
        balanced_accuracy_score,
        mean_absolute_error,
        r2_score,
        roc_auc_score,
    )

    if task in ("survival", "cox"):
        from ..survival import cindex

        return {"c_index": lambda t: cindex(t["time"], t["risk"], t["event"])}
    if task == "binary":
        return {"auroc": lambda t: roc_auc_score(t["y"], t["p"][:, 1]),
                "auprc": lambda t: average_precision_score(t["y"], t["p"][:, 1]),
                "balanced_accuracy": lambda t: balanced_accuracy_score(t["y"], t["p"].argmax(1))}
    if task == "multiclass":
        labels = np.arange(n_classes)

        def auroc(t):  # macro one-vs-rest; undefined when a class is absent
            if len(np.unique(t["y"])) < n_classes:
                return np.nan
            return roc_auc_score(t["y"], t["p"], multi_class="ovr", average="macro", labels=labels)

        def auprc(t):
            onehot = (t["y"][:, None] == labels[None]).astype(int)
            keep = onehot.sum(0) > 0
            return average_precision_score(onehot[:, keep], t["p"][:, keep], average="macro")

        return {"auroc": auroc, "auprc": auprc,
                "balanced_accuracy": lambda t: balanced_accuracy_score(t["y"], t["p"].argmax(1))}
    if task == "regression":
        def per_col(fn):
            return lambda t: float(np.mean([fn(t["y"][:, j], t["p"][:, j]) for j in range(t["y"].shape[1])]))

        from scipy.stats import spearmanr

        return {"pearson_r": per_col(_pearson), "spearman_r": per_col(lambda y, p: spearmanr(y, p)[0]),
                "r2": per_col(r2_score), "mae": per_col(mean_absolute_error)}

    def per_label(fn, use_pred=False):  # multilabel: macro mean over labels with both values present
        def f(t):
            vals = [fn(t["y"][:, k], (t["p"][:, k] >= 0.5).astype(int) if use_pred else t["p"][:, k])
                    for k in range(t["y"].shape[1]) if len(np.unique(t["y"][:, k])) == 2]
            return float(np.mean(vals)) if vals else np.nan
        return f

    return {"auroc": per_label(roc_auc_score), "auprc": per_label(average_precision_score),
            "balanced_accuracy": per_label(balanced_accuracy_score, use_pred=True)}


def safe(fn, t) -> float:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return float(fn(t))
    except ValueError:
        return float("nan")


def subset(t: dict, idx) -> dict:
    return {k: v[idx] for k, v in t.items()}


def bootstrap_ci(fn, t: dict, n_boot: int, random_state: int) -> tuple[float, float]:
    """Percentile 95% CI of ``fn`` over ``n_boot`` resamples (with replacement) of the units."""
    n = len(next(iter(t.values())))
    if n_boot <= 0 or n < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(random_state)
    vals = [v for v in (safe(fn, subset(t, rng.integers(0, n, n))) for _ in range(n_boot)) if np.isfinite(v)]
    if len(vals) < max(10, n_boot // 10):
        return float("nan"), float("nan")
    lo, hi = np.percentile(vals, [2.5, 97.5])
    return float(lo), float(hi)
