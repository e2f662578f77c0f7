"""From space to cohort: a spot model (trained on the spots of sections with spatial expression) predicts
every tile of every whole slide of a cohort; the mean per slide becomes a slide feature that
:func:`pathkit.tl.associate` tests against the cohort's bulk RNA."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TableError
from ._predict import _top_hvg, check_same_tiling, fit_spot_model, log1p_expression, scale_of

__all__ = ["predicted_expression_by_slide"]


def _slide_tiles(tiles, slide_key: str, use_rep: str):
    """Yield (slide_id, tiles AnnData) from a dict, a list, one pooled AnnData, or a cohort whose
    ``obs["tile_file"]`` names each slide's saved tiles (read one at a time)."""
    import anndata as ad

    if isinstance(tiles, ad.AnnData) and "tile_file" in tiles.obs.columns and use_rep not in tiles.obsm:
        sids = tiles.obs["slide_id"] if "slide_id" in tiles.obs.columns else pd.Series(tiles.obs_names)
        for sid, f in zip(sids.astype(str), tiles.obs["tile_file"]):
            if isinstance(f, str) and Path(f).is_file():  # a failed slide has no tiles: its row stays NaN
                yield sid, ad.read_h5ad(f)
        return
    if isinstance(tiles, dict):
        yield from ((str(k), v) for k, v in tiles.items())
        return
    for t in [tiles] if isinstance(tiles, ad.AnnData) else tiles:
        if slide_key in t.obs.columns:
            ids = t.obs[slide_key].astype(str)
            if ids.nunique() == 1:
                yield ids.iloc[0], t
            else:
                for sid, idx in ids.groupby(ids, observed=True).groups.items():
                    yield str(sid), t[idx]
        elif isinstance(t.uns.get("slide"), dict) and "slide_id" in t.uns["slide"]:
            yield str(t.uns["slide"]["slide_id"]), t
        else:
            raise TableError(f"tiles have no obs[{slide_key!r}] and no uns['slide']['slide_id']: pass a dict "
                             "{slide_id: tiles}")


