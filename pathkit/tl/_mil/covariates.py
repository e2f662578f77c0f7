"""Covariates for late fusion in MIL: clinical columns of the slides and RNA features of a linked MuData,
encoded once (categories one-hot), averaged per bag, standardised with the training bags' statistics.

A covariate name is looked up, in this order, as
1. a column of the slides' ``obs`` (numeric, boolean, or categorical: one-hot, the first category dropped);
2. an ``obsm`` key of the slides (every column, e.g. ``composition_leiden``);
3. with a MuData from :func:`pathkit.io.link`: a column of ``mdata["rna"].obs``, an ``obsm`` key of the RNA
   (every column, e.g. ``pathways_score_genes`` from :func:`pathkit.tl.pathway_scores`), or a gene of
   ``mdata["rna"].var_names``; each slide takes its patient's (sample's) RNA row.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ...errors import TableError

NAN_POLICIES = ("raise", "mean", "drop")


@dataclass
class CovariateSpec:
    """Where each covariate comes from and how it is encoded; after fitting, the training mean and sd."""

    names: list[str]
    sources: list[dict]
    nan: str = "raise"
    mean: np.ndarray | None = field(default=None, repr=False)
    sd: np.ndarray | None = field(default=None, repr=False)

    @property
    def columns(self) -> list[str]:
        """The encoded feature names, in the order of the fusion weights."""
        return [c for s in self.sources for c in s["columns"]]

    def to_json(self) -> dict:
        return {"names": self.names, "sources": self.sources, "nan": self.nan,
                "mean": None if self.mean is None else [float(v) for v in self.mean],
                "sd": None if self.sd is None else [float(v) for v in self.sd]}

    @classmethod
    def from_json(cls, d: dict) -> CovariateSpec:
        return cls(names=list(d["names"]), sources=[dict(s) for s in d["sources"]], nan=d["nan"],
                   mean=None if d.get("mean") is None else np.asarray(d["mean"], dtype=np.float64),
                   sd=None if d.get("sd") is None else np.asarray(d["sd"], dtype=np.float64))

    def fitted(self, C_train: np.ndarray) -> CovariateSpec:
        """A copy with the mean and sd of the training bags' covariates ``C_train`` (NaN ignored)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            mean, sd = np.nanmean(C_train, axis=0), np.nanstd(C_train, axis=0)
        empty = [c for c, m in zip(self.columns, mean) if not np.isfinite(m)]
        if empty:
            raise TableError(f"covariate column(s) {empty[:10]} have no value in any training bag")
        return CovariateSpec(self.names, self.sources, self.nan, mean, np.where(sd > 0, sd, 1.0))

    def standardise(self, C: np.ndarray) -> np.ndarray:
        """``(C - mean) / sd``; NaN (policy ``"mean"``) become 0, the training mean."""
        Z = (C - self.mean) / self.sd
        return np.nan_to_num(Z, nan=0.0).astype(np.float32)


def _parts(cohort):
    """(slides obs, slides obsm or {}, rna AnnData or None, slides column linking to the RNA rows)."""
    if hasattr(cohort, "mod"):  # MuData
        if "slides" not in cohort.mod:
            raise TableError(f"MuData has modalities {list(cohort.mod)}; MIL needs 'slides' (pk.io.link)")
        slides = cohort.mod["slides"]
        rna = cohort.mod.get("rna")
        key = None if rna is None else rna.uns.get("link", {}).get("slides_key", "patient_id")
        return slides.obs, slides.obsm, rna, key
    if isinstance(cohort, pd.DataFrame):
        return cohort, {}, None, None
    return cohort.obs, cohort.obsm, None, None


