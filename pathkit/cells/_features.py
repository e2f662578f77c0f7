"""Per-cell measurements and polygons from a label image read at a known place of the slide.

Moments, areas and stain means are computed for every label at once with ``np.bincount``; outlines and
convex hulls only for the cells a tile keeps (a tile's margin holds about 40 % of what it segments).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

COLUMNS = ["x", "y", "area_um2", "perimeter_um", "eccentricity", "solidity", "hematoxylin_od"]


def measure_cells(labels: np.ndarray, h: np.ndarray, mpp: float, origin, scale: float,
                  probs: np.ndarray | None = None, classes=None, keep=None):
    """Measurements and outlines of the labelled cells.

    Parameters
    ----------
    labels
        int (h, w) label image of the read, labels 1..n.
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
    keep
        Optional function of the (n, 2) level-0 centroids returning which cells to keep; cells touching the
        border of the read are always dropped (the read cut them).

    Returns
    -------
    table : pandas.DataFrame
        ``COLUMNS`` (+ ``cell_type``, ``cell_type_prob``) of the kept cells. ``area_um2`` counts pixels;
        ``perimeter_um`` is the length of the outline; ``eccentricity`` that of the ellipse with the same
        second moments; ``solidity`` the pixel area over the area of the convex hull of the pixel squares.
    wkb : list of bytes
        The outline of each kept cell (level-0 px), WKB.
    """
    import shapely
    from scipy import ndimage as ndi
    from skimage.measure import find_contours

    n = int(labels.max())
    cols = [*COLUMNS, *(["cell_type", "cell_type_prob"] if probs is not None and classes is not None else [])]
    if n == 0:
        return pd.DataFrame(columns=cols), []
    lab = labels.ravel()
    rr, cc = np.indices(labels.shape)
    rr, cc = rr.ravel().astype(np.float64), cc.ravel().astype(np.float64)
    m = n + 1
    area = np.bincount(lab, minlength=m)[1:].astype(np.float64)
    mr = np.bincount(lab, rr, m)[1:] / area
    mc = np.bincount(lab, cc, m)[1:] / area
    # central second moments (pixel-centre convention, as skimage's inertia tensor)
    mrr = np.bincount(lab, rr * rr, m)[1:] / area - mr ** 2
    mcc = np.bincount(lab, cc * cc, m)[1:] / area - mc ** 2
    mrc = np.bincount(lab, rr * cc, m)[1:] / area - mr * mc
    tr, det = mrr + mcc, mrr * mcc - mrc ** 2
    disc = np.sqrt(np.maximum(tr ** 2 / 4 - det, 0))
    l1, l2 = tr / 2 + disc, np.maximum(tr / 2 - disc, 0)
    ecc = np.where(l1 > 0, np.sqrt(np.maximum(1 - l2 / np.where(l1 > 0, l1, 1), 0)), 0.0)
    hmean = np.bincount(lab, h.ravel().astype(np.float64), m)[1:] / area
    x0, y0 = origin
    x = x0 + (mc + 0.5) * scale
    y = y0 + (mr + 0.5) * scale
    slices = ndi.find_objects(labels, max_label=n)
    hh, ww = labels.shape
    ok = np.array([s is not None and s[0].start > 0 and s[1].start > 0 and s[0].stop < hh and s[1].stop < ww
                   for s in slices])
    if keep is not None:
        ok &= np.asarray(keep(np.stack([x, y], 1)), bool)
    idx = np.flatnonzero(ok)
    perim, solid, wkb = np.zeros(len(idx)), np.zeros(len(idx)), []
    for j, k in enumerate(idx):
        sr, sc = slices[k]
        crop = labels[sr, sc] == k + 1
        ring = max(find_contours(np.pad(crop, 1).astype(np.float32), 0.5), key=len)
        px = x0 + (ring[:, 1] - 1 + sc.start + 0.5) * scale
        py = y0 + (ring[:, 0] - 1 + sr.start + 0.5) * scale
        poly = shapely.Polygon(np.stack([px, py], 1))
        perim[j] = poly.length / scale * mpp
        r, c = np.nonzero(crop)
        corners = np.concatenate([np.stack([c + dc, r + dr], 1) for dr in (0, 1) for dc in (0, 1)])
        hull = shapely.convex_hull(shapely.multipoints(corners.astype(np.float64)))
        solid[j] = area[k] / hull.area if hull.area > 0 else 1.0
        wkb.append(shapely.to_wkb(shapely.simplify(poly, 0.25 * scale)))
    table = pd.DataFrame({"x": x[idx], "y": y[idx], "area_um2": area[idx] * mpp ** 2, "perimeter_um": perim,
                          "eccentricity": ecc[idx], "solidity": solid, "hematoxylin_od": hmean[idx]})
    if probs is not None and classes is not None:
        means = np.stack([np.bincount(lab, p.ravel().astype(np.float64), m)[1:] for p in probs], 1)
        means = means[idx] / area[idx, None]
        best = means.argmax(1)
        top = means[np.arange(len(best)), best]
        # no class has any probability over the nucleus (e.g. HoVer-Net's background type): no type
        table["cell_type"] = np.where(top > 0, np.asarray(classes, dtype=object)[best], None)
        table["cell_type_prob"] = top
    return table[cols], wkb
