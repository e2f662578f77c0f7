"""Cells to and from QuPath: GeoJSON detections (nucleus outline, class, measurements), level-0 px."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import TableError
from ..io._geojson import FEATURE_WRITERS, _feature, _palette, read_geojson

#: obs columns written as QuPath measurements by default
MEASUREMENTS = ("area_um2", "perimeter_um", "eccentricity", "solidity", "hematoxylin_od", "cell_type_prob")


def cell_features(cells, classification: str | None = "cell_type", measurements=None,
                  object_type: str = "detection") -> list:
    """GeoJSON Features (QuPath detections) of a cells AnnData; used by :func:`pathkit.io.write_geojson`."""
    from ._polygons import cell_polygons

    obs = cells.obs
    cols = [c for c in (measurements if measurements is not None else MEASUREMENTS) if c in obs]
    missing = [c for c in (measurements or []) if c not in obs]
    if missing:
        raise TableError(f"cells.obs lacks column(s) {missing}; available: {list(obs.columns)}")
    if classification is not None and classification not in obs:
        classification = None  # a model without cell types: detections without a class
    labels = obs[classification].astype(object).where(obs[classification].notna(), None).tolist() \
        if classification else [None] * cells.n_obs
    pal = _palette([str(v) for v in labels if v is not None]) if classification else {}
    polys = cell_polygons(cells)
    values = obs[cols].to_numpy(np.float64) if cols else np.zeros((cells.n_obs, 0))
    feats = []
    for i, (g, lab) in enumerate(zip(polys, labels)):
        meas = {c: float(v) for c, v in zip(cols, values[i]) if np.isfinite(v)}
        feats.append(_feature(g, object_type, f"cell-{obs.index[i]}", None if lab is None else str(lab),
                              pal.get(str(lab)), measurements=meas))
    return feats


def read_qupath_cells(path, slide=None, *, mpp: float | None = None):
    """Read QuPath cell / detection objects (GeoJSON) into a cells AnnData.

    Parameters
    ----------
    path
        A GeoJSON export of QuPath detections or cells (File > Export objects as GeoJSON), level-0 px.
    slide
        The :class:`~pathkit.slide.Slide` (or its path): objects are checked to lie inside it and its mpp
        converts areas to um^2.
    mpp
        um per level-0 px when no slide is given (areas then stay NaN without it).

    Returns
    -------
    anndata.AnnData
        One row per detection, as :func:`pathkit.tl.segment_cells` makes: ``obs`` ``x``, ``y`` (centroid of
        the nucleus outline, level-0 px), ``area_um2``, ``perimeter_um``, ``cell_type`` (QuPath class,
        categorical), ``polygon_wkb`` (hex WKB), QuPath's measurements as further columns; ``obsm["spatial"]``;
        ``uns["cells"]`` (``model="qupath"``, the source file).
    """
    import anndata as ad
    import shapely

    from .._io import h5ad_safe
    from ..slide import read_slide

    if slide is not None:
        slide = read_slide(slide)
        mpp = slide.mpp
    df = read_geojson(path, slide=slide)
    df = df[df["object_type"].isin(["detection", "cell"])].reset_index(drop=True)
    if df.empty:
        raise TableError(f"{path}: no detection or cell objects (annotations only?): export the cells from "
                         "QuPath with File > Export objects as GeoJSON, 'Export as FeatureCollection'")
    geom = df["geometry"].to_numpy()
    cen = shapely.centroid(geom)
    scale = float(mpp) if mpp else np.nan
    obs = pd.DataFrame({
        "x": shapely.get_x(cen), "y": shapely.get_y(cen),
        "area_um2": shapely.area(geom) * scale ** 2, "perimeter_um": shapely.length(geom) * scale,
        "cell_type": pd.Categorical(df["classification"]),
        "polygon_wkb": shapely.to_wkb(geom, hex=True),
    })
    # the file's own measurements (pathkit's, or QuPath's) win over those recomputed from the outline
    skip = {"id", "object_type", "classification", "name", "color", "geometry", "x", "y", "cell_type",
            "polygon_wkb"}
    for c in df.columns:
        if c not in skip:
            obs[c] = pd.to_numeric(df[c], errors="coerce")
    obs.index = pd.Index([str(i) for i in range(len(obs))])
    cells = ad.AnnData(obs=obs)
    cells.obsm["spatial"] = obs[["x", "y"]].to_numpy(np.float64)
    cells.uns["cells"] = h5ad_safe({"model": "qupath", "source": str(path), "polygons": "obs",
                                    "classes": [str(c) for c in obs["cell_type"].cat.categories]})
    if slide is not None:
        cells.uns["slide"] = h5ad_safe(slide.info())
    return cells


FEATURE_WRITERS.append((lambda obj: hasattr(obj, "obs") and hasattr(obj, "uns") and "cells" in obj.uns,
                        lambda obj, cls, meas, otype: cell_features(obj, cls or "cell_type", meas,
                                                                    otype or "detection")))
