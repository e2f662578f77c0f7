"""Spot-level expression prediction from H&E embeddings with the HEST-Benchmark protocol (Jaume et al. 2024):
log1p counts, top highly variable genes, PCA-256 of standardised embeddings, ridge, per-gene Pearson r;
folds are spatial blocks inside a section (random splits leak: neighbouring spots share signal) or whole
sections (leave-one-section-out)."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import sparse, stats
from threadpoolctl import threadpool_limits

from ..errors import TableError

__all__ = ["check_same_tiling", "fit_spot_model", "log1p_expression", "predict_spot_expression", "scale_of",
           "spatial_folds"]


def log1p_expression(spots, genes, target_sum: float | None = None) -> np.ndarray:
    """log1p of the raw counts (``layers["counts"]`` else ``X``) of `genes`, optionally after scaling every
    spot to `target_sum` counts (scanpy's ``normalize_total``); HEST uses plain log1p (``target_sum=None``)."""
    C = spots.layers.get("counts", spots.X)
    cols = spots.var_names.get_indexer(genes)
    if target_sum is not None:
        tot = np.asarray(C.sum(1)).ravel().astype(np.float64)
        tot[tot == 0] = 1.0
        C = sparse.diags(target_sum / tot) @ sparse.csr_matrix(C)
    Y = C[:, cols]
    Y = Y.toarray() if sparse.issparse(Y) else np.asarray(Y)
    return np.log1p(Y.astype(np.float64))


def spatial_folds(xy: np.ndarray, sections: np.ndarray, folds: int = 5, random_state=0) -> np.ndarray:
    """Fold of each spot: with several sections, the section (leave-one-section-out); with one, ``folds``
    spatially contiguous blocks (k-means of the spot positions)."""
    from sklearn.cluster import KMeans

    sec = pd.Index(sections).astype(str)
    uniq = sec.unique()
    if len(uniq) > 1:
        return pd.Categorical(sec, categories=uniq).codes.astype(np.int64)
    if len(xy) < 2 * folds:
        raise TableError(f"{len(xy)} spots are too few for {folds} spatial blocks")
    km = KMeans(n_clusters=folds, n_init=10, random_state=random_state).fit(np.asarray(xy, dtype=np.float64))
    return km.labels_.astype(np.int64)


def _pearson_cols(a, b):
    a = a - a.mean(0)
    b = b - b.mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(0) / np.sqrt((a ** 2).sum(0) * (b ** 2).sum(0))


def _fold_maps(E: np.ndarray, fold: np.ndarray, n_pcs: int, alpha_of):
    """Per fold, the linear map from centred training targets to held-out predictions of
    ``make_pipeline(StandardScaler(), PCA(n), Ridge(alpha))``: the embeddings are fixed, so every
    permutation of the targets costs a matrix product."""
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    maps = []
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        n = int(min(n_pcs, tr.sum() - 1, E.shape[1]))
        sc = StandardScaler().fit(E[tr])
        pca = PCA(n_components=n, svd_solver="full").fit(sc.transform(E[tr]))
        Ztr, Zte = pca.transform(sc.transform(E[tr])), pca.transform(sc.transform(E[te]))
        Ztr_c = Ztr - Ztr.mean(0)
        alpha = alpha_of(n)
        A = np.linalg.solve(Ztr_c.T @ Ztr_c + alpha * np.eye(n), Ztr_c.T)
        maps.append((tr, te, (Zte - Ztr.mean(0)) @ A, n, alpha))
    return maps


def _cv_predict(maps, Y):
    out = np.empty_like(Y)
    for tr, te, H, _, _ in maps:
        m = Y[tr].mean(0)
        out[te] = H @ (Y[tr] - m) + m
    return out


def _mean_baseline(maps, Y):
    out = np.empty_like(Y)
    for tr, te, *_ in maps:
        out[te] = Y[tr].mean(0)
    return out


def _r2_mse(pred, Y):
    mse = ((pred - Y) ** 2).mean(0)
    var = ((Y - Y.mean(0)) ** 2).mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1 - mse / var, mse


def predict_spot_expression(spots, use_rep: str, *, genes=None, n_top_genes: int = 50, n_pcs: int = 256,
                            alpha: float | None = None, folds: int = 5, section_key: str | None = None,
                            target_sum: float | None = None, n_permutations: int = 100, random_state=0,
                            key_added: str | None = "predicted", predict_to=None) -> pd.DataFrame:
    """See :func:`pathkit.tl.predict_expression` with ``level="spot"``."""
    import anndata as ad

    if not isinstance(spots, ad.AnnData):
        raise TypeError(f"level='spot' takes the spots AnnData, got {type(spots).__name__}")
    if use_rep not in spots.obsm:
        raise TableError(f"use_rep={use_rep!r} is not a spots obsm key ({list(spots.obsm)}); embed the spot "
                         "tiles first: pk.pp.tile_spots(slide, spots); pk.tl.embed_tiles(spots, slide, model)")
    E = np.asarray(spots.obsm[use_rep], dtype=np.float64)
    ok = np.isfinite(E).all(1)
    if not ok.all():
        raise TableError(f"{int((~ok).sum())} spot(s) have non-finite {use_rep!r} features")
    if genes is None:
        genes = _top_hvg(spots, n_top_genes, target_sum)
    genes = [genes] if isinstance(genes, str) else list(genes)
    missing = [g for g in genes if g not in spots.var_names]
    if missing:
        raise KeyError(f"gene(s) {missing[:10]} not in spots.var_names")
    Y = log1p_expression(spots, genes, target_sum)
    const = np.ptp(Y, axis=0) == 0
    if const.any():
        warnings.warn(f"predict_expression: {int(const.sum())} gene(s) constant over the spots dropped "
                      f"(e.g. {list(np.array(genes)[const][:5])})", UserWarning, stacklevel=3)
        genes, Y = list(np.array(genes)[~const]), Y[:, ~const]
    if section_key is not None and section_key not in spots.obs.columns:
        raise TableError(f"section_key={section_key!r} is not a spots.obs column")
    sections = spots.obs[section_key].to_numpy() if section_key else np.zeros(spots.n_obs)
    fold = spatial_folds(np.asarray(spots.obsm["spatial"])[:, :2], sections, folds, random_state)
    ng = len(genes)
    # HEST's penalty, 100 / (n_features * n_genes), on the PCA features of each fold
    maps = _fold_maps(E, fold, n_pcs, (lambda n: 100.0 / (n * ng)) if alpha is None else (lambda n: alpha))
    pred = _cv_predict(maps, Y)
    r = _pearson_cols(pred, Y)
    r2, mse = _r2_mse(pred, Y)
    r2_mean, mse_mean = _r2_mse(_mean_baseline(maps, Y), Y)
    rng = np.random.default_rng(random_state)
    groups = [np.flatnonzero(sections == s) for s in pd.unique(sections)]

    def shuffled():
        perm = np.arange(len(Y))
        for g in groups:  # within each section, so that section means stay with their section
            perm[g] = rng.permutation(g)
        return Y[perm]

    with threadpool_limits(1):
        null = np.stack([_pearson_cols(_cv_predict(maps, Yp), Yp) for Yp in (shuffled() for _ in
                                                                             range(n_permutations))]) \
            if n_permutations else np.empty((0, ng))
    p = (1 + (null >= r).sum(0)) / (1 + len(null)) if len(null) else np.full(ng, np.nan)
    out = pd.DataFrame({"gene": genes, "r": r, "r2": r2, "mse": mse, "mean_r2": r2_mean, "mean_mse": mse_mean,
                        "null_mean": null.mean(0) if len(null) else np.nan,
                        "null_q95": np.quantile(null, 0.95, axis=0) if len(null) else np.nan, "pvalue": p,
                        "n": len(Y)})
    out["qvalue"] = stats.false_discovery_control(p, method="bh") if len(null) else np.nan
    scheme = "leave-one-section-out" if len(groups) > 1 else "spatial-blocks"
    out.attrs.update(level="spot", scheme=scheme, folds=int(fold.max() + 1), use_rep=use_rep,
                     n_pcs=[m[3] for m in maps], alpha=[m[4] for m in maps], n_permutations=n_permutations)
    if key_added:
        cols = spots.var_names.get_indexer(genes)
        rows = np.repeat(np.arange(spots.n_obs), len(cols))
        spots.layers[key_added] = sparse.csr_matrix(
            (pred.astype(np.float32).ravel(), (rows, np.tile(cols, spots.n_obs))), shape=spots.shape)
        spots.obs[f"{key_added}_fold"] = fold
        spots.uns[f"{key_added}_expression"] = {
            "genes": list(genes), "use_rep": use_rep, "scheme": scheme, "target_sum": target_sum or 0,
            "scale": scale_of(target_sum)}
    if predict_to is not None:
        _predict_tiles(predict_to, E, Y, genes, use_rep, n_pcs, alpha, key_added or "predicted", spots, target_sum)
    return out.sort_values("r", ascending=False, kind="stable").reset_index(drop=True)


def fit_spot_model(E, Y, n_pcs: int, alpha: float | None):
    """The protocol's pipeline (standardise, PCA, ridge with HEST's penalty) fitted on every spot."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = int(min(n_pcs, len(E) - 1, E.shape[1]))
    pipe = make_pipeline(StandardScaler(), PCA(n, svd_solver="full"),
                         Ridge(alpha=100.0 / (n * Y.shape[1]) if alpha is None else alpha))
    return pipe.fit(E, Y)


def check_same_tiling(spots, tiles, use_rep: str, what: str) -> None:
    """The whole-slide tiles must be embedded as the spot tiles were: same tile size and mpp, same model."""
    if use_rep not in tiles.obsm:
        raise TableError(f"{what}: the tiles have no obsm[{use_rep!r}]; embed them with the model of the spot "
                         "tiles (pk.tl.embed_tiles)")
    spec_s, spec_t = spots.uns.get("tile_spec") or {}, tiles.uns.get("tile_spec") or {}
    for k in ("tile_px", "mpp"):
        if k in spec_s and k in spec_t and float(spec_s[k]) != float(spec_t[k]):
            raise TableError(f"{what}: the spot tiles have {k}={spec_s[k]} but the tiles {spec_t[k]}; "
                             "tile the slide as the spots were (pk.pp.tile(slide, tile_px, mpp))")
    m_s = (spots.uns.get("models") or {}).get(use_rep) or {}
    m_t = (tiles.uns.get("models") or {}).get(use_rep) or {}
    for k in ("name", "weights_sha256"):
        if m_s.get(k) and m_t.get(k) and m_s[k] != m_t[k]:
            raise TableError(f"{what}: obsm[{use_rep!r}] of the spots and of the tiles come from different "
                             f"{'models' if k == 'name' else 'weights'} ({m_s[k]} vs {m_t[k]})")
    width_s, width_t = np.shape(spots.obsm[use_rep])[1], np.shape(tiles.obsm[use_rep])[1]
    if width_s != width_t:
        raise TableError(f"{what}: obsm[{use_rep!r}] has {width_s} columns on the spots, {width_t} on the tiles")


def scale_of(target_sum) -> str:
    return "log1p(counts)" if target_sum is None else f"log1p(counts / total * {target_sum:g})"


def _predict_tiles(tiles, E, Y, genes, use_rep, n_pcs, alpha, key, spots, target_sum=None):
    """Fit the protocol's pipeline on every spot and predict every tile of a whole slide (same encoder,
    same tile size and mpp): ``tiles.obsm["<key>_expression"]`` (tiles x genes, log1p scale)."""
    check_same_tiling(spots, tiles, use_rep, "predict_to")
    pipe = fit_spot_model(E, Y, n_pcs, alpha)
    T = np.asarray(tiles.obsm[use_rep], dtype=np.float64)
    tiles.obsm[f"{key}_expression"] = pd.DataFrame(pipe.predict(T), index=tiles.obs_names,
                                                   columns=list(genes))
    tiles.uns[f"{key}_expression"] = {"genes": list(genes), "use_rep": use_rep, "scale": scale_of(target_sum),
                                      "trained_on": str((spots.uns.get("spot_spec") or {}).get("library_id", ""))}


def _top_hvg(spots, n_top_genes: int, target_sum):
    import scanpy as sc

    tmp = ad_log1p(spots, target_sum)
    n = min(int(n_top_genes), tmp.n_vars)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pp.highly_variable_genes(tmp, n_top_genes=n, flavor="seurat")
    disp = tmp.var["dispersions_norm"].fillna(-np.inf)
    return list(disp.sort_values(ascending=False, kind="stable").index[:n])


def ad_log1p(spots, target_sum):
    import anndata as ad

    C = spots.layers.get("counts", spots.X)
    C = sparse.csr_matrix(C, dtype=np.float64)
    if target_sum is not None:
        tot = np.asarray(C.sum(1)).ravel()
        tot[tot == 0] = 1.0
        C = sparse.csr_matrix(sparse.diags(target_sum / tot) @ C)
    C.data = np.log1p(C.data)
    return ad.AnnData(X=C, var=pd.DataFrame(index=spots.var_names.copy()))
