"""Per-slide proportions of tile classes (clusters, QC classes, zero-shot labels) as slide features."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .._files import read_h5ad
from ..errors import TableError

__all__ = ["tile_composition"]


def _tile_obs(tiles, key: str, slide_key: str) -> pd.DataFrame:
    """One DataFrame (slide_id, key) over all tiles from a tiles AnnData, a list / dict of them, or a cohort
    whose ``obs["tile_file"]`` names saved tile AnnData files."""
    import anndata as ad

    frames = []
    if isinstance(tiles, ad.AnnData) and "tile_file" in tiles.obs.columns and key not in tiles.obs.columns:
        for sid, f in zip(tiles.obs.get("slide_id", pd.Series(tiles.obs_names, index=tiles.obs_names)),
                          tiles.obs["tile_file"]):
            if not isinstance(f, str) or not Path(f).is_file():
                continue  # a slide without tiles gets NaN proportions
            t = read_h5ad(f, "tile h5ad (obs['tile_file'])", backed="r")
            if key not in t.obs.columns:
                raise TableError(f"{f}: obs has no column {key!r}; cluster the tiles first (pk.tl.umap / "
                                 "sc.tl.leiden) or pass key=")
            frames.append(pd.DataFrame({"slide_id": str(sid), key: t.obs[key].astype(str).to_numpy()}))
            t.file.close()
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["slide_id", key])
    if isinstance(tiles, ad.AnnData):
        tiles = [tiles]
    items = tiles.items() if isinstance(tiles, dict) else [(None, t) for t in tiles]
    for name, t in items:
        if key not in t.obs.columns:
            raise TableError(f"tiles obs has no column {key!r} (columns: {list(t.obs.columns)[:15]}); cluster "
                             "the tiles first or pass key=")
        if slide_key in t.obs.columns:
            sid = t.obs[slide_key].astype(str).to_numpy()
        elif name is not None:
            sid = np.full(t.n_obs, str(name), dtype=object)
        elif isinstance(t.uns.get("slide"), dict) and "slide_id" in t.uns["slide"]:
            sid = np.full(t.n_obs, str(t.uns["slide"]["slide_id"]), dtype=object)
        else:
            raise TableError(f"tiles have no obs[{slide_key!r}] and no uns['slide']['slide_id']: pass a dict "
                             "{slide_id: tiles} instead of a list")
        frames.append(pd.DataFrame({"slide_id": sid, key: t.obs[key].astype(str).to_numpy()}))
    return pd.concat(frames, ignore_index=True)


def tile_composition(tiles, key: str = "leiden", *, cohort=None, slide_key: str = "slide_id",
                     categories=None, key_added: str | None = None) -> pd.DataFrame:
    """Proportion of each tile class on each slide.

    The classes must mean the same on every slide: cluster the tiles of all slides together (one joint
    ``leiden`` run on the pooled tiles) or use a fixed label set (QC classes, zero-shot classes).

    Parameters
    ----------
    tiles
        Tiles of many slides: one AnnData with ``obs[slide_key]`` (pooled tiles), a list or dict
        ``{slide_id: tiles}`` of per-slide AnnData, or a cohort AnnData / MuData whose ``obs["tile_file"]``
        names each slide's saved tiles (then it is also the ``cohort``).
    key
        The tiles' ``obs`` column holding the class.
    cohort
        Slides AnnData or linked MuData to write into (one row per slide, matched on ``obs["slide_id"]``,
        else obs_names).
    slide_key
        The tiles' ``obs`` column naming the slide.
    categories
        Classes and their order (default: sorted classes seen). Classes not listed are counted in ``n_tiles``
        only.
    key_added
        Cohort ``obsm`` key; default ``"composition_<key>"``.

    Returns
    -------
    DataFrame
        Slides x classes, proportions summing to 1 over the listed classes (plus ``n_tiles`` in
        ``attrs``). When a cohort is given, also sets:

        ``obsm[key_added]``
            The proportions aligned with the cohort's rows (NaN for slides without tiles).
        ``uns[key_added]``
            ``key``, ``categories``, ``n_tiles`` per slide.
    """
    import anndata as ad
    import mudata as md

    if cohort is None and isinstance(tiles, (ad.AnnData, md.MuData)) and key not in getattr(tiles, "obs", {}):
        cohort = tiles
    if isinstance(tiles, md.MuData):
        tiles = tiles.mod["slides"]
    df = _tile_obs(tiles, key, slide_key)
    if df.empty:
        raise TableError("no tiles found (empty tiles, or no readable obs['tile_file'])")
    cats = sorted(df[key].unique(), key=lambda c: (len(c), c)) if categories is None else [str(c) for c in
                                                                                        categories]
    counts = pd.crosstab(df["slide_id"], df[key]).reindex(columns=cats, fill_value=0)
    n = counts.sum(axis=1)
    props = counts.div(n.where(n > 0), axis=0)
    props.columns = [str(c) for c in props.columns]
    props.index.name = None
    props.attrs["n_tiles"] = n.to_dict()
    if cohort is not None:
        slides = cohort.mod["slides"] if isinstance(cohort, md.MuData) else cohort
        sid = slides.obs["slide_id"].astype(str) if "slide_id" in slides.obs.columns else \
            pd.Series(slides.obs_names, index=slides.obs_names)
        unknown = sorted(set(props.index) - set(sid))
        if len(unknown) == len(props):
            raise TableError(f"none of the tiles' slide ids (e.g. {unknown[:3]}) is a cohort slide "
                             "(obs['slide_id'] or obs_names)")
        out = props.reindex(pd.Index(sid.to_numpy()))
        out.index = slides.obs_names
        k = key_added or f"composition_{key}"
        slides.obsm[k] = out
        slides.uns[k] = {"key": key, "categories": list(props.columns),
                         "n_tiles": {str(s): int(v) for s, v in n.items()}, "n_unknown_slides": len(unknown)}
    return props