def _encode_column(s: pd.Series, name: str, src: dict | None) -> tuple[np.ndarray, dict]:
    """(values [n, k], source dict) of one obs column: numeric as is, categorical one-hot."""
    kind_cat = src["categories"] is not None if src else not (
        (pd.api.types.is_numeric_dtype(s) or pd.api.types.is_bool_dtype(s))
        and not isinstance(s.dtype, pd.CategoricalDtype))
    if not kind_cat:
        try:
            v = pd.to_numeric(s.astype(object).where(s.notna()), errors="raise").to_numpy(dtype=np.float64)
        except (ValueError, TypeError):
            raise TableError(f"covariate {name!r} was numeric when the model was fit, but this cohort's column "
                             f"holds text (e.g. {list(pd.unique(s.dropna().astype(str)))[:3]})") from None
        return v[:, None], {"columns": [name], "categories": None}
    text = s.astype(object).where(s.notna())
    if src is None:
        cats = (list(map(str, s.cat.categories)) if isinstance(s.dtype, pd.CategoricalDtype)
                else sorted(pd.unique(text.dropna().astype(str))))
        cats = [c for c in cats if (text.dropna().astype(str) == c).any()]
        if len(cats) < 2:
            raise TableError(f"covariate {name!r} has {len(cats)} category ({cats}): nothing to learn from")
    else:
        cats = src["categories"]
    vals = text.map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    unseen = sorted(set(vals.dropna()) - set(cats))
    if unseen:
        raise TableError(f"covariate {name!r} has value(s) {unseen[:5]} not seen when the model was fit "
                         f"(categories {cats}); recode them or set them to NaN")
    M = np.stack([(vals == c).to_numpy(dtype=np.float64) for c in cats[1:]], axis=1)
    M[vals.isna().to_numpy()] = np.nan
    return M, {"columns": [f"{name}={c}" for c in cats[1:]], "categories": cats}


def _matrix(obj, name: str, width: int | None) -> tuple[np.ndarray, list[str]]:
    """An obsm entry as floats [n, k] and its column names."""
    if isinstance(obj, pd.DataFrame):
        cols = [f"{name}:{c}" for c in obj.columns]
        M = obj.apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    else:
        M = obj.toarray() if hasattr(obj, "toarray") else np.asarray(obj, dtype=np.float64)
        M = M.reshape(M.shape[0], -1).astype(np.float64)
        cols = [f"{name}[{j}]" for j in range(M.shape[1])]
    if width is not None and M.shape[1] != width:
        raise TableError(f"covariate {name!r} has {M.shape[1]} columns here but {width} when the model was fit")
    return M, cols


def _available(obs, obsm, rna) -> str:
    out = f"slides obs columns {list(obs.columns)}, slides obsm keys {list(obsm.keys())}"
    if rna is None:
        return out + "; RNA features need the MuData of pk.io.link(cohort, rna=...) as the cohort"
    return out + f", RNA obs columns {list(rna.obs.columns)}, RNA obsm keys {list(rna.obsm.keys())} or a gene"


def slide_covariates(cohort, names, spec: CovariateSpec | None = None, nan: str = "raise"):
    """(raw covariates [n_slides, n_columns] in the order of the slides' obs, spec). With ``spec`` (from
    fit), each covariate is read from where it was found at fit and encoded the same way."""
    if nan not in NAN_POLICIES:
        raise ValueError(f"covariate_nan must be one of {NAN_POLICIES}, not {nan!r}")
    obs, obsm, rna, key = _parts(cohort)
    names = [names] if isinstance(names, str) else list(names)
    if len(set(names)) != len(names):
        raise TableError(f"covariates {names} name a column twice")
    blocks, sources = [], []
    for j, name in enumerate(names):
        src = spec.sources[j] if spec is not None else None
        kind = src["kind"] if src else None
        if kind in (None, "obs") and name in obs.columns:
            M, s = _encode_column(obs[name], name, src)
            kind = "obs"
        elif kind in (None, "obsm") and name in obsm:
            M, cols = _matrix(obsm[name], name, len(src["columns"]) if src else None)
            s, kind = {"columns": cols, "categories": None}, "obsm"
        elif kind in (None, "rna_obs", "rna_obsm", "gene") and rna is not None and (
                name in rna.obs.columns or name in rna.obsm or name in rna.var_names):
            if key not in obs.columns:
                raise TableError(f"the slides have no column {key!r} linking them to the RNA rows (pk.io.link)")
            if kind in (None, "rna_obs") and name in rna.obs.columns:
                M, s = _encode_column(rna.obs[name], name, src)
                kind = "rna_obs"
            elif kind in (None, "rna_obsm") and name in rna.obsm:
                M, cols = _matrix(rna.obsm[name], name, len(src["columns"]) if src else None)
                s, kind = {"columns": cols, "categories": None}, "rna_obsm"
            elif kind in (None, "gene") and name in rna.var_names:
                X = rna[:, [name]].X
                M = (X.toarray() if hasattr(X, "toarray") else np.asarray(X)).astype(np.float64).reshape(-1, 1)
                s, kind = {"columns": [name], "categories": None}, "gene"
            else:
                raise TableError(f"covariate {name!r} was a {src['kind']} when the model was fit; this cohort's "
                                 f"RNA has no such entry")
            row = pd.Index(rna.obs_names.astype(str)).get_indexer(
                obs[key].astype(object).where(obs[key].notna(), "\x00none").astype(str))
            M = np.where((row >= 0)[:, None], M[np.maximum(row, 0)], np.nan)
        else:
            where = {"obs": "a column of the slides' obs", "obsm": "an obsm key of the slides",
                     "rna_obs": "a column of the RNA obs", "rna_obsm": "an obsm key of the RNA",
                     "gene": "a gene of the RNA"}.get(kind)
            if where:
                raise TableError(f"covariate {name!r} ({where} when the model was fit) is not in this cohort; "
                                 f"available: {_available(obs, obsm, rna)}")
            raise TableError(f"covariate {name!r} not found; available: {_available(obs, obsm, rna)}")
        blocks.append(M)
        sources.append({"name": name, "kind": kind, **s})
    C = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(obs), 0))
    if spec is None:
        spec = CovariateSpec(names=names, sources=sources, nan=nan)
    return C, spec


