"""QC report of one slide: thumbnail with the tissue mask, pen ink and the tiles QC rejected (plotly)."""
from __future__ import annotations

import numpy as np

#: overlay colours (RGBA) of the mask layers and the outline colour of each rejection reason
TISSUE_RGBA = (40, 170, 60, 70)
PEN_RGBA = (30, 60, 230, 150)
REASON_COLORS = {"pen": "#1f3fe6", "focus": "#ff7f0e", "tissue": "#7f7f7f"}


def qc_reasons(tiles) -> dict[str, np.ndarray]:
    """Boolean arrays, one per reason ("tissue", "pen", "focus"), of the tiles that failed it, from the QC
    columns and the thresholds in ``tiles.uns["qc"]``."""
    from ..errors import TableError

    qc = tiles.uns.get("qc")
    if not qc or "qc_pass" not in tiles.obs:
        raise TableError("tiles have no QC: make them with pk.pp.tile(slide) or run pk.pp.tile_qc(tiles, slide)")
    obs = tiles.obs
    out = {"tissue": obs["tissue"].to_numpy(float) < float(qc["min_tissue"]) - 1e-9,
           "pen": obs["pen"].to_numpy(float) > float(qc["max_pen"]) + 1e-12}
    foc = obs["focus"].to_numpy(float)
    out["focus"] = (foc < float(qc["min_focus"])) if qc.get("focus_scored") else np.zeros(len(obs), bool)
    return out


def _mask_layer(tissue, size) -> np.ndarray:
    """RGBA (H x W) of the tissue and pen masks resampled (nearest) to the thumbnail."""
    from PIL import Image

    w, h = size
    d = tissue.downsample
    sw, sh = tissue.slide_dimensions or (tissue.mask.shape[1] * d, tissue.mask.shape[0] * d)

    def resample(m):
        # the mask pixel under each thumbnail pixel centre
        j = np.minimum(((np.arange(w) + 0.5) * sw / w / d).astype(np.int64), m.shape[1] - 1)
        i = np.minimum(((np.arange(h) + 0.5) * sh / h / d).astype(np.int64), m.shape[0] - 1)
        return m[np.ix_(i, j)]

    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[resample(tissue.mask)] = TISSUE_RGBA
    if tissue.pen_mask is not None:
        rgba[resample(tissue.pen_mask)] = PEN_RGBA
    return np.asarray(Image.fromarray(rgba, "RGBA"))


def qc(tiles, slide=None, *, tissue=None, thumbnail_size: int = 1024, show_kept: bool = True,
       title: str | None = None, height: int = 700, width: int | None = None):
    """A slide's QC at a glance: thumbnail, tissue mask (green), pen ink (blue), and the tiles QC rejected
    outlined by reason (pen blue, focus orange, tissue grey), kept tiles in thin green.

    Parameters
    ----------
    tiles
        The tiles AnnData of :func:`pathkit.pp.tile` with QC (``obs["qc_pass"]``, ``uns["qc"]``).
    slide
        A :class:`~pathkit.slide.Slide` or its path; ``None`` opens ``tiles.uns["slide"]["path"]``.
    tissue
        The :class:`~pathkit.pp.tissue.TissueMask` to draw; default ``find_tissue(slide)``.
    thumbnail_size
        Longest side of the thumbnail (px).
    show_kept
        Outline the tiles that passed too.
    title, height, width
        Figure layout.

    Returns
    -------
    plotly.graph_objects.Figure
        Traces, in order: ``"thumbnail"``, ``"mask"`` (go.Image, RGBA), one outline trace per rejection
        reason named ``"rejected: <reason> (n)"``, ``"kept (n)"``; ``layout.meta["qc"]`` is ``uns["qc"]``.
    """
    import plotly.graph_objects as go

    from ..slide import slide_of_tiles
    from ..pp.tissue import find_tissue
    from ._slide import _check_one_slide, _rect_path
    from ._thumbs import data_uri, tile_geometry

    if not hasattr(tiles, "obs") and hasattr(slide, "obs"):
        raise TypeError("pk.pl.qc takes the tiles first, as pk.pl.slide does: pk.pl.qc(tiles, slide)")
    slide = slide_of_tiles(tiles, slide)
    _check_one_slide(slide, tiles)
    reasons = qc_reasons(tiles)
    if tissue is None:
        tissue = find_tissue(slide)
    thumb = slide.thumbnail(thumbnail_size).convert("RGB")
    W, H = slide.dimensions
    sx, sy = thumb.width / W, thumb.height / H
    geom = tile_geometry(tiles, slide=slide)
    xy = geom.xy
    fig = go.Figure()
    fig.add_trace(go.Image(source=data_uri(thumb, "jpeg"), x0=0, y0=0, dx=1, dy=1, name="thumbnail",
                           hoverinfo="skip"))
    fig.add_trace(go.Image(source=data_uri(_mask_layer(tissue, thumb.size)), x0=0, y0=0, dx=1, dy=1,
                           name="mask", hoverinfo="skip"))
    ok = tiles.obs["qc_pass"].to_numpy(bool)
    for reason, bad in reasons.items():
        sel = np.flatnonzero(bad)
        hx, hy = _rect_path(xy[sel, 0] * sx, xy[sel, 1] * sy, geom.size * sx, geom.size * sy)
        fig.add_trace(go.Scatter(x=hx, y=hy, mode="lines", name=f"rejected: {reason} ({sel.size})",
                                 line={"color": REASON_COLORS[reason], "width": 2}, hoverinfo="skip",
                                 visible=True if sel.size else "legendonly"))
    if show_kept:
        sel = np.flatnonzero(ok)
        hx, hy = _rect_path(xy[sel, 0] * sx, xy[sel, 1] * sy, geom.size * sx, geom.size * sy)
        fig.add_trace(go.Scatter(x=hx, y=hy, mode="lines", name=f"kept ({sel.size})",
                                 line={"color": "#2ca02c", "width": 0.6}, hoverinfo="skip"))
    q = dict(tiles.uns["qc"])
    if title is None:
        title = (f"{slide.slide_id}: tissue {q['tissue_area_mm2']:.2f} mm², pen {q['pen_area_mm2']:.2f} mm², "
                 f"tiles kept {q['n_pass']} / {q['n_tiles']}")
    fig.update_layout(template="simple_white", title=title, height=height, width=width, hovermode="closest",
                      legend={"itemsizing": "constant"},
                      meta={"pathkit": "qc", "qc": q, "scale": [sx, sy], "tile_size": geom.size})
    fig.update_xaxes(range=[0, thumb.width], showgrid=False, showticklabels=False, ticks="", showline=False,
                     constrain="domain")
    fig.update_yaxes(range=[thumb.height, 0], showgrid=False, showticklabels=False, ticks="", showline=False,
                     scaleanchor="x", constrain="domain")
    return fig