def predicted_expression_by_slide(spots, tiles, use_rep: str, *, genes=None, cohort=None, n_top_genes: int = 50,
                                  n_pcs: int = 256, alpha: float | None = None, target_sum: float | None = None,
                                  slide_key: str = "slide_id", key_added: str = "predicted_expression"):
    """Predict expression on every tile of whole slides with a spot model, and average it per slide.

    The model is the HEST-Benchmark pipeline of :func:`pathkit.tl.predict_expression` (``level="spot"``:
    standardised embeddings, PCA, ridge on log1p counts) fitted on every spot. Each tile of each slide gets
    its prediction (log1p scale) and each slide the mean over its tiles, a slide feature that
    :func:`pathkit.tl.associate` tests against the bulk RNA of a linked cohort::

        pk.tl.predicted_expression_by_slide(spots, mdata, "X_uni", genes=["ERBB2", "GRB7"])
        res = pk.tl.associate(mdata, "predicted_expression", ["ERBB2", "GRB7"])
        res[res["feature"] == res["target"]]   # each predicted gene against its own bulk RNA

    Parameters
    ----------
    spots
        The spots AnnData with raw counts and ``obsm[use_rep]`` (its tiles embedded by
        :func:`pathkit.tl.embed_tiles` after :func:`pathkit.pp.tile_spots`); several sections may be
        concatenated.
    tiles
        The whole-slide tiles, embedded with the same model at the same tile size and mpp: a dict
        ``{slide_id: tiles}``, a list of tiles AnnData (slide from ``obs[slide_key]`` or
        ``uns["slide"]["slide_id"]``), one pooled AnnData with ``obs[slide_key]``, or a cohort AnnData / linked
        MuData whose ``obs["tile_file"]`` names each slide's tiles (:func:`pathkit.tl.embed_cohort`; then it
        is also the ``cohort``).
    use_rep
        The ``obsm`` key of the embeddings, on the spots and on the tiles.
    genes
        Genes to predict; default the genes of an earlier ``predict_expression`` on these spots
        (``uns["predicted_expression"]["genes"]``), else the ``n_top_genes`` most variable ones.
    cohort
        The slides AnnData or linked MuData (:func:`pathkit.io.link`) to write into, one row per slide matched
        on ``obs["slide_id"]`` (else obs_names).
    n_top_genes, n_pcs, alpha, target_sum
        As :func:`pathkit.tl.predict_expression` (``alpha=None``: HEST's ``100 / (n_pcs * n_genes)``).
    slide_key
        The tiles' ``obs`` column naming the slide.
    key_added
        The cohort's ``obsm`` / ``uns`` key.

    Returns
    -------
    DataFrame
        Slides x genes: the mean predicted log1p expression over each slide's tiles. With a ``cohort``, also
        sets:

        ``obsm[key_added]`` (DataFrame)
            The same, aligned with the cohort's rows (NaN for slides without tiles); the columns are gene
            names, so ``associate(mdata, key_added, targets)`` names each test ``feature`` = predicted gene.
        ``uns[key_added]``
            ``genes``, ``use_rep``, ``scale``, ``aggregate`` ("mean"), ``n_tiles`` per slide, ``trained_on``
            (the spots' library ids) and ``n_spots``.
    """
    import anndata as ad
    import mudata as md

    if not isinstance(spots, ad.AnnData) or use_rep not in spots.obsm:
        raise TableError(f"spots must be the spots AnnData holding obsm[{use_rep!r}] (pk.pp.tile_spots, then "
                         "pk.tl.embed_tiles)")
    if cohort is None and isinstance(tiles, (ad.AnnData, md.MuData)) and \
            "tile_file" in (tiles.mod["slides"] if isinstance(tiles, md.MuData) else tiles).obs.columns:
        cohort = tiles
    if isinstance(tiles, md.MuData):
        tiles = tiles.mod["slides"]
    if genes is None:
        genes = (spots.uns.get("predicted_expression") or {}).get("genes")
        genes = list(genes) if genes is not None else _top_hvg(spots, n_top_genes, target_sum)
    genes = [genes] if isinstance(genes, str) else list(genes)
    missing = [g for g in genes if g not in spots.var_names]
    if missing:
        raise KeyError(f"gene(s) {missing[:10]} not in spots.var_names")
    E = np.asarray(spots.obsm[use_rep], dtype=np.float64)
    if not np.isfinite(E).all():
        raise TableError(f"{int((~np.isfinite(E).all(1)).sum())} spot(s) have non-finite {use_rep!r} features")
    Y = log1p_expression(spots, genes, target_sum)
    const = np.ptp(Y, axis=0) == 0
    if const.any():
        raise TableError(f"gene(s) {list(np.array(genes)[const][:5])} are constant over the spots: nothing to "
                         "learn; leave them out of genes=")
    pipe = fit_spot_model(E, Y, n_pcs, alpha)
    means, n_tiles = {}, {}
    for sid, t in _slide_tiles(tiles, slide_key, use_rep):
        check_same_tiling(spots, t, use_rep, f"slide {sid}")
        T = np.asarray(t.obsm[use_rep], dtype=np.float64)
        ok = np.isfinite(T).all(1)
        if sid in means:
            raise TableError(f"slide {sid!r} occurs twice among the tiles")
        n_tiles[sid] = int(ok.sum())
        means[sid] = pipe.predict(T[ok]).mean(0) if ok.any() else np.full(len(genes), np.nan)
    if not means:
        raise TableError("no tiles found (empty tiles, or no readable obs['tile_file'])")
    out = pd.DataFrame(np.stack(list(means.values())), index=list(means), columns=genes)
    libs = spots.obs["library_id"].astype(str).unique().tolist() if "library_id" in spots.obs.columns else \
        [str((spots.uns.get("spot_spec") or {}).get("library_id", ""))]
    out.attrs.update(n_tiles=n_tiles, use_rep=use_rep, scale=scale_of(target_sum))
    if cohort is not None:
        slides = cohort.mod["slides"] if isinstance(cohort, md.MuData) else cohort
        sid = slides.obs["slide_id"].astype(str) if "slide_id" in slides.obs.columns else \
            pd.Series(slides.obs_names, index=slides.obs_names)
        if not set(out.index) & set(sid):
            raise TableError(f"none of the tiles' slide ids (e.g. {list(out.index[:3])}) is a cohort slide "
                             "(obs['slide_id'] or obs_names)")
        al = out.reindex(pd.Index(sid.to_numpy()))
        al.index = slides.obs_names
        slides.obsm[key_added] = al
        slides.uns[key_added] = {"genes": genes, "use_rep": use_rep, "scale": scale_of(target_sum),
                                 "aggregate": "mean", "n_tiles": n_tiles, "trained_on": libs,
                                 "n_spots": int(spots.n_obs)}
    return out
