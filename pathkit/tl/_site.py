"""The tissue source site as a batch effect: how strongly a representation encodes it (site_effect), and a
correction (harmonize, through harmonypy).

A TCGA barcode's second field is the tissue source site (``TCGA-AD-6964`` -> ``AD``): slides of one site share
a stain protocol and a scanner, and embeddings encode it (Howard et al., Nat Commun 2021).
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from ..errors import TableError
from ._site_labels import _ad, _barcode_column, site_labels

__all__ = ["harmonize", "site_effect", "site_labels"]

CRAMERS_V_WARN = 0.5  # a label/covariate this associated with site is called confounded with it


def _rep(a, use_rep):
    from ._probe import _rep as probe_rep

    return probe_rep(a, use_rep)


def _variance_share(pcs: np.ndarray, var: np.ndarray, codes: np.ndarray) -> float:
    """Share of the top PCs' variance explained by site: sum_k var_k R2_k / sum_k var_k, R2_k the one-way
    ANOVA R^2 of PC k on site."""
    r2 = []
    for k in range(pcs.shape[1]):
        x = pcs[:, k]
        means = pd.Series(x).groupby(codes).transform("mean").to_numpy()
        tot = ((x - x.mean()) ** 2).sum()
        r2.append(((means - x.mean()) ** 2).sum() / tot if tot > 0 else 0.0)
    return float(np.dot(var, r2) / var.sum())


def site_effect(adata, use_rep: str, key: str = "tss", *, groups: str = "patient_id", folds: int = 5,
                n_neighbors: int = 15, n_pcs: int = 10, random_state: int = 0,
                key_added: str | None = None) -> pd.DataFrame:
    """How strongly a representation encodes the tissue source site (or any batch key).

    Parameters
    ----------
    adata
        A slides AnnData / linked MuData (one row per slide), or tiles of several slides (one row per tile).
    use_rep
        ``obsm`` key of the representation (``"X_uni"``) or ``"X"``.
    key
        obs column of the site; ``"tss"``: parsed from TCGA barcodes when there is no such column.
    groups
        obs column of the patient (rows of a patient share a fold); absent: the patient part of the barcodes.
    folds
        Patient-level folds of the kNN and linear site classifiers.
    n_neighbors
        kNN size (cosine).
    n_pcs
        Top principal components of the silhouette and variance-share measures.
    random_state
        Seed of the folds and PCA.
    key_added
        ``uns`` key of the result; default ``"site_effect_<use_rep>"``.

    Returns
    -------
    DataFrame
        One row per measure: ``knn_accuracy`` and ``linear_accuracy`` (out-of-fold, patient-level CV) with
        ``chance`` (the largest site's share, what always guessing it scores), ``knn_balanced_accuracy`` and
        ``linear_balanced_accuracy`` (chance ``1 / n_sites``), ``silhouette`` (by site, top PCs, euclidean:
        0 none, 1 sites fully apart), ``variance_share`` (share of the top PCs' variance explained by site).
        The same goes to ``uns[key_added]`` with ``n_sites``, ``n_rows``, ``n_patients``.
    """
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score, silhouette_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ._probe import patient_folds

    a = _ad(adata)
    X = _rep(a, use_rep)
    site = site_labels(a, key)
    ok = site.notna().to_numpy() & np.isfinite(X).all(1)
    if (~ok).any():
        warnings.warn(f"site_effect: {int((~ok).sum())} row(s) without a site or with non-finite features "
                      "dropped", UserWarning, stacklevel=2)
    X, s = X[ok], site[ok].to_numpy().astype(str)
    uniq, codes = np.unique(s, return_inverse=True)
    if len(uniq) < 2:
        raise TableError(f"site key {key!r} has a single site {uniq.tolist()}: there is no site effect to "
                         "measure (need slides from >= 2 sites)")
    g = (a.obs[groups].astype(str).to_numpy()[ok] if groups in a.obs.columns
         else _patients(a)[ok])
    fold = patient_folds(codes, g, min(folds, len(np.unique(g))), classification=True,
                         random_state=random_state)
    models = {"knn": lambda: KNeighborsClassifier(n_neighbors=min(n_neighbors, len(X) - 1), metric="cosine"),
              "linear": lambda: make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))}
    out = {}
    for name, make in models.items():
        pred = np.empty(len(X), dtype=int)
        for k in np.unique(fold):
            te = fold == k
            pred[te] = make().fit(X[~te], codes[~te]).predict(X[te])
        out[f"{name}_accuracy"] = float((pred == codes).mean())
        out[f"{name}_balanced_accuracy"] = float(balanced_accuracy_score(codes, pred))
    out["chance"] = float(np.bincount(codes).max() / len(codes))
    out["balanced_chance"] = 1.0 / len(uniq)
    pca = PCA(n_components=min(n_pcs, X.shape[1], len(X) - 1), random_state=random_state)
    pcs = pca.fit_transform(X)
    out["silhouette"] = float(silhouette_score(pcs, codes, random_state=random_state,
                                               sample_size=min(len(X), 5000)))
    out["variance_share"] = _variance_share(pcs, pca.explained_variance_, codes)
    info = dict(out, n_sites=len(uniq), n_rows=len(X), n_patients=len(np.unique(g)), key=key,
                use_rep=use_rep, n_pcs=int(pcs.shape[1]))
    a.uns[key_added or f"site_effect_{use_rep}"] = info
    chance = {"knn_accuracy": out["chance"], "linear_accuracy": out["chance"],
              "knn_balanced_accuracy": out["balanced_chance"], "linear_balanced_accuracy": out["balanced_chance"]}
    return pd.DataFrame([{"use_rep": use_rep, "measure": m, "value": out[m], "chance": chance.get(m, np.nan)}
                         for m in ("knn_accuracy", "knn_balanced_accuracy", "linear_accuracy",
                                   "linear_balanced_accuracy", "silhouette", "variance_share")])


def _patients(a) -> np.ndarray:
    from ..tcga import parse_barcodes

    ids = _barcode_column(a.obs, a.obs_names)
    p = parse_barcodes(ids, errors="coerce")["patient"]
    if p.isna().any():
        raise TableError("no obs 'patient_id' column and not every row has a TCGA barcode: pass groups=<the "
                         "obs column naming the patient>")
    return p.to_numpy().astype(str)


def harmonize(adata, use_rep: str, key: str = "tss", *, n_pcs: int | None = 50, key_added: str | None = None,
              max_iter: int = 20, random_state: int = 0, copy: bool = False):
    """Remove the site (batch) effect from a representation with Harmony (Korsunsky et al. 2019, harmonypy).

    Parameters
    ----------
    adata
        Slides (or tiles) AnnData / linked MuData.
    use_rep
        ``obsm`` key (or ``"X"``) to correct.
    key
        obs column of the batch; ``"tss"``: the TCGA tissue source site (see :func:`site_labels`).
    n_pcs
        Harmony runs on this many principal components of `use_rep` (as scanpy's ``harmony_integrate`` runs on
        ``X_pca``); None: on the representation itself.
    key_added
        ``obsm`` key of the corrected representation; default ``"<use_rep>_harmony"``.
    max_iter
        Harmony iterations.
    random_state
        Seed of PCA and Harmony's clustering.
    copy
        Return a new AnnData instead of writing into `adata`.

    Returns
    -------
    None, or the AnnData when ``copy=True``. Sets ``obsm[key_added]`` (rows without a site: NaN) and
    ``uns["harmony"][key_added]`` (use_rep, key, n_pcs).
    """
    try:
        import harmonypy
    except ImportError as err:  # pragma: no cover - in dev
        raise ImportError('harmonize needs harmonypy: pip install "pathkit[harmony]"') from err
    from sklearn.decomposition import PCA

    a = _ad(adata)
    a = a.copy() if copy else a
    X = _rep(a, use_rep)
    site = site_labels(a, key)
    ok = site.notna().to_numpy() & np.isfinite(X).all(1)
    if site[ok].nunique() < 2:
        raise TableError(f"site key {key!r} has {site[ok].nunique()} site(s): nothing to harmonise")
    Z = X[ok]
    if n_pcs is not None and n_pcs < Z.shape[1]:
        Z = PCA(n_components=min(n_pcs, len(Z) - 1), random_state=random_state).fit_transform(Z)
    meta = pd.DataFrame({"site": site[ok].to_numpy().astype(str)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ho = harmonypy.run_harmony(np.ascontiguousarray(Z, dtype=np.float64), meta, ["site"],
                                   max_iter_harmony=max_iter, random_state=random_state, verbose=False)
    res = np.asarray(ho.Z_corr)
    res = res.T if res.shape[0] != Z.shape[0] else res
    out = np.full((a.n_obs, res.shape[1]), np.nan, dtype=np.float32)
    out[ok] = res
    name = key_added or f"{use_rep}_harmony"
    a.obsm[name] = out
    info = dict(a.uns.get("harmony") or {})
    info[name] = {"use_rep": use_rep, "key": key, "n_pcs": -1 if n_pcs is None else int(Z.shape[1])}
    a.uns["harmony"] = info
    return a if copy else None


def cramers_v(x, y) -> float:
    """Cramér's V of two categorical variables (bias-uncorrected): 0 independent, 1 one determines the other."""
    from scipy.stats import chi2_contingency

    table = pd.crosstab(np.asarray(x), np.asarray(y))
    if min(table.shape) < 2:
        return 0.0
    chi2 = chi2_contingency(table, correction=False)[0]
    return float(np.sqrt(chi2 / table.to_numpy().sum() / (min(table.shape) - 1)))


def check_site_confounding(slides, columns, site_key: str = "tss", adjust: bool = False,
                           covariates=None, where: str = "associate"):
    """Warn for each obs column of `columns` confounded with site (Cramér's V > ``CRAMERS_V_WARN``; numeric
    columns with many values are cut at their quartiles). With `adjust`, the site becomes a covariate
    (``obs[site_key]`` is added to `slides` when parsed from barcodes). Returns the covariate list to use."""
    covs = [] if covariates is None else ([covariates] if isinstance(covariates, str) else list(covariates))
    try:
        site = site_labels(slides, site_key)
    except TableError:
        if adjust:
            raise
        return covariates  # no site known: nothing to check against
    for c in dict.fromkeys(c for c in columns if isinstance(c, str) and c in slides.obs.columns and c != site_key):
        col = slides.obs[c]
        if pd.api.types.is_numeric_dtype(col) and col.nunique() > 10:
            col = pd.qcut(col, 4, duplicates="drop")
        ok = col.notna().to_numpy() & site.notna().to_numpy()
        if ok.sum() < 3:
            continue
        v = cramers_v(col[ok].astype(str), site[ok])
        if v > CRAMERS_V_WARN:
            warnings.warn(f"{where}: {c!r} is confounded with the site {site_key!r} (Cramér's V {v:.2f} > "
                          f"{CRAMERS_V_WARN}): an association with it may be a site (stain, scanner) effect; "
                          "pass adjust_site=True, or check with pk.tl.site_effect", UserWarning, stacklevel=3)
    if adjust:
        if site_key not in slides.obs.columns:
            slides.obs[site_key] = pd.Categorical(site)
        covs = covs + [site_key] if site_key not in covs else covs
        return covs
    return covariates
