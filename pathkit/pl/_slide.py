"""Slide thumbnail with tile overlays (plotly)."""
from __future__ import annotations

import warnings

import numpy as np

from ._colors import format_value, resolve_color
from ._thumbs import data_uri, tile_geometry

#: Above this many tiles the hover/selection layer uses WebGL (Scattergl).
GL_ABOVE = 20000
#: Tiles whose top-left lies within this many level-0 px of a grid node count as on the grid.
GRID_TOL_PX = 1.0


def grid_indices(xy: np.ndarray, stride: float):
    """(col, row) integer grid positions of tiles, or None when the tiles are not on one regular grid."""
    origin = xy.min(axis=0)
    g = np.rint((xy - origin) / stride)
    if np.abs(xy - origin - g * stride).max(initial=0) > GRID_TOL_PX:
        return None
    g = g.astype(np.int64)
    if len(np.unique(g, axis=0)) != len(g):  # duplicate tiles: a grid cell cannot show both
        return None
    return g


def _check_one_slide(slide, tiles) -> None:
    obs = tiles.obs if hasattr(tiles, "obs") else tiles
    if "slide_id" not in obs:
        return
    ids = obs["slide_id"].astype(str).unique()
    sid = getattr(slide, "slide_id", None)
    if len(ids) > 1:
        raise ValueError(f"tiles come from {len(ids)} slides ({list(ids[:3])}...); pass this slide's tiles, "
                         f"e.g. tiles[tiles.obs['slide_id'] == {sid!r}]")
    if sid is not None and len(ids) == 1 and ids[0] != str(sid):
        # a renamed copy of the file is legitimate; a different slide is not: say so, draw anyway
        warnings.warn(f"tiles are from slide_id {ids[0]!r} but the slide is {sid!r}; check it is the same "
                      "image", stacklevel=3)


def _categorical_colorscale(colors: list[str]):
    n = len(colors)
    scale = []
    for i, c in enumerate(colors):
        scale += [[i / n, c], [(i + 1) / n, c]]
    return scale


def _rect_path(x0, y0, w, h):
    xs, ys = [], []
    for a, b in zip(x0, y0):
        xs += [a, a + w, a + w, a, a, None]
        ys += [b, b, b + h, b + h, b, None]
    return xs, ys


