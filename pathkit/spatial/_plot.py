"""Spots over the H&E (plotly): measured and predicted expression side by side."""
from __future__ import annotations

import numpy as np
from scipy import sparse

from ..errors import TableError
from ._spots import library_id_of

__all__ = ["spatial"]


def _background(spots, slide, size: int):
    """(RGB uint8 image, level-0 px per image px) from the slide, else uns['spatial'] hires / lowres."""
    if slide is not None:
        from ..slide import read_slide

        slide = read_slide(slide)
        img = np.asarray(slide.thumbnail(size).convert("RGB"))
        return img, slide.dimensions[0] / img.shape[1]
    lib = spots.uns["spatial"][library_id_of(spots)]
    for res in ("hires", "lowres"):
        img = (lib.get("images") or {}).get(res)
        f = (lib.get("scalefactors") or {}).get(f"tissue_{res}_scalef")
        if img is not None and f:
            img = np.asarray(img)
            img = (img * 255).clip(0, 255).astype(np.uint8) if img.dtype.kind == "f" else img.astype(np.uint8)
            return img[..., :3], 1.0 / float(f)
    return None, 1.0


def _values(spots, color: str, layer: str | None):
    if color in spots.obs.columns:
        return spots.obs[color].to_numpy(), color
    if color not in spots.var_names:
        raise TableError(f"color={color!r} is neither a spots.obs column nor a gene of spots.var_names")
    j = spots.var_names.get_loc(color)
    if layer is None:
        M = spots.layers.get("counts", spots.X)
        v = M[:, j]
        v = np.log1p(np.asarray(v.toarray() if sparse.issparse(v) else v, dtype=np.float64).ravel())
        return v, f"{color} log1p(counts)"
    M = spots.layers[layer][:, j]
    return np.asarray(M.toarray() if sparse.issparse(M) else M, dtype=np.float64).ravel(), f"{color} ({layer})"


def spatial(spots, color: str | None = None, slide=None, *, layer: str | None = None,
            predicted: str | None = "predicted", size: int = 1200, opacity: float = 0.8,
            colorscale: str = "Viridis"):
    """Spots drawn over the H&E; with a gene that was predicted, measured and predicted side by side.

    Parameters
    ----------
    spots
        The spots AnnData (``obsm["spatial"]`` level-0 px).
    color
        A gene (log1p counts, or ``layer``) or an ``obs`` column; None draws the spots only.
    slide
        The slide (path or Slide) for the background; default the ``hires`` image of ``uns["spatial"]``.
    layer
        Layer read for a gene (default: log1p of the raw counts).
    predicted
        The predictions' layer (``pk.tl.predict_expression(..., level="spot")``); when it holds `color`, a
        second panel shows it. None: one panel.
    size
        Longest side of the background image in px.
    opacity, colorscale
        Marker opacity and plotly colour scale.

    Returns
    -------
    plotly.graph_objects.Figure
        The figure (axes in level-0 px, y downwards).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    from ..pl._thumbs import data_uri

    xy = np.asarray(spots.obsm["spatial"], dtype=np.float64)[:, :2]
    panels = [(layer, None)]
    done = (spots.uns.get(f"{predicted}_expression") or {}).get("genes", []) if predicted else []
    if color is not None and predicted and predicted in spots.layers and color in list(done):
        panels.append((predicted, None))
    fig = make_subplots(rows=1, cols=len(panels), shared_xaxes=True, shared_yaxes=True,
                        subplot_titles=[("measured" if lay is None else lay) for lay, _ in panels]
                        if len(panels) > 1 else None)
    img, scale = _background(spots, slide, size)
    d = (spots.uns.get("spot_spec") or {})
    sf = (spots.uns["spatial"][library_id_of(spots)].get("scalefactors") or {})
    diam = float(sf.get("spot_diameter_fullres") or 0) or float(d.get("spot_diameter_um", 55)) / float(
        d.get("mpp") or 1)
    extent = (img.shape[1] * scale, img.shape[0] * scale) if img is not None else \
        (xy[:, 0].max() + diam, xy[:, 1].max() + diam)
    marker_px = max(2.0, diam / extent[0] * 500)
    for i, (lay, _) in enumerate(panels, start=1):
        kw = {}
        if color is not None:
            v, title = _values(spots, color, lay)
            numeric = np.issubdtype(np.asarray(v).dtype, np.number)
            kw = {"color": v if numeric else None, "colorscale": colorscale, "showscale": i == len(panels),
                      "colorbar": {"title": title if len(panels) == 1 else color}}
            if not numeric:
                kw = {}
        fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", text=list(spots.obs_names),
                                 marker=dict(size=marker_px, opacity=opacity, **kw), showlegend=False),
                      row=1, col=i)
        if img is not None:
            fig.add_layout_image({"source": data_uri(img, "jpeg"), "xref": f"x{i if i > 1 else ''}",
                                      "yref": f"y{i if i > 1 else ''}", "x": 0, "y": 0, "sizex": extent[0], "sizey": extent[1],
                                      "sizing": "stretch", "layer": "below"})
    fig.update_xaxes(range=[0, extent[0]], showgrid=False, zeroline=False)
    fig.update_yaxes(range=[extent[1], 0], showgrid=False, zeroline=False, scaleanchor="x")
    fig.update_layout(width=500 * len(panels) + 100, height=520, title=color or "spots",
                      plot_bgcolor="white", margin={"l": 10, "r": 10, "t": 50, "b": 10})
    return fig
