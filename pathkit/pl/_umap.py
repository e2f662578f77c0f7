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


def _in_kernel() -> bool:
    """Whether this runs in a Jupyter kernel (where the figure is shown by the notebook's renderer)."""
    import sys

    if "IPython" not in sys.modules:
        return False
    ip = sys.modules["IPython"].get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def _thumbnail_rows(n: int, max_thumbnails: int, seed: int) -> np.ndarray:
    if n <= max_thumbnails:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_thumbnails, replace=False))


def umap(adata, color: str | None = None, *, thumbnails="auto", slide=None, max_thumbnails: int = 100,
         thumb_px: int = 96, basis: str = "X_umap", use_rep: str | None = None, palette=None,
         colorscale: str = "Viridis", size: float = 6, opacity: float = 0.85, hover_keys=("slide_id", "leiden"),
         title: str | None = None, width: int | None = None, height: int = 600, random_state: int = 0,
         widget: bool = False):
    """Plotly scatter of ``obsm["X_umap"]`` coloured by an obs column, a gene or a feature; tile thumbnails.

    Parameters
    ----------
    adata
        AnnData with ``obsm[basis]`` (run ``pk.tl.umap`` first): tiles of one or many slides, or a cohort.
    color
        obs column (categorical: one legend entry per category, colours from ``palette`` or
        ``uns[color + "_colors"]``; numeric: colour bar), a gene of ``obsm["rna"]`` (DataFrame), or a
        feature index of ``obsm[use_rep]`` (``"12"``). ``None``: one colour.
    thumbnails
        Where the tile thumbnails show; nothing is embedded that no renderer shows.

        - ``"auto"`` (default): with ``widget=True``, the hovered point's tile is read from the slide when
          hovered and shown in an image panel beside the plot (nothing embedded, so saved notebooks stay
          small); without a widget, none (JupyterLab's plotly renderer cannot show images on hover).
        - ``"hover"`` / ``True``: embed up to ``max_thumbnails`` PNG data URIs in ``customdata[:, 1]`` for
          :func:`pathkit.pl.write_html`, whose page shows them on hover (raises when no slide).
        - ``"map"``: also draw them as images at their points (a static thumbnail map).
        - ``False``: none.

        The slide comes from ``slide=``, else a readable ``uns["slide"]["path"]`` (tiles) or ``obs["path"]``
        (cohorts).
    slide
        A Slide, or a dict slide_id -> Slide for tiles of many slides.
    max_thumbnails
        At most this many points (a seeded random subset) get an embedded thumbnail.
    thumb_px
        Thumbnail side in pixels.
    basis
        obsm key of the 2-D embedding.
    use_rep
        obsm key whose columns ``color`` may index (e.g. ``"X_uni"``).
    random_state
        Seed of the subset that gets embedded thumbnails.
    widget
        Return an ipywidgets box (``.figure`` FigureWidget, ``.image``, ``.caption``) that shows the hovered
        point's thumbnail, for JupyterLab. It shows a static copy of the figure when the notebook is
        reopened without a kernel.

    Returns
    -------
    ``plotly.graph_objects.Figure`` (or the widget box with ``widget=True``). Every trace has
    ``customdata`` rows ``[row, thumbnail_uri_or_""]`` where ``row`` is the position in ``adata``.
    """
    import plotly.graph_objects as go

    if basis not in adata.obsm:
        raise KeyError(f"adata.obsm has no {basis!r} (keys: {list(adata.obsm.keys())}); run "
                       "pk.tl.umap(adata) first")
    xy = np.asarray(adata.obsm[basis], dtype=float)[:, :2]
    n = adata.n_obs
    cs = resolve_color(adata, color, palette, use_rep=use_rep)

    mode = thumbnails
    if mode not in ("auto", True, False, "hover", "map"):
        raise ValueError(f"thumbnails={thumbnails!r}; use 'auto', True, 'hover', 'map' or False")
    thumbs: dict[int, str] = {}
    reader = None
    if mode == "auto" and widget:
        reader = _thumbs.thumb_reader(adata, slide, thumb_px, required=False)
    elif mode and mode != "auto":
        rows = _thumbnail_rows(n, max_thumbnails, random_state)
        read = _thumbs.thumb_reader(adata, slide, thumb_px, required=True)
        from .._progress import progress_bar

        for r in progress_bar(rows, desc="thumbnails", disable=len(rows) < 200, leave=False):
            thumbs[int(r)] = _thumbs.data_uri(read(int(r)))
        if thumbs and _in_kernel():
            import warnings

            from .._warn import user_stacklevel

            kb = sum(len(u) for u in thumbs.values()) / 1024
            warnings.warn(f"thumbnails={thumbnails!r} embeds {len(thumbs)} PNG thumbnails ({kb:.0f} KB) in the "
                          "figure, which JupyterLab's plotly renderer never shows (they show on the page of "
                          "pk.pl.write_html only). In a notebook, pass widget=True: the hovered tile is read from "
                          "the slide then, nothing is embedded.", UserWarning, stacklevel=user_stacklevel())

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
    return _thumbs.hover_widget(fig, thumb_px, reader=reader) if widget else fig