def slide(tiles, color: str | None = None, slide=None, *, use_rep: str | None = None, alpha: float = 0.5,
          thumbnail_size: int = 1024, palette=None, colorscale: str = "Viridis", highlight=None,
          tile_size: float | None = None, title: str | None = None, height: int = 700, width: int | None = None,
          thumbnail=None, image_format: str = "jpeg"):
    """The slide thumbnail with the tiles drawn over it, coloured by ``color``; zoomable, hover shows values.

    Parameters
    ----------
    tiles
        Tile AnnData of one slide (``pk.pp.tile``: obs ``x``, ``y``, ``uns["tile_spec"]``, ``uns["slide"]``)
        or a DataFrame with columns ``x``, ``y`` (then ``tile_size=`` or ``attrs["tile_spec"]``).
    color
        obs column (leiden, abmil_importance, a zero-shot score, ...), a gene of ``obsm["rna"]``, or a feature
        index of ``obsm[use_rep]`` (``"12"``). ``None``: tiles in one colour.
    slide
        The Slide the tiles come from. ``None``: opened from ``tiles.uns["slide"]["path"]`` (drawing pixels
        is the one reason pathkit reads a slide after tiling); an error says so when that file is not here.
    use_rep
        obsm key whose columns ``color`` may index (e.g. ``"X_uni"``).
    alpha
        Opacity of the tile overlay.
    thumbnail_size
        Longest side of the slide thumbnail in pixels. Axes are in thumbnail pixels; level-0 coordinates
        are multiplied by ``thumbnail.width / slide.dimensions[0]`` (x) and ``height / dimensions[1]`` (y).
    highlight
        Tile rows (positions) to outline, e.g. a selection made on the UMAP.
    tile_size
        Tile side in level-0 px when ``tiles`` carry no ``tile_spec``.
    thumbnail
        A ready PIL thumbnail to reuse (skips reading the slide again).
    image_format
        ``"jpeg"`` (default: ~10x smaller notebooks) or ``"png"`` (lossless) for the embedded thumbnail.

    Returns
    -------
    ``plotly.graph_objects.Figure`` with traces, in order: ``"thumbnail"`` (go.Image), ``"overlay"``
    (go.Heatmap of the tile grid, when tiles lie on a regular grid; cells without a tile are ``None``),
    one empty legend trace per category (categorical colours), ``"tiles"`` (go.Scatter at tile centres:
    hover, click and box/lasso selection; ``customdata[:, 0]`` = tile row) and ``"selected"`` (outlines of
    ``highlight``). ``layout.meta`` holds ``scale`` (sx, sy), ``tile_size`` and ``stride`` (level-0 px).
    """
    if hasattr(tiles, "thumbnail") and not hasattr(tiles, "obs"):
        raise TypeError("pk.pl.slide takes the tiles first: pk.pl.slide(tiles, color, slide=slide) "
                        "(the slide is optional: it is opened from tiles.uns['slide']['path'])")
    if slide is None:
        if not hasattr(tiles, "uns"):
            raise TypeError("tiles is a DataFrame: pass slide= (a DataFrame carries no uns['slide']['path'])")
        from ._thumbs import slides_for

        slide = slides_for(tiles, None, required=True)["__one__"]
    import plotly.graph_objects as go

    thumb = thumbnail if thumbnail is not None else slide.thumbnail(thumbnail_size)
    thumb = thumb.convert("RGB")
    W, H = slide.dimensions
    sx, sy = thumb.width / W, thumb.height / H
    _check_one_slide(slide, tiles)
    geom = tile_geometry(tiles, slide=slide, tile_size=tile_size)
    xy, n = geom.xy, len(geom.xy)
    cs = resolve_color(tiles, color, palette, use_rep=use_rep)
    names = (tiles.obs_names if hasattr(tiles, "obs") else tiles.index).astype(str)

    cx = (xy[:, 0] + geom.size / 2) * sx
    cy = (xy[:, 1] + geom.size / 2) * sy
    hover = np.asarray([f"<b>tile {nm}</b><br>x: {int(a)}, y: {int(b)}" for nm, (a, b) in zip(names, xy)],
                       dtype=object)
    if cs.key is not None:
        hover = hover + np.asarray([f"<br>{cs.key}: {format_value(v)}" for v in cs.values], dtype=object)

    fig = go.Figure()
    fig.add_trace(go.Image(source=data_uri(thumb, image_format), x0=0, y0=0, dx=1, dy=1, name="thumbnail",
                           hoverinfo="skip"))

    # numeric z for the heatmap: category codes or values
    if cs.categorical:
        z_val = np.asarray([cs.categories.index(v) for v in cs.values], dtype=float)
        zkw = {"colorscale": _categorical_colorscale(cs.colors), "zmin": -0.5,
               "zmax": len(cs.categories) - 0.5,
                   "showscale": False}
    elif cs.key is not None:
        z_val = cs.values.astype(float)
        zkw = {"colorscale": colorscale, "showscale": True, "colorbar": {"title": cs.key}}
    else:
        z_val = np.zeros(n)
        zkw = {"colorscale": [[0, "#1f77b4"], [1, "#1f77b4"]], "showscale": False}

    grid = grid_indices(xy, geom.stride) if n else None
    if grid is not None:
        origin = xy.min(axis=0)
        z = np.full((grid[:, 1].max() + 1, grid[:, 0].max() + 1), np.nan)
        z[grid[:, 1], grid[:, 0]] = z_val
        # NaN (grid cells without a tile, missing values) is not JSON: plotly.js wants null
        z = [[None if not np.isfinite(v) else float(v) for v in row] for row in z]
        fig.add_trace(go.Heatmap(z=z, x0=(origin[0] + geom.stride / 2) * sx, dx=geom.stride * sx,
                                 y0=(origin[1] + geom.stride / 2) * sy, dy=geom.stride * sy, opacity=alpha,
                                 hoverinfo="skip", name="overlay", **zkw))
        tile_marker = {"size": 6, "opacity": 0}
    else:
        # off-grid tiles (custom coordinates): visible square markers carry the colours instead
        side = max(geom.size * sx, 3)
        tile_marker = {"size": side, "symbol": "square", "opacity": alpha, "line": {"width": 0}}
        if cs.categorical:
            tile_marker.update(color=[cs.colors[int(c)] for c in z_val])
        elif cs.key is not None:
            tile_marker.update(color=z_val, colorscale=colorscale, showscale=True, colorbar={"title": cs.key})

    if cs.categorical:
        for cat, col in zip(cs.categories, cs.colors):
            fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers", name=str(cat), legendgroup=str(cat),
                                     marker={"color": col, "symbol": "square", "size": 10}, hoverinfo="skip"))
    custom = np.arange(n).reshape(-1, 1)
    Scatter = go.Scattergl if n > GL_ABOVE else go.Scatter  # SVG slows down past ~20k markers
    fig.add_trace(Scatter(x=cx, y=cy, mode="markers", name="tiles", marker=tile_marker, customdata=custom,
                             hovertext=hover, hoverinfo="text", showlegend=False))

    sel = np.asarray([] if highlight is None else highlight, dtype=np.int64).reshape(-1)
    if sel.size and (sel.min() < 0 or sel.max() >= n):
        raise IndexError(f"highlight has tile rows outside 0..{n - 1}")
    hx, hy = _rect_path(xy[sel, 0] * sx, xy[sel, 1] * sy, geom.size * sx, geom.size * sy)
    fig.add_trace(go.Scatter(x=hx, y=hy, mode="lines", name="selected", line={"color": "black", "width": 2},
                             hoverinfo="skip", showlegend=False))

    fig.update_layout(template="simple_white", title=title, height=height, width=width, hovermode="closest",
                      dragmode="zoom", legend_title_text=cs.key if cs.categorical else None,
                      meta={"pathkit": "slide", "color": cs.key, "scale": [sx, sy], "tile_size": geom.size,
                            "stride": geom.stride, "thumbnail_size": [thumb.width, thumb.height]})
    fig.update_xaxes(range=[0, thumb.width], showgrid=False, showticklabels=False, ticks="", showline=False,
                     constrain="domain")
    fig.update_yaxes(range=[thumb.height, 0], showgrid=False, showticklabels=False, ticks="", showline=False,
                     scaleanchor="x", constrain="domain")
    return fig
