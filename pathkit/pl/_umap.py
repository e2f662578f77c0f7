"""UMAP scatter (plotly) with tile thumbnails on hover."""
from __future__ import annotations

import numpy as np

from . import _thumbs
from ._colors import format_value, resolve_color

#: Above this many points WebGL (Scattergl) is used.
GL_ABOVE = 20000


def _hover_texts(adata, cs, extra: list[str]) -> np.ndarray:
    obs = adata.obs
    parts = [np.asarray([f"<b>{n}</b>" for n in obs.index], dtype=object)]
    if cs.key is not None:
        parts.append(np.asarray([f"{cs.key}: {format_value(v)}" for v in cs.values], dtype=object))
    for c in extra:
        if c in obs and c != cs.key:
            parts.append(np.asarray([f"{c}: {format_value(v)}" for v in obs[c].to_numpy()], dtype=object))
    out = parts[0]
    for p in parts[1:]:
        out = out + "<br>" + p
    return out


def _thumbnail_rows(n: int, max_thumbnails: int, seed: int) -> np.ndarray:
    if n <= max_thumbnails:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_thumbnails, replace=False))


def umap(adata, color: str | None = None, thumbnails="auto", slide=None, max_thumbnails: int = 300,
         thumb_px: int = 96, *, basis: str = "X_umap", palette=None, colorscale: str = "Viridis",
         size: float = 6, opacity: float = 0.85, hover_keys=("slide_id", "leiden"), title: str | None = None,
         width: int | None = None, height: int = 600, seed: int = 0, widget: bool = False):
    """Plotly scatter of ``obsm["X_umap"]`` coloured by an obs column or a gene, with thumbnails.

    Parameters
    ----------
    adata
        AnnData with ``obsm[basis]`` (run ``pk.tl.umap`` first): tiles of one or many slides, or a cohort.
    color
        obs column (categorical: one legend entry per category, colours from ``palette`` or
        ``uns[color + "_colors"]``; numeric: colour bar), a gene of ``obsm["rna"]`` (DataFrame), or a
        feature (var name). ``None``: one colour.
    thumbnails
        ``"auto"`` (default): tile thumbnails when a slide is available (``slide=`` or a readable
        ``uns["slide"]["path"]``; for cohorts, readable ``obs["path"]``), none otherwise.
        ``True`` / ``"hover"``: required (raises when no slide). ``"map"``: also draw them as images at
        their points (a static thumbnail map that shows in any renderer). ``False``: none.
        Hover thumbnails are PNG data URIs in ``customdata[:, 1]``. Plotly's hover label cannot show images,
        so they appear: in JupyterLab with ``widget=True`` (FigureWidget + an image beside it) or in
        ``pk.widgets.SlideExplorer``; in HTML written by ``pathkit.pl._thumbs.write_html`` (a hover script,
        works offline); as a static map with ``thumbnails="map"``.
    slide
        A Slide, or a dict slide_id -> Slide for tiles of many slides.
    max_thumbnails
        At most this many points (a seeded random subset) get a thumbnail, to keep the figure small.
    thumb_px
        Thumbnail side in pixels.
    basis
        obsm key of the 2-D embedding.
    widget
        Return an ipywidgets box (``.figure`` FigureWidget, ``.image``) that shows the hovered point's
        thumbnail, for JupyterLab (needs anywidget).

    Returns
    -------
    ``plotly.graph_objects.Figure`` (or the widget box with ``widget=True``). Every trace has
    ``customdata`` rows ``[row, thumbnail_uri_or_""]``
    where ``row`` is the position in ``adata``.
    """
    import plotly.graph_objects as go

    if basis not in adata.obsm:
        raise KeyError(f"adata.obsm has no {basis!r} (keys: {list(adata.obsm.keys())}); run "
                       "pk.tl.umap(adata) first")
    xy = np.asarray(adata.obsm[basis], dtype=float)[:, :2]
    n = adata.n_obs
    cs = resolve_color(adata, color, palette)

    mode = thumbnails
    if mode not in ("auto", True, False, "hover", "map"):
        raise ValueError(f"thumbnails={thumbnails!r}; use 'auto', True, 'hover', 'map' or False")
    thumbs: dict[int, str] = {}
    if mode:
        required = mode != "auto"
        rows = _thumbnail_rows(n, max_thumbnails, seed)
        is_tiles = ("x" in adata.obs and "y" in adata.obs) or "spatial" in adata.obsm
        if is_tiles:
            slides = _thumbs.slides_for(adata, slide, required)
            if slides is not None:
                thumbs = _thumbs.tile_thumbnails(adata, slides, rows, thumb_px)
        elif "path" in adata.obs or isinstance(slide, dict):
            from pathlib import Path

            ok = isinstance(slide, dict) or all(Path(str(p)).exists() for p in adata.obs["path"].iloc[rows])
            if ok:
                thumbs = _thumbs.slide_thumbnails(adata, rows, thumb_px, slide)
            elif required:
                raise FileNotFoundError("thumbnails need the slides: obs['path'] has files that are not "
                                        "readable here; pass slide= a dict slide_id -> Slide")
        elif required:
            raise KeyError("thumbnails need tile coordinates (obs x/y) or slide paths (obs['path'])")

    hover = _hover_texts(adata, cs, list(hover_keys))
    custom = np.empty((n, 2), dtype=object)
    custom[:, 0] = np.arange(n)
    custom[:, 1] = ""
    for r, uri in thumbs.items():
        custom[r, 1] = uri
    Scatter = go.Scattergl if n > GL_ABOVE else go.Scatter
    marker = {"size": size, "opacity": opacity, "line": {"width": 0}}

    fig = go.Figure()
    if cs.categorical:
        for cat, col in zip(cs.categories, cs.colors):
            rows = np.flatnonzero(cs.values == cat)
            fig.add_trace(Scatter(x=xy[rows, 0], y=xy[rows, 1], mode="markers", name=str(cat),
                                  legendgroup=str(cat), marker=dict(marker, color=col),
                                  customdata=custom[rows], hovertext=hover[rows], hoverinfo="text"))
        fig.update_layout(legend_title_text=cs.key, legend={"itemsizing": "constant"})
    else:
        m = dict(marker)
        if cs.key is not None:
            m.update(color=cs.values, colorscale=colorscale, showscale=True, colorbar={"title": cs.key})
        else:
            m.update(color="#4C78A8")
        fig.add_trace(Scatter(x=xy[:, 0], y=xy[:, 1], mode="markers", name=cs.key or "points", marker=m,
                              customdata=custom, hovertext=hover, hoverinfo="text", showlegend=False))

    if mode == "map" and thumbs:
        span = np.ptp(xy, axis=0)
        sz = float(max(span.max(), 1e-9)) / 25
        for r, uri in thumbs.items():
            fig.add_layout_image(source=uri, x=xy[r, 0], y=xy[r, 1], xref="x", yref="y", sizex=sz, sizey=sz,
                                 xanchor="center", yanchor="middle", layer="above", sizing="contain")

    fig.update_layout(template="simple_white", title=title, width=width, height=height, hovermode="closest",
                      dragmode="lasso", xaxis_title=f"{basis.removeprefix('X_').upper()}1",
                      yaxis_title=f"{basis.removeprefix('X_').upper()}2",
                      meta={"pathkit": "umap", "color": cs.key, "thumbnails": len(thumbs),
                            "thumb_px": thumb_px})
    fig.update_xaxes(showticklabels=False, ticks="")
    fig.update_yaxes(showticklabels=False, ticks="")
    return _thumbs.hover_widget(fig, thumb_px) if widget else fig
