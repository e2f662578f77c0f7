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


def _harmony(Z: np.ndarray, meta, batch_key: str, random_state: int) -> np.ndarray:
    """Harmony-corrected embedding (n_obs x dim). harmonypy is called directly: scanpy's wrapper assumes
    harmonypy < 2's (dim x n_obs) orientation of ``Z_corr``."""
    import harmonypy

    ho = harmonypy.run_harmony(np.asarray(Z, dtype=np.float64), meta, [batch_key], random_state=random_state,
                               verbose=False)
    out = np.asarray(ho.Z_corr)
    if out.shape != Z.shape:
        out = out.T
    return out.astype(np.float32)


def umap(adata, *, use_rep: str | None = None, n_neighbors: int = 15, leiden: bool = True,
         resolution: float = 1.0, random_state: int = 0, copy: bool = False, batch_key: str | None = None,
         n_pcs: int | None = None, batch_correction: str | None = None, min_dist: float = 0.5,
         metric: str = "euclidean", key_added: str = "leiden", progress: bool = True):
    """UMAP (and Leiden clusters) of tile or slide embeddings, with scanpy.

    Works on a tile AnnData of one slide (``use_rep="X_uni"``, what ``pk.tl.embed_tiles`` writes), tiles of
    many slides (``batch_key="slide_id"``) and slide-level cohorts (``use_rep="X_gigapath_slide"``).

    Parameters
    ----------
    adata
        AnnData, tiles x features or slides x features.
    use_rep
        Key of ``adata.obsm`` (``"X"`` reads ``adata.X``). ``None``: the one embedding
        ``pk.tl.embed_tiles`` recorded in ``uns["models"]`` (an error names the choices when there are
        several), else ``"X"`` when ``X`` has columns.
    n_neighbors
        Size of the kNN graph; clipped to ``n_obs - 1`` (with a warning) for small cohorts.
    leiden
        Also cluster the kNN graph with Leiden (igraph implementation).
    resolution
        Leiden resolution; higher gives more clusters.
    random_state
        Seed of PCA, UMAP and Leiden (results are reproducible for a given seed).
    copy
        Work on (and return) a copy instead of modifying ``adata``.
    batch_key
        obs column with the batch (usually ``"slide_id"``). Stored as categorical so ``pk.pl.umap`` colours
        per batch. It changes the embedding only with ``batch_correction="harmony"``.
    n_pcs
        Principal components to compute before the kNN graph. ``None``: 50 when the representation has
        more than 50 dimensions, otherwise the representation is used as it is. ``0``: never PCA.
    batch_correction
        ``None`` or ``"harmony"`` (Harmony on the PCs; needs ``harmonypy``).
    min_dist, metric
        Passed to UMAP / the neighbours graph.
    key_added
        obs column for the Leiden clusters.
    progress
        Show a progress bar (text, updated in place in a notebook) with the step running and the elapsed
        time. The first UMAP of a Python process compiles umap-learn's numba kernels (10-40 s); the bar says
        so while it happens.

    Returns
    -------
    AnnData or None
        The AnnData when ``copy=True``, else ``None`` (scanpy style). Sets the following fields:

        ``obsm["X_umap"]``, ``uns["umap"]``
            the 2-D embedding; ``uns["umap"]["params"]`` also holds ``use_rep``, ``n_pcs``, ``n_neighbors``,
            ``batch_key``, ``batch_correction`` and ``random_state``.
        ``obsp["distances"]``, ``obsp["connectivities"]``, ``uns["neighbors"]``
            the kNN graph (as ``sc.pp.neighbors``).
        ``obsm[use_rep + "_pca"]`` (``obsm["X_pca"]`` for ``use_rep="X"``)
            when PCA ran; ``obsm[... + "_harmony"]`` with Harmony.
        ``obs[key_added]``, ``uns[key_added]``
            Leiden clusters (categorical "0", "1", ...) when ``leiden=True``.
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
    use_rep = _default_rep(adata) if use_rep is None else use_rep
    X = _representation(adata, use_rep)
    dim = X.shape[1]
    if n_pcs is None:
        n_pcs = PCA_ABOVE if dim > PCA_ABOVE else 0
    n_pcs = int(min(n_pcs, dim, n - 1)) if n_pcs else 0

    steps = ["PCA"] * bool(n_pcs) + ["Harmony"] * bool(batch_correction) + ["neighbours", "UMAP"] + \
        ["Leiden"] * bool(leiden)
    with _Progress(steps, enabled=progress) as bar:
        rep_key = use_rep
        if n_pcs:
            bar.step("PCA")
            rep_key = "X_pca" if use_rep == "X" else f"{use_rep}_pca"
            from sklearn.decomposition import PCA

            # sklearn directly (not sc.pp.pca): any obsm representation is reduced without copying it into X
            adata.obsm[rep_key] = PCA(n_components=n_pcs, random_state=random_state).fit_transform(X).astype(
                np.float32)

        if batch_correction == "harmony":
            bar.step("Harmony")
            try:
                import harmonypy  # noqa: F401
            except ImportError as e:
                raise ImportError("batch_correction='harmony' needs harmonypy: pip install harmonypy") from e
            adata.obsm[f"{rep_key}_harmony"] = _harmony(
                np.asarray(adata.obsm[rep_key]) if rep_key != "X" else X, adata.obs[[batch_key]], batch_key,
                random_state)
            rep_key = f"{rep_key}_harmony"

        k = int(n_neighbors)
        if k >= n:
            warnings.warn(f"n_neighbors={k} >= n_obs={n}; using {n - 1}", stacklevel=2)
            k = n - 1
        k = max(k, 2)
        bar.step("neighbours" + (" (first call in this process: compiling numba kernels, 10-40 s)"
                                 if not numba_compiled() else ""))
        sc.pp.neighbors(adata, n_neighbors=k, use_rep=rep_key, metric=metric, random_state=random_state)
        bar.step("UMAP")
        sc.tl.umap(adata, min_dist=min_dist, random_state=random_state)
        adata.uns["umap"].setdefault("params", {}).update(
            use_rep=use_rep, n_pcs=n_pcs, n_neighbors=k, batch_key=batch_key or "",
            batch_correction=batch_correction or "", random_state=random_state)
        if leiden:
            bar.step("Leiden")
            sc.tl.leiden(adata, resolution=resolution, random_state=random_state, key_added=key_added,
                         flavor="igraph", n_iterations=2, directed=False)
    return adata if copy else None


def _default_rep(adata) -> str:
    """``use_rep=None``: the single embedding recorded in ``uns["models"]``, else ``"X"`` when it has columns."""
    models = adata.uns.get("models", {}) if hasattr(adata, "uns") else {}
    cands = []
    for key in (models if isinstance(models, dict) else []):
        for k in (key, f"X_{key}"):
            if k in adata.obsm and k not in cands:
                cands.append(k)
                break
    if len(cands) == 1:
        return cands[0]
    if not cands and adata.X is not None and adata.n_vars > 0:
        return "X"
    reps = [k for k in adata.obsm if k not in ("X_umap", "spatial")]
    raise KeyError(f"pass use_rep=: adata has {'several' if cands else 'no recorded'} embeddings "
                   f"(obsm keys {reps}; uns['models'] {list(models)}) and X has {adata.n_vars} columns")


def numba_compiled() -> bool:
    """Whether umap-learn's numba kernels are already compiled in this process (the first UMAP compiles)."""
    import sys

    m = sys.modules.get("umap.umap_")
    f = getattr(m, "smooth_knn_dist", None) if m is not None else None
    return bool(getattr(f, "signatures", None))


class _Progress:
    """A progress bar over named steps whose elapsed time keeps ticking during a long step (a heartbeat
    thread refreshes it), so a numba compilation does not look like a hang."""

    def __init__(self, steps, enabled=True):
        self.steps, self.enabled, self.bar, self._stop, self._thread = steps, enabled, None, None, None

    def __enter__(self):
        if not self.enabled:
            return self
        import threading

        from .._progress import progress_bar

        self.bar = progress_bar(total=len(self.steps), desc="pk.tl.umap", leave=False,
                        bar_format="{desc}{n_fmt}/{total_fmt} steps [{elapsed}]")
        self._stop = threading.Event()

        def beat():
            while not self._stop.wait(1.0):
                self.bar.refresh()

        self._thread = threading.Thread(target=beat, daemon=True)
        self._thread.start()
        return self

    def step(self, name: str):
        if self.bar is None:
            return
        if self._started:
            self.bar.update(1)
        self._started = True
        self.bar.set_description(f"pk.tl.umap: {name}")

    _started = False

    def __exit__(self, *exc):
        if self.bar is None:
            return False
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self.bar.update(self.bar.total - self.bar.n)
        self.bar.close()
        return False
