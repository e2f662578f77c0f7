"""UMAP and Leiden clustering on scanpy, for tiles of one slide, tiles of many slides, or slide cohorts."""
from __future__ import annotations

import warnings

import numpy as np

#: Above this many dimensions the representation is reduced with PCA first (scanpy's own rule of thumb).
PCA_ABOVE = 50


def _representation(adata, use_rep: str) -> np.ndarray:
    if use_rep == "X":
        if adata.X is None:
            raise KeyError("use_rep='X' but adata.X is empty; pass use_rep= one of obsm keys "
                           f"{list(adata.obsm.keys())}")
        X = adata.X
        X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    else:
        if use_rep not in adata.obsm:
            raise KeyError(f"use_rep={use_rep!r} is not in adata.obsm (keys: {list(adata.obsm.keys())}); "
                           "for a cohort run pk.tl.embed_cohort / embed_slide first, or pass use_rep='X'")
        X = np.asarray(adata.obsm[use_rep])
        if X.ndim != 2:
            raise ValueError(f"adata.obsm[{use_rep!r}] has shape {X.shape}; expected (n_obs, dim). For "
                             "layers='all' slide embeddings pick one layer into its own obsm key first")
    X = np.asarray(X, dtype=np.float32)
    if not np.isfinite(X).all():
        bad = np.flatnonzero(~np.isfinite(X).all(axis=1))
        raise ValueError(f"{use_rep!r} has non-finite values in {len(bad)} rows (first obs: "
                         f"{list(adata.obs_names[bad[:5]])}); drop or fix those rows before pk.tl.umap")
    return X


def _harmony(Z: np.ndarray, meta, batch_key: str, seed: int) -> np.ndarray:
    """Harmony-corrected embedding (n_obs x dim). harmonypy is called directly: scanpy's wrapper assumes
    harmonypy < 2's (dim x n_obs) orientation of ``Z_corr``."""
    import harmonypy

    ho = harmonypy.run_harmony(np.asarray(Z, dtype=np.float64), meta, [batch_key], random_state=seed,
                               verbose=False)
    out = np.asarray(ho.Z_corr)
    if out.shape != Z.shape:
        out = out.T
    return out.astype(np.float32)


