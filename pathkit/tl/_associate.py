"""Histology features against genes or pathway scores: Spearman or linear models with covariates, BH q-values.

Every (feature, target) test is computed at once with matrix products: ranks (Spearman) or values (linear)
are residualised on the covariates (Frisch-Waugh-Lovell), the partial correlation ``r`` gives
``t = r * sqrt(df / (1 - r^2))`` with ``df = n - 2 - n_covariates``, which is exactly the OLS t-test of the
feature's coefficient (and scipy's Spearman test without covariates).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from ..errors import TableError
from ..io._mudata import slides_and_rna

__all__ = ["associate"]


def _as_frame(obj, index, prefix: str, n_pcs: int | None, random_state) -> pd.DataFrame:
    if isinstance(obj, pd.DataFrame):
        f = obj.copy()
        f.index = index
        f.columns = [str(c) for c in f.columns]
        return f
    a = obj.toarray() if hasattr(obj, "toarray") else np.asarray(obj, dtype=np.float64)
    a = a.reshape(len(index), -1)
    if n_pcs is not None:
        from sklearn.decomposition import PCA

        ok = np.isfinite(a).all(axis=1)
        pcs = np.full((len(a), min(n_pcs, a.shape[1], int(ok.sum()))), np.nan)
        pcs[ok] = PCA(n_components=pcs.shape[1], random_state=random_state).fit_transform(a[ok])
        return pd.DataFrame(pcs, index=index, columns=[f"{prefix}_PC{i + 1}" for i in range(pcs.shape[1])])
    return pd.DataFrame(a, index=index, columns=[f"{prefix}_{i}" for i in range(a.shape[1])])


def _collect(adata, keys, what: str, n_pcs, random_state, genes_ok: bool) -> pd.DataFrame:
    """Columns from obsm keys, obs columns or (RNA) gene names."""
    if isinstance(keys, pd.DataFrame):
        return keys
    keys = [keys] if isinstance(keys, str) else list(keys)
    parts, genes = [], []
    for k in keys:
        if k in adata.obsm:
            parts.append(_as_frame(adata.obsm[k], adata.obs_names, k, n_pcs, random_state))
        elif k in adata.obs.columns:
            col = adata.obs[k]
            if not pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
                raise TableError(f"{what}: obs[{k!r}] is not numeric; encode it (e.g. one column per class) "
                                 "or pass it as a covariate")
            parts.append(pd.DataFrame({k: col.astype(float).to_numpy()}, index=adata.obs_names))
        elif genes_ok and (k == "genes" or k in adata.var_names):
            genes.extend(list(adata.var_names) if k == "genes" else [k])
        else:
            raise TableError(f"{what}: {k!r} is not an obsm key ({list(adata.obsm)}), an obs column"
                             + (" or a gene" if genes_ok else ""))
    if genes:
        X = adata[:, genes].X
        X = X.toarray() if hasattr(X, "toarray") else np.asarray(X, dtype=np.float64)
        parts.append(pd.DataFrame(X, index=adata.obs_names, columns=genes))
    return pd.concat(parts, axis=1)


def _covariates(slides, rna, covariates, slides_key) -> tuple[pd.DataFrame, list]:
    cols = {}
    for c in covariates:
        if c in rna.obs.columns:
            s = rna.obs[c]
        elif c in slides.obs.columns:
            s = slides.obs[c].groupby(slides.obs[slides_key].astype(str).to_numpy(), observed=True).first()
        else:
            raise TableError(f"covariate {c!r} is not an obs column of the slides or the RNA")
        if pd.api.types.is_numeric_dtype(s) and not isinstance(s.dtype, pd.CategoricalDtype):
            cols[c] = s.astype(float)
        else:
            dummies = pd.get_dummies(s.astype("category"), prefix=c, drop_first=True, dtype=float)
            dummies[s.isna().to_numpy()] = np.nan
            cols.update({k: dummies[k] for k in dummies.columns})
    return pd.DataFrame(cols).reindex(rna.obs_names), list(cols)


def _residualise(M: np.ndarray, C: np.ndarray) -> np.ndarray:
    beta, *_ = np.linalg.lstsq(C, M, rcond=None)
    return M - C @ beta


def _block(F: np.ndarray, T: np.ndarray, C: np.ndarray, method: str):
    """(r, t, df, coef) for every column pair of F (n x p) and T (n x q), covariates C (n x k, intercept first)."""
    if method == "spearman":
        F, T = stats.rankdata(F, axis=0), stats.rankdata(T, axis=0)
    Fr, Tr = _residualise(F, C), _residualise(T, C)
    fn, tn = np.sqrt((Fr ** 2).sum(0)), np.sqrt((Tr ** 2).sum(0))
    cross = Fr.T @ Tr
    with np.errstate(invalid="ignore", divide="ignore"):
        r = np.clip(cross / np.outer(fn, tn), -1.0, 1.0)
        df = F.shape[0] - C.shape[1] - 1
        t = r * np.sqrt(df / np.maximum(1.0 - r ** 2, 1e-300))
        coef = cross / (fn ** 2)[:, None]
    return r, t, df, coef


def associate(data, features, targets="genes", *, rna=None, method: str = "spearman", covariates=None,
              n_pcs: int | None = None, aggregate: str = "mean", nan_policy: str = "raise", fdr: str = "all",
              min_n: int = 10, random_state=0, key_added: str | None = "associations",
              adjust_site: bool = False, site_key: str = "tss") -> pd.DataFrame:
    """Test every histology feature against every gene or pathway score; Benjamini-Hochberg q-values.

    Parameters
    ----------
    data
        MuData from :func:`pathkit.io.link` (modalities ``"slides"`` and ``"rna"``), or the slides AnnData
        with ``rna=``.
    features
        Slide-level features: ``obsm`` keys of the slides (an embedding such as ``"X_uni"``, reduced to
        ``n_pcs`` principal components when given; ``"composition_leiden"`` from
        :func:`pathkit.tl.tile_composition`), numeric ``obs`` columns (a MIL risk score), or a DataFrame
        indexed like the slides.
    targets
        ``"genes"`` (all of ``rna.X``), gene names, ``obsm`` keys of the RNA (``"pathways_score_genes"`` from
        :func:`pathkit.tl.pathway_scores`) or numeric RNA ``obs`` columns.
    rna
        The RNA AnnData when ``data`` is the slides AnnData.
    method
        ``"spearman"`` (rank correlation; partial on the covariates' residuals; ``statistic`` = rho) or
        ``"linear"`` (OLS ``target ~ feature + covariates``; ``statistic`` = t of the feature, ``coef`` its
        slope).
    covariates
        obs columns (RNA first, then slides: age, stage, ...); categorical ones are one-hot encoded.
    n_pcs
        Reduce each ``obsm`` feature matrix to this many principal components first.
    aggregate
        Slides of the same patient (sample) are averaged (``"mean"``) or their median taken (``"median"``)
        before testing, so each patient counts once.
    nan_policy
        NaN in the targets: ``"raise"`` (default, the message names the genes) or ``"omit"`` (those targets
        are dropped with a warning that counts them). NaN in features drops those rows for that feature.
    fdr
        ``"all"``: BH over every test of the table; ``"feature"``: BH within each feature.
    min_n
        Pairs with fewer complete patients get NaN p-values.
    random_state
        Seed of the PCA.
    key_added
        Where the table is stored: ``mdata.uns[key_added]`` (or ``rna.uns``); ``None`` stores nothing.
    adjust_site
        Add the site (``site_key``) as a categorical covariate. Independently, a warning names every slide
        ``obs`` feature or covariate confounded with site (Cramér's V above 0.5).
    site_key
        obs column of the site; ``"tss"``: the TCGA tissue source site parsed from the barcodes (added to the
        slides' obs when `adjust_site`).

    Returns
    -------
    DataFrame
        One row per (feature, target): ``feature``, ``target``, ``statistic``, ``pvalue``, ``qvalue``, ``n``
        (+ ``r`` and ``coef`` for ``"linear"``), sorted by p-value. Also sets ``uns[key_added]`` (the table).
    """
    import mudata as md

    if method not in ("spearman", "linear"):
        raise ValueError(f"method must be 'spearman' or 'linear', got {method!r}")
    if aggregate not in ("mean", "median"):
        raise ValueError(f"aggregate must be 'mean' or 'median', got {aggregate!r}")
    slides, rna_ad, skey = slides_and_rna(data, rna)
    from ._site import check_site_confounding

    covariates = check_site_confounding(
        slides, ([features] if isinstance(features, str) else [] if isinstance(features, pd.DataFrame)
                 else list(features)) + ([covariates] if isinstance(covariates, str) else list(covariates or [])),
        site_key, adjust_site, covariates)
    F = _collect(slides, features, "features", n_pcs, random_state, genes_ok=False)
    if not F.index.equals(slides.obs_names):
        F = F.reindex(slides.obs_names)
    ids = slides.obs[skey].astype(object).where(slides.obs[skey].notna()).to_numpy()
    keep = pd.notna(ids)
    F = F[keep].groupby(pd.Index(ids[keep]).astype(str)).agg(aggregate)  # one row per patient
    T = _collect(rna_ad, targets, "targets", None, random_state, genes_ok=True)
    nan_t = T.columns[T.isna().any(axis=0).to_numpy()]
    if len(nan_t):
        if nan_policy == "raise":
            raise TableError(f"RNA targets have NaN in {len(nan_t)} column(s) (e.g. {list(nan_t[:5])}): impute "
                             "or drop them, or pass nan_policy='omit' to drop those targets")
        warnings.warn(f"associate: dropped {len(nan_t)} target(s) with NaN (e.g. {list(nan_t[:5])})",
                      UserWarning, stacklevel=2)
        T = T.drop(columns=nan_t)
    common = T.index.intersection(F.index)
    if len(common) < min_n:
        raise TableError(f"only {len(common)} patients have both features and RNA (min_n={min_n}); check "
                         f"slides.obs[{skey!r}] against mdata['rna'].obs_names")
    F, T = F.loc[common].astype(float), T.loc[common].astype(float)
    cov_names = []
    if covariates:
        Cdf, cov_names = _covariates(slides, rna_ad, [covariates] if isinstance(covariates, str) else covariates,
                                     skey)
        Cdf = Cdf.reindex(common)
        ok = Cdf.notna().all(axis=1).to_numpy()
        if (~ok).any():
            warnings.warn(f"associate: {int((~ok).sum())} patient(s) without covariate values dropped",
                          UserWarning, stacklevel=2)
        F, T, Cdf = F[ok], T[ok], Cdf[ok]
        C = np.column_stack([np.ones(len(F)), Cdf.to_numpy(float)])
    else:
        C = np.ones((len(F), 1))
    const_t = T.columns[(T.nunique() <= 1).to_numpy()]
    if len(const_t):
        warnings.warn(f"associate: {len(const_t)} constant target(s) dropped (no variance across "
                      f"{len(T)} patients, e.g. {list(const_t[:5])})", UserWarning, stacklevel=2)
        T = T.drop(columns=const_t)
    const_f = F.columns[(F.nunique() <= 1).to_numpy()]
    if len(const_f):
        warnings.warn(f"associate: {len(const_f)} constant feature(s) dropped (e.g. {list(const_f[:5])})",
                      UserWarning, stacklevel=2)
        F = F.drop(columns=const_f)
    if F.shape[1] == 0 or T.shape[1] == 0:
        raise TableError("associate: nothing left to test after dropping constant features / targets")
    Tv = T.to_numpy()
    tables = []
    masks = F.notna().to_numpy()
    patterns = pd.Series([m.tobytes() for m in masks.T])
    for cols in patterns.groupby(patterns).groups.values():  # features sharing rows are tested together
        cols = list(cols)
        rows = masks[:, cols[0]]
        n = int(rows.sum())
        r, t, df, coef = _block(F.iloc[rows, cols].to_numpy(), Tv[rows], C[rows], method)
        p = 2 * stats.t.sf(np.abs(t), df) if n >= min_n and df > 0 else np.full_like(t, np.nan)
        part = pd.DataFrame({"feature": np.repeat(F.columns[cols].to_numpy(), T.shape[1]),
                             "target": np.tile(T.columns.to_numpy(), len(cols)),
                             "statistic": (r if method == "spearman" else t).ravel(), "pvalue": p.ravel(),
                             "n": n})
        if method == "linear":
            part["r"], part["coef"] = r.ravel(), coef.ravel()
        tables.append(part)
    out = pd.concat(tables, ignore_index=True)
    out["qvalue"] = np.nan
    ok = out["pvalue"].notna()
    if fdr == "all":
        out.loc[ok, "qvalue"] = stats.false_discovery_control(out.loc[ok, "pvalue"].to_numpy(), method="bh")
    elif fdr == "feature":
        for idx in out[ok].groupby("feature").groups.values():
            out.loc[idx, "qvalue"] = stats.false_discovery_control(out.loc[idx, "pvalue"].to_numpy(), method="bh")
    else:
        raise ValueError(f"fdr must be 'all' or 'feature', got {fdr!r}")
    cols = ["feature", "target", "statistic", "pvalue", "qvalue", "n"] + (["r", "coef"] if method == "linear"
                                                                          else [])
    out = out[cols].sort_values("pvalue", kind="stable").reset_index(drop=True)
    out.attrs.update(method=method, covariates=cov_names, n_patients=len(F), fdr=fdr)
    if key_added:
        (data if isinstance(data, md.MuData) else rna_ad).uns[key_added] = out
    return out
