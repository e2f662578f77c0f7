"""``pk.pl.cells``: nuclei over the H&E in plotly, outlines when few, thinned centroids when many."""
from __future__ import annotations

import warnings

import numpy as np


def cells(cells, color: str | None = "cell_type", slide=None, *, region=None, max_outlines: int = 3000,
          max_points: int = 50_000, thumb_px: int = 1024, random_state: int = 0, title: str | None = None):
    """Plot cells over the slide: nucleus outlines when they are few, centroids otherwise.

    Parameters
    ----------
    cells
        The cells AnnData of :func:`pathkit.tl.segment_cells` (or :func:`pathkit.io.read_qupath_cells`).
    color
        An ``obs`` column (categorical: one colour per class; numeric: a colour scale), or None. A missing
        ``"cell_type"`` (a model without types) draws every cell in one colour.
    slide
        A :class:`~pathkit.slide.Slide` or path to draw underneath (default: ``uns["slide"]["path"]`` when it
        exists; no image otherwise).
    region
        ``(x0, y0, x1, y1)`` level-0 px to show (default: the cells' extent).
    max_outlines
        Draw outlines up to this many cells in the region, centroids beyond.
    max_points
        Above this many cells a random subset of that size is drawn (the title says so).
    thumb_px
        Longest side of the background image.
    random_state
        Seed of the thinning.
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
        Level-0 px axes (y down), hover showing the cell's row and colour value.
    """
    import plotly.graph_objects as go

    from ..pl._colors import resolve_color
    from ..pl._thumbs import data_uri
    from ._polygons import cell_polygons

    xy = np.asarray(cells.obsm["spatial"], dtype=float).reshape(-1, 2)
    if region is None:
        if len(xy):
            pad = 20.0
            region = (xy[:, 0].min() - pad, xy[:, 1].min() - pad, xy[:, 0].max() + pad, xy[:, 1].max() + pad)
        else:
            region = (0.0, 0.0, 1.0, 1.0)
    x0, y0, x1, y1 = map(float, region)
    idx = np.flatnonzero((xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1))
    note = ""
    if len(idx) > max_points:
        rng = np.random.default_rng(random_state)
        idx = np.sort(rng.choice(idx, max_points, replace=False))
        note = f" ({max_points:,} of {len(xy):,} cells drawn)"
    fig = go.Figure()
    slide = _open(cells, slide)
    if slide is not None:
        scale = max(x1 - x0, y1 - y0) / thumb_px
        w, h = max(1, round((x1 - x0) / scale)), max(1, round((y1 - y0) / scale))
        img = slide.read_level0_box((x0, y0, x1, y1), (w, h))
        fig.add_trace(go.Image(source=data_uri(img, "jpeg"), x0=x0, y0=y0, dx=(x1 - x0) / w, dy=(y1 - y0) / h,
                               name="slide", hoverinfo="skip"))
    key = color if color is not None and color in cells.obs else None
    if color is not None and key is None and color != "cell_type":
        raise KeyError(f"color={color!r} is not a column of cells.obs ({list(cells.obs.columns)})")
    spec = resolve_color(cells, key)
    outlines = len(idx) <= max_outlines
    polys = cell_polygons(cells, idx) if outlines else None
    groups = [(c, spec.values[idx] == c, spec.color_of(c)) for c in spec.categories] if spec.categorical \
        else [(key or "cells", np.ones(len(idx), bool), "#1f3fbf")]
    for name, sel, col in groups:
        if not sel.any():
            continue
        if outlines and (not key or spec.categorical):
            xs, ys = [], []
            for p in polys[sel]:
                cx, cy = p.exterior.xy
                xs += [*cx, None]
                ys += [*cy, None]
            fig.add_trace(go.Scattergl(x=xs, y=ys, mode="lines", line={"color": col, "width": 1.5},
                                       name=str(name), hoverinfo="skip", legendgroup=str(name)))
        marker = {"size": 4 if not outlines else 3, "color": col}
        if key and not spec.categorical:
            marker = {"size": 5, "color": spec.values[idx], "colorscale": "Viridis", "showscale": True,
                      "colorbar": {"title": key}}
        fig.add_trace(go.Scattergl(
            x=xy[idx[sel], 0], y=xy[idx[sel], 1], mode="markers", marker=marker, name=str(name),
            legendgroup=str(name), showlegend=not outlines or not (not key or spec.categorical),
            text=[f"cell {cells.obs_names[i]}" for i in idx[sel]], hoverinfo="text"))
    fig.update_yaxes(autorange="reversed", scaleanchor="x", range=[y1, y0], title="y (level-0 px)")
    fig.update_xaxes(range=[x0, x1], title="x (level-0 px)")
    fig.update_layout(title=(title or f"{len(xy):,} cells") + note, template="plotly_white",
                      margin={"l": 40, "r": 20, "t": 50, "b": 40})
    return fig


def _open(cells, slide):
    import os

    from ..slide import read_slide

    if slide is not None:
        return read_slide(slide)
    path = (cells.uns.get("slide") or {}).get("path")
    if path and os.path.exists(path):
        return read_slide(path)
    if path:
        warnings.warn(f"the slide {path} is not here: cells drawn without the image (pass slide=)", stacklevel=3)
    return None
