"""Evaluation of zero-shot slide predictions: balanced accuracy per K and one-vs-rest AUROC, for the full
prompt ensemble and the spread over MI-Zero's sampled prompt sets (scores written by `pk.tl.zero_shot`)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..errors import TableError
from ._zeroshot_common import _cohort_ids, _slides, softmax

__all__ = ["zero_shot_eval"]


# ----------------------------------------------------------------------------------------- evaluation
def _metrics(y: np.ndarray, scores: np.ndarray, logit_scale: float, n_classes: int,
             multi_class: str = "ovr") -> tuple[float, float]:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    pred = scores.argmax(axis=1)
    bacc = float(balanced_accuracy_score(y, pred))
    probs = softmax(scores, logit_scale)
    try:
        if n_classes == 2:
            auroc = float(roc_auc_score(y, probs[:, 1]))
        else:
            auroc = float(roc_auc_score(y, probs, multi_class=multi_class, average="macro",
                                        labels=np.arange(n_classes)))
    except ValueError:  # a class missing from the labels
        auroc = float("nan")
    return bacc, auroc


def _gather(data, key, classes, ks, logit_scale):
    """-> (slide ids or None, classes, ks, {K: [S, C]}, logit_scale, prompt-set scores [S, n_sets, nK, C]|None)."""
    from anndata import AnnData

    if isinstance(data, AnnData) and key in data.uns and "prompt_set_scores" in data.uns[key] \
            and data.uns[key]["prompt_set_scores"].ndim == 4:  # a cohort
        meta = data.uns[key]
        cls, kk = list(meta["classes"]), [int(k) for k in meta["ks"]]
        scores = {}
        for k in kk:
            cols = [f"{key}_score_{c}" + ("" if meta.get("level") == "slide" else f"_k{k}") for c in cls]
            missing = [c for c in cols if c not in data.obs]
            if missing:
                raise KeyError(f"cohort.obs lacks {missing}; run pk.tl.zero_shot(..., cohort=cohort) first")
            scores[k] = data.obs[cols].to_numpy(dtype=np.float64)
        return (_cohort_ids(data), cls, kk, scores, float(meta["logit_scale"]),
                np.asarray(meta["prompt_set_scores"]), meta.get("seed"))
    is_tiles = isinstance(data, AnnData) or (
        isinstance(data, (list, tuple, dict)) and len(data) > 0
        and all(isinstance(v, AnnData) for v in (data.values() if isinstance(data, dict) else data)))
    if is_tiles:
        slides = _slides(data)
        for sid, a in slides:
            if key not in a.uns:
                raise KeyError(f"slide {sid}: uns[{key!r}] missing; run pk.tl.zero_shot first")
        meta = slides[0][1].uns[key]
        cls, kk = list(meta["classes"]), [int(k) for k in meta["ks"]]
        stacked = np.stack([np.asarray(a.uns[key]["scores"]) for _, a in slides])  # [S, nK, C]
        sets = np.stack([np.asarray(a.uns[key]["prompt_set_scores"]) for _, a in slides])
        return (pd.Index([s for s, _ in slides]), cls, kk, {k: stacked[:, i] for i, k in enumerate(kk)},
                float(meta["logit_scale"]), sets, meta.get("seed"))
    # plain scores: {K: [S, C]} or [S, C]
    if classes is None:
        raise ValueError("classes=[...] is required when zero_shot_eval is given plain score arrays")
    if logit_scale is None:
        raise ValueError("logit_scale= is required when zero_shot_eval is given plain score arrays (AUROC "
                         "uses softmax(score x logit_scale)); use ClipModel.logit_scale")
    if isinstance(data, pd.DataFrame):
        data = data.to_numpy(dtype=np.float64)
    scores = ({int(k): np.asarray(v, dtype=np.float64) for k, v in data.items()} if isinstance(data, dict)
              else {int(ks[0]) if ks else 0: np.asarray(data, dtype=np.float64)})
    return None, list(classes), sorted(scores), scores, float(logit_scale), None, None


def zero_shot_eval(data, labels, ks=None, key="zeroshot", n_prompt_sets=None, random_state=None, classes=None,
                   logit_scale=None, multi_class="ovr") -> pd.DataFrame:
    """Balanced accuracy and AUROC of zero-shot slide predictions, per K.

    Parameters
    ----------
    data
        A cohort AnnData written by `zero_shot(..., cohort=)`, the tile AnnData(s) it annotated (list / dict),
        or plain slide scores: an array [S, C] or a dict {K: [S, C]} (then `classes` and `logit_scale` are
        required).
    labels
        True class per slide: a cohort obs column name, an array aligned with the slides, or a Series /
        dict indexed by slide id.
    ks
        The K values to report (default: all computed).
    n_prompt_sets
        Use the first n of the MI-Zero prompt sets sampled by `zero_shot` (default: all of them). The sets
        are drawn in `zero_shot` (its `n_prompt_sets`, `random_state`), where the tile features are at hand.
    random_state
        When given, checked against the seed the stored prompt sets were drawn with (an error if they
        differ: rerun `zero_shot(..., random_state=)`).
    multi_class
        AUROC with more than two classes: "ovr" (one-vs-rest macro, default) or "ovo" (what CONCH's
        evaluation code reports).

    Returns
    -------
    DataFrame indexed by K (0 for slide-level zero-shot: one embedding per slide, no pooling): `balanced_accuracy` and `auroc` of the full prompt ensemble; with prompt sets,
    `bacc_median` (MI-Zero's headline number), `bacc_q25`, `bacc_q75`, `auroc_median`, `n_prompt_sets`;
    `n_slides`. AUROC: binary -> probability of the second class; more classes -> `multi_class` macro.
    """
    ids, cls, all_ks, scores, scale, sets, stored_seed = _gather(data, key, classes, ks, logit_scale)
    seed = random_state
    if seed is not None and sets is not None and stored_seed is not None and int(seed) != int(stored_seed):
        raise ValueError(f"the stored prompt sets were drawn with seed={stored_seed}, not {seed}; rerun "
                         f"pk.tl.zero_shot(..., random_state={seed}) to draw other sets")
    if n_prompt_sets is not None and sets is not None and int(n_prompt_sets) > sets.shape[1]:
        raise ValueError(f"n_prompt_sets={n_prompt_sets} but only {sets.shape[1]} sets were drawn; rerun "
                         f"pk.tl.zero_shot(..., n_prompt_sets={n_prompt_sets})")
    from anndata import AnnData

    if isinstance(labels, str):
        if not isinstance(data, AnnData) or labels not in data.obs:
            raise KeyError(f"labels={labels!r} is not a column of the cohort's obs")
        y_raw = data.obs[labels].to_numpy()
    elif isinstance(labels, (pd.Series, dict)) and ids is not None:
        lab = pd.Series(labels)
        lab.index = lab.index.astype(str)
        missing = [s for s in ids if s not in lab.index]
        if missing:
            raise TableError(f"labels: no label for slides {missing[:10]}")
        y_raw = lab.reindex(ids).to_numpy()
    else:
        y_raw = np.asarray(labels)
    n = next(iter(scores.values())).shape[0]
    if len(y_raw) != n:
        raise ValueError(f"labels: {len(y_raw)} labels for {n} slides")
    keep = pd.notna(pd.Series(y_raw)).to_numpy() & np.all(np.isfinite(np.stack(list(scores.values()))), axis=(0, 2))
    bad = sorted({str(v) for v in y_raw[keep] if str(v) not in cls})
    if bad:
        raise ValueError(f"labels {bad} are not among the classes {cls}")
    if not keep.all():
        warnings.warn(f"zero_shot_eval: {int((~keep).sum())} slides without a label or a score are left out",
                      UserWarning, stacklevel=2)
    y = np.array([cls.index(str(v)) for v in y_raw[keep]])
    report = [int(k) for k in (ks if ks is not None else all_ks)]
    unknown = [k for k in report if k not in scores]
    if unknown:
        raise KeyError(f"K={unknown} were not computed (available: {all_ks})")
    if sets is not None:
        sets = sets[:, : (sets.shape[1] if n_prompt_sets is None else int(n_prompt_sets))]
    rows = {}
    for k in report:
        bacc, auroc = _metrics(y, scores[k][keep], scale, len(cls), multi_class)
        row = {"balanced_accuracy": bacc, "auroc": auroc, "n_slides": int(keep.sum())}
        if sets is not None and sets.shape[1]:
            j = all_ks.index(k)
            res = np.array([_metrics(y, sets[keep, s, j], scale, len(cls), multi_class)
                            for s in range(sets.shape[1])])
            row.update(bacc_median=float(np.median(res[:, 0])), bacc_q25=float(np.percentile(res[:, 0], 25)),
                       bacc_q75=float(np.percentile(res[:, 0], 75)), auroc_median=float(np.nanmedian(res[:, 1]))
                       if np.isfinite(res[:, 1]).any() else float("nan"), n_prompt_sets=int(sets.shape[1]))
        rows[k] = row
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "k"
    return out