def unit_covariates(C_slides: np.ndarray, rows: list) -> np.ndarray:
    """Covariates per bag: the mean over the bag's slides (``bag_by="patient"``), NaN ignored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.stack([np.nanmean(C_slides[r], axis=0) for r in rows]) if rows else C_slides[:0]


def nan_rows(spec: CovariateSpec, C: np.ndarray, unit_ids, where: str) -> np.ndarray:
    """Boolean mask of the bags to keep under the NaN policy (``"raise"``: an error naming the columns)."""
    bad = ~np.isfinite(C).all(axis=1)
    if not bad.any() or spec.nan == "mean":
        return np.ones(len(C), bool)
    cols = [c for c, n in zip(spec.columns, (~np.isfinite(C)).sum(0)) if n]
    if spec.nan == "raise":
        raise TableError(f"{where}: {int(bad.sum())} bag(s) (e.g. {list(np.asarray(unit_ids)[bad][:3])}) have no "
                         f"value for covariate column(s) {cols[:10]}; fill them, or pass covariate_nan='mean' "
                         "(the training mean) or 'drop' (those bags are left out)")
    warnings.warn(f"{where}: {int(bad.sum())} bag(s) without a value for covariate column(s) {cols[:10]} are "
                  "left out (covariate_nan='drop')", UserWarning, stacklevel=3)
    return ~bad


def bag_covariates(cohort, units, names=None, *, spec: CovariateSpec | None = None, nan: str = "raise",
                   where: str = "fit"):
    """(units kept, raw covariates of the kept units [n, k], spec): ``names`` at fit, or the fitted ``spec``
    (its sources, encoding and NaN policy) at predict."""
    if spec is None:
        C_slides, spec = slide_covariates(cohort, names, nan=nan)
    else:
        C_slides, _ = slide_covariates(cohort, spec.names, spec, spec.nan)
    C = unit_covariates(C_slides, units.rows)
    keep = nan_rows(spec, C, units.ids, where)
    if not keep.all():
        units, C = units.subset(keep), C[keep]
        if not len(units):
            raise TableError(f"{where}: no bag left with complete covariates {spec.names}")
    return units, C, spec


def stack_fit(task: str, base_out, covs, targets: dict, alpha_surv: float):
    """Late fusion by stacking: ``(scale, shift [n_out], W [n_out, n_cov])`` minimising the task's mean loss of
    ``scale * base_out + shift + covs @ W.T`` over the training bags plus ``0.5 |W|^2 / n`` (a standard normal
    prior on the standardised covariates' weights; L-BFGS). ``base_out`` is the trained bag network's output:
    the covariates explain what the tiles do not, and ``scale`` puts the tiles' output on the scale the labels
    support, so covariates that carry nothing get weights that matter little next to it, however briefly the
    bag network was trained (a joint fit from a covariates-only start let chance associations of a few dozen
    bags outweigh an under-trained bag network's small logits)."""
    import torch

    from . import tasks as T

    base_out = base_out.detach()
    n_out = base_out.shape[1]
    l2 = 0.5 / max(len(covs), 1)
    scale = torch.ones((), dtype=covs.dtype, device=covs.device, requires_grad=True)
    shift = torch.zeros(n_out, dtype=covs.dtype, device=covs.device, requires_grad=True)
    W = torch.zeros(n_out, covs.shape[1], dtype=covs.dtype, device=covs.device, requires_grad=True)
    opt = torch.optim.LBFGS([scale, shift, W], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = T.task_loss(task, scale * base_out + shift + covs @ W.T, targets, alpha_surv)
        if loss is None:  # cox without events
            loss = (W ** 2).sum() * 0
        loss = loss + l2 * (W ** 2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    return scale.detach(), shift.detach(), W.detach()