def umap(adata, use_rep: str = "X", n_neighbors: int = 15, leiden: bool = True, resolution: float = 1.0,
         batch_key: str | None = None, n_pcs: int | None = None, seed: int = 0, *,
         batch_correction: str | None = None, min_dist: float = 0.5, metric: str = "euclidean",
         key_added: str = "leiden", copy: bool = False):
    """UMAP (and Leiden clusters) of tile or slide embeddings, with scanpy.

    Works on a tile AnnData of one slide (``use_rep="X"``), tiles of many slides (``batch_key="slide_id"``)
    and slide-level cohorts (``use_rep="X_gigapath_slide"`` or another ``obsm["X_<model>"]``).

    Parameters
    ----------
    adata
        AnnData, tiles x features or slides x features.
    use_rep
        ``"X"`` or a key of ``adata.obsm``.
    n_neighbors
        Size of the kNN graph; clipped to ``n_obs - 1`` (with a warning) for small cohorts.
    leiden
        Also cluster the kNN graph with Leiden (igraph implementation; needs ``igraph``).
    resolution
        Leiden resolution; higher gives more clusters.
    batch_key
        obs column with the batch (usually ``"slide_id"``). Stored as categorical so ``pk.pl.umap`` colours
        per batch. It changes the embedding only with ``batch_correction="harmony"``.
    n_pcs
        Principal components to compute before the kNN graph. ``None``: 50 when the representation has
        more than 50 dimensions, otherwise the representation is used as it is. ``0``: never PCA.
    seed
        Random state of PCA, UMAP and Leiden (results are reproducible for a given seed).
    batch_correction
        ``None`` or ``"harmony"`` (Harmony on the PCs through ``scanpy.external``; needs ``harmonypy``).
    min_dist, metric
        Passed to UMAP / the neighbours graph.
    key_added
        obs column for the Leiden clusters.
    copy
        Work on (and return) a copy instead of modifying ``adata``.

    Writes
    ------
    ``obsm["X_umap"]``, ``obsp["distances"]``, ``obsp["connectivities"]``, ``uns["neighbors"]``,
    ``uns["umap"]`` (its ``params`` also hold ``use_rep``, ``n_pcs``, ``batch_key``, ``batch_correction``,
    ``seed``), ``obsm["X_pca"]`` (``use_rep="X"``) or ``obsm[use_rep + "_pca"]`` when PCA ran,
    ``obsm[... + "_harmony"]`` with Harmony, and ``obs[key_added]`` (categorical "0", "1", ...) with
    ``uns[key_added]`` when ``leiden=True``.

    Returns
    -------
    The AnnData when ``copy=True``, else ``None`` (scanpy style).
    """
    import scanpy as sc

    if copy:
        adata = adata.copy()
    n = adata.n_obs
    if n < 3:
        raise ValueError(f"pk.tl.umap needs at least 3 observations; adata has {n}")
    if batch_correction not in (None, "harmony"):
        raise ValueError(f"batch_correction={batch_correction!r}; use None or 'harmony'")
    if batch_correction and batch_key is None:
        raise ValueError("batch_correction='harmony' needs batch_key= (e.g. 'slide_id')")
    if batch_key is not None:
        if batch_key not in adata.obs:
            raise KeyError(f"batch_key={batch_key!r} is not an obs column "
                           f"(columns: {list(adata.obs.columns)})")
        adata.obs[batch_key] = adata.obs[batch_key].astype(str).astype("category")
    if leiden:
        try:
            import igraph  # noqa: F401
        except ImportError as e:
            raise ImportError("Leiden clustering needs igraph: pip install igraph "
                              "(or call pk.tl.umap(..., leiden=False))") from e

    X = _representation(adata, use_rep)
    dim = X.shape[1]
    if n_pcs is None:
        n_pcs = PCA_ABOVE if dim > PCA_ABOVE else 0
    n_pcs = int(min(n_pcs, dim, n - 1)) if n_pcs else 0

    rep_key = use_rep
    if n_pcs:
        rep_key = "X_pca" if use_rep == "X" else f"{use_rep}_pca"
        from sklearn.decomposition import PCA

        # sklearn directly (not sc.pp.pca) so any obsm representation can be reduced without copying it into X
        adata.obsm[rep_key] = PCA(n_components=n_pcs, random_state=seed).fit_transform(X).astype(np.float32)

    if batch_correction == "harmony":
        try:
            import harmonypy  # noqa: F401
        except ImportError as e:
            raise ImportError("batch_correction='harmony' needs harmonypy: pip install harmonypy") from e
        adata.obsm[f"{rep_key}_harmony"] = _harmony(np.asarray(adata.obsm[rep_key]) if rep_key != "X" else X,
                                                    adata.obs[[batch_key]], batch_key, seed)
        rep_key = f"{rep_key}_harmony"

    k = int(n_neighbors)
    if k >= n:
        warnings.warn(f"n_neighbors={k} >= n_obs={n}; using {n - 1}", stacklevel=2)
        k = n - 1
    k = max(k, 2)
    sc.pp.neighbors(adata, n_neighbors=k, use_rep=rep_key, metric=metric, random_state=seed)
    sc.tl.umap(adata, min_dist=min_dist, random_state=seed)
    adata.uns["umap"].setdefault("params", {}).update(
        use_rep=use_rep, n_pcs=n_pcs, n_neighbors=k, batch_key=batch_key or "",
        batch_correction=batch_correction or "", seed=seed)
    if leiden:
        sc.tl.leiden(adata, resolution=resolution, random_state=seed, key_added=key_added,
                     flavor="igraph", n_iterations=2, directed=False)
    return adata if copy else None
