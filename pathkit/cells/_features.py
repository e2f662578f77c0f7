"""Per-cell measurements and polygons from a label image read at a known place of the slide."""
from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["x", "y", "area_um2", "perimeter_um", "eccentricity", "solidity", "hematoxylin_od"]


def measure_cells(labels: np.ndarray, h: np.ndarray, mpp: float, origin, scale: float,
                  probs: np.ndarray | None = None, classes=None, polygons: bool = True):
    """Measurements of every labelled cell.

    Parameters
    ----------
    labels
        int (h, w) label image of the read.
    h
        Haematoxylin optical density of the same pixels.
    mpp
        um per pixel of the read.
    origin
        Level-0 px (x, y) of the read's top-left corner.
    scale
        Level-0 px per read px.
    probs
        Optional (n_classes, h, w) class probabilities: each cell gets the class of highest mean probability.
    classes
        Class names of `probs`.
    polygons
        Also return the outlines (WKB bytes, level-0 px).

    Returns
    -------
    table : pandas.DataFrame
        ``COLUMNS`` (+ ``cell_type``, ``cell_type_prob``), plus ``touches_edge`` (the cell reaches the border
        of the read, so it may be cut).
    wkb : list of bytes
        One polygon per row (empty when ``polygons=False``).
    """
    import shapely
    from skimage.measure import find_contours, regionprops

    x0, y0 = origin
    rows, wkb = [], []
    hh, ww = labels.shape
    for r in regionprops(labels, intensity_image=h):
        minr, minc, maxr, maxc = r.bbox
        cy, cx = r.centroid
        row = {"x": x0 + (cx + 0.5) * scale, "y": y0 + (cy + 0.5) * scale,
               "area_um2": r.area * mpp ** 2, "perimeter_um": r.perimeter * mpp,
               "eccentricity": r.eccentricity, "solidity": r.solidity,
               "hematoxylin_od": float(r.intensity_mean),
               "touches_edge": minr == 0 or minc == 0 or maxr == hh or maxc == ww, "_label": r.label}
        rows.append(row)
        if polygons:
            img = np.pad(r.image, 1)
            cont = find_contours(img.astype(np.float32), 0.5)
            ring = max(cont, key=len)
            xs = x0 + (ring[:, 1] - 1 + minc + 0.5) * scale
            ys = y0 + (ring[:, 0] - 1 + minr + 0.5) * scale
            poly = shapely.Polygon(np.stack([xs, ys], 1))
            poly = shapely.simplify(poly, 0.25 * scale)
            wkb.append(shapely.to_wkb(poly))
    table = pd.DataFrame(rows, columns=[*COLUMNS, "touches_edge", "_label"])
    if probs is not None and classes is not None and len(table):
        lab = labels.ravel()
        n = int(labels.max()) + 1
        counts = np.bincount(lab, minlength=n).astype(np.float64)
        means = np.stack([np.bincount(lab, weights=p.ravel(), minlength=n) for p in probs], 1)
        means /= np.maximum(counts, 1)[:, None]
        means = means[table["_label"].to_numpy()]
        best = means.argmax(1)
        table["cell_type"] = np.asarray(classes, dtype=object)[best]
        table["cell_type_prob"] = means[np.arange(len(best)), best]
    return table, wkb
