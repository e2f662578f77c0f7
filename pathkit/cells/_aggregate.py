"""Per-slide cell features (``pk.tl.cell_composition``): counts, density, shape, share of each cell type."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import TableError


def _slide_id(cells, name=None) -> str:
    if name is not None:
        return str(name)
    info = cells.uns.get("slide") or {}
    if "slide_id" in info:
        return str(info["slide_id"])
    if "slide_id" in cells.obs and cells.n_obs:
        return str(cells.obs["slide_id"].iloc[0])
    raise TableError("the cells have no uns['slide']['slide_id']: pass a dict {slide_id: cells}")


def _one(cells, key: str, categories) -> dict:
    info = cells.uns.get("cells") or {}
    mpp = float((cells.uns.get("slide") or {}).get("mpp", np.nan))
    n_tiles = info.get("n_tiles")
    side = info.get("tile_size_level0")
    area_mm2 = n_tiles * (side * mpp / 1000.0) ** 2 if n_tiles and side and np.isfinite(mpp) else np.nan
    n = cells.n_obs
    row = {"n_cells": float(n), "cells_per_mm2": n / area_mm2 if area_mm2 else np.nan,
           "area_um2_mean": float(cells.obs["area_um2"].mean()) if n else np.nan,
           "hematoxylin_od_mean": float(cells.obs["hematoxylin_od"].mean()) if n else np.nan}
    if key in cells.obs:
        values = cells.obs[key].astype(str)
        for c in categories:
            row[f"share_{c}"] = float((values == c).mean()) if n else np.nan
    return row


def cell_composition(cells, *, cohort=None, key: str = "cell_type", categories=None,
                     key_added: str = "cells") -> pd.DataFrame:
    """Per-slide cell features: count, density, mean nucleus size and staining, share of each cell type.

    Parameters
    ----------
    cells
        The cells AnnData of :func:`pathkit.tl.segment_cells`, a list of them, or a dict ``{slide_id: cells}``.
    cohort
        Optional cohort AnnData (one row per slide, obs_names = slide ids, as :func:`pathkit.tl.embed_cohort`
        makes): the features are written into it (slides without cells get NaN).
    key
        The ``obs`` column of cell types (ignored when absent, e.g. with ``model="watershed"``).
    categories
        Cell types to report, in order (default: every type seen, sorted; the categories of a categorical
        column come first).
    key_added
        Prefix of the cohort columns.

    Returns
    -------
    pandas.DataFrame
        One row per slide: ``n_cells``, ``cells_per_mm2`` (per mm^2 of the segmented tiles' footprint),
        ``area_um2_mean``, ``hematoxylin_od_mean`` and ``share_<type>``.

        With `cohort`, sets ``cohort.obs["<key_added>_<column>"]`` for each column and
        ``cohort.obsm["<key_added>_composition"]`` (the whole table, the ``features`` of
        :func:`pathkit.tl.associate`).
    """
    import anndata as ad

    if isinstance(cells, ad.AnnData):
        items = [(None, cells)]
    elif isinstance(cells, dict):
        items = list(cells.items())
    else:
        items = [(None, c) for c in cells]
    if categories is None:
        seen: list = []
        for _, c in items:
            if key in c.obs:
                col = c.obs[key]
                cats = list(col.cat.categories) if isinstance(col.dtype, pd.CategoricalDtype) else \
                    sorted(col.dropna().astype(str).unique())
                seen += [str(v) for v in cats if str(v) not in seen]
        categories = seen
    rows = {}
    for name, c in items:
        sid = _slide_id(c, name)
        if sid in rows:
            raise TableError(f"slide {sid!r} appears twice among the cells given")
        rows[sid] = _one(c, key, categories)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "slide_id"
    if cohort is not None:
        unknown = sorted(set(table.index) - set(map(str, cohort.obs_names)))
        if unknown:
            raise TableError(f"cells of slide(s) {unknown[:5]} are not rows of the cohort (obs_names "
                             f"{list(cohort.obs_names[:5])} ...): the slide ids must match")
        full = table.reindex(list(map(str, cohort.obs_names)))
        full.index = cohort.obs_names
        for col in full.columns:
            cohort.obs[f"{key_added}_{col}"] = full[col].to_numpy(np.float64)
        cohort.obsm[f"{key_added}_composition"] = full.astype(np.float64)
    return table
