"""Expression prediction: a ridge probe from slide embeddings to every gene, scored on held-out patients
against a permutation baseline."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

from ..errors import TableError
from ..io._mudata import slides_and_rna

__all__ = ["predict_expression"]


def _pearson_cols(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(0) / np.sqrt((a ** 2).sum(0) * (b ** 2).sum(0))


def _fold_maps(X: np.ndarray, fold: np.ndarray, alpha: float) -> list:
    """Per fold, the linear map from the training targets to the held-out predictions of a ridge fitted on
    standardised features (as ``make_pipeline(StandardScaler(), Ridge(alpha))``): X is fixed, so the map is
    computed once and every permutation of the targets costs one matrix product."""
    maps = []
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        mu, sd = X[tr].mean(0), X[tr].std(0)
        sd[sd == 0] = 1.0
        U, s, Vt = np.linalg.svd((X[tr] - mu) / sd, full_matrices=False)
        H = (((X[te] - mu) / sd) @ Vt.T * (s / (s ** 2 + alpha))) @ U.T
        maps.append((tr, te, H))
    return maps


def _cv_predict(maps, Y: np.ndarray) -> np.ndarray:
    out = np.empty_like(Y)
    for tr, te, H in maps:
        m = Y[tr].mean(0)
        out[te] = H @ (Y[tr] - m) + m
    return out


def predict_expression(data, use_rep: str, *, rna=None, genes=None, alpha: float | None = None,
                       folds: int = 5, n_permutations: int = 100, aggregate: str = "mean", random_state=0,
                       key_added: str | None = "predicted", level: str = "patient",
                       section_key: str | None = None, n_top_genes: int = 50, n_pcs: int = 256,
                       target_sum: float | None = None, predict_to=None) -> pd.DataFrame:
    """Predict each gene from slide embeddings with a ridge probe; Pearson r on held-out patients.

    With ``level="spot"``, ``data`` is a spots AnnData (``pk.io.read_visium`` / ``read_st`` / ...) whose spot
    tiles were embedded (``pk.pp.tile_spots``, ``pk.tl.embed_tiles``) and the HEST-Benchmark protocol runs:
    log1p counts of the top ``n_top_genes`` highly variable genes (or ``genes``), standardised embeddings
    reduced to ``n_pcs`` principal components and a ridge (``alpha`` default ``100 / (n_pcs * n_genes)``,
    HEST's), fitted per fold. Folds are ``folds`` spatially contiguous blocks (k-means of the spot positions)
    inside one section, or the sections of ``obs[section_key]`` (leave-one-section-out). Baselines: the
    training mean (``mean_r2``, ``mean_mse``) and ``n_permutations`` shuffles of the spots within each
    section (``null_mean``, ``null_q95``, ``pvalue``). HEST fits the ridge without intercept; pathkit fits
    it so that predictions are on the expression scale (Pearson r is the same).

    Slides of one patient are averaged first (one row per RNA row); patients are split into ``folds``; the
    ridge head is fitted on the training patients and predicts the held-out ones. The baseline repeats the
    whole cross-validation with the RNA rows permuted across patients ``n_permutations`` times.

    Parameters
    ----------
    data
        Linked MuData (``"slides"`` + ``"rna"``) or the slides AnnData with ``rna=``.
    use_rep
        Slides ``obsm`` key of the embedding (``"X_uni"``, a slide embedding ...).
    genes
        Genes to predict (default: all). NaN is refused with the genes' names; constant genes are dropped
        with a warning that counts them.
    alpha
        Ridge penalty; default: chosen by ``RidgeCV`` on all patients over ``10**[-2..4]`` (a mild optimism
        shared with the permutation baseline, which repeats the choice).
    folds, n_permutations, aggregate, random_state
        Patient folds; permutations of the baseline; how slides of a patient are merged; seed.
    key_added
        Layer of ``mdata["rna"]`` receiving the out-of-fold predictions (NaN for genes not predicted and
        patients without slides); ``None`` writes nothing. At ``level="spot"``: a sparse layer of the spots
        holding the out-of-fold log1p predictions of the predicted genes (listed in
        ``uns["<key_added>_expression"]``), and ``obs["<key_added>_fold"]``.
    level
        ``"patient"`` (bulk RNA of a linked cohort) or ``"spot"`` (spatial transcriptomics).
    section_key, n_top_genes, n_pcs, target_sum
        ``level="spot"`` only: the ``obs`` column of the section of each spot (leave-one-section-out when it
        holds several); genes chosen when ``genes`` is None; principal components of the embeddings;
        counts per spot before log1p (None: plain log1p, as HEST).
    predict_to
        ``level="spot"`` only: a tiles AnnData of a whole slide embedded with the same model, tile size and
        mpp; the pipeline fitted on every spot predicts each tile into ``obsm["<key_added>_expression"]``
        (tiles x genes, a DataFrame). For a cohort of whole slides against its bulk RNA, see
        :func:`pathkit.tl.predicted_expression_by_slide`.

    Returns
    -------
    DataFrame
        One row per gene: ``gene``, ``r`` (held-out Pearson r), ``null_mean``, ``null_q95`` (the permutation
        baseline), ``pvalue`` (permutation, ``(1 + #null >= r) / (1 + n_permutations)``), ``qvalue`` (BH),
        ``n`` (patients), sorted by ``r``. Sets ``rna.layers[key_added]``.
    """
    if level == "spot":
        from ..spatial._predict import predict_spot_expression

        return predict_spot_expression(
            data, use_rep, genes=genes, n_top_genes=n_top_genes, n_pcs=n_pcs, alpha=alpha, folds=folds,
            section_key=section_key, target_sum=target_sum, n_permutations=n_permutations,
            random_state=random_state, key_added=key_added, predict_to=predict_to)
    if level != "patient":
        raise ValueError(f"level must be 'patient' or 'spot', not {level!r}")
    from sklearn.linear_model import RidgeCV

    slides, rna_ad, skey = slides_and_rna(data, rna)
    if use_rep not in slides.obsm:
        raise TableError(f"use_rep={use_rep!r} is not a slides obsm key ({list(slides.obsm)})")
    E = slides.obsm[use_rep]
    E = E.to_numpy() if isinstance(E, pd.DataFrame) else np.asarray(E, dtype=np.float64)
    ids = slides.obs[skey].astype(object).where(slides.obs[skey].notna()).to_numpy()
    ok = pd.notna(ids) & np.isfinite(E).all(axis=1)
    Edf = pd.DataFrame(E[ok], index=pd.Index(ids[ok]).astype(str)).groupby(level=0).agg(aggregate)
    common = rna_ad.obs_names[rna_ad.obs_names.isin(Edf.index)]
    if len(common) < 2 * folds:
        raise TableError(f"only {len(common)} patients have both {use_rep!r} and RNA; need at least {2 * folds}")
    genes = list(rna_ad.var_names) if genes is None else [genes] if isinstance(genes, str) else list(genes)
    missing = [g for g in genes if g not in rna_ad.var_names]
    if missing:
        raise KeyError(f"gene(s) {missing[:10]} not in the RNA var_names")
    Y = rna_ad[common, genes].X
    Y = Y.toarray() if hasattr(Y, "toarray") else np.asarray(Y, dtype=np.float64)
    bad = np.isnan(Y).any(0)
    if bad.any():
        raise TableError(f"RNA has NaN for {int(bad.sum())} gene(s) (e.g. {list(np.array(genes)[bad][:5])}); "
                         "impute them or pass genes= without them")
    const = np.ptp(Y, axis=0) == 0
    if const.any():
        warnings.warn(f"predict_expression: {int(const.sum())} gene(s) constant across the {len(common)} "
                      f"patients dropped (e.g. {list(np.array(genes)[const][:5])})", UserWarning, stacklevel=2)
        genes = list(np.array(genes)[~const])
        Y = Y[:, ~const]
    X = Edf.loc[common].to_numpy()
    rng = np.random.default_rng(random_state)
    fold = rng.permutation(np.arange(len(common)) % folds)
    if alpha is None:
        from sklearn.preprocessing import StandardScaler

        alpha = float(RidgeCV(alphas=10.0 ** np.arange(-2, 5)).fit(StandardScaler().fit_transform(X), Y).alpha_)
    maps = _fold_maps(X, fold, alpha)
    pred = _cv_predict(maps, Y)
    r = _pearson_cols(pred, Y)
    with threadpool_limits(1):  # many small products: one BLAS thread is ~10x faster than contended ones
        null = np.stack([_pearson_cols(_cv_predict(maps, Yp), Yp)
                         for Yp in (Y[rng.permutation(len(Y))] for _ in range(n_permutations))]) \
            if n_permutations else np.empty((0, len(genes)))
    p = (1 + (null >= r).sum(0)) / (1 + len(null)) if len(null) else np.full(len(genes), np.nan)
    out = pd.DataFrame({"gene": genes, "r": r, "null_mean": null.mean(0) if len(null) else np.nan,
                        "null_q95": np.quantile(null, 0.95, axis=0) if len(null) else np.nan, "pvalue": p,
                        "n": len(common)})
    out["qvalue"] = stats.false_discovery_control(p, method="bh") if len(null) else np.nan
    out.attrs.update(alpha=alpha, folds=folds, n_permutations=n_permutations, use_rep=use_rep)
    if key_added:
        layer = np.full(rna_ad.shape, np.nan)
        rows = rna_ad.obs_names.get_indexer(common)
        cols = rna_ad.var_names.get_indexer(genes)
        layer[np.ix_(rows, cols)] = pred
        rna_ad.layers[key_added] = layer
    return out.sort_values("r", ascending=False, kind="stable").reset_index(drop=True)
