"""Slide explorer widget: slide with tile overlay + UMAP, linked selection, full-resolution tile on click."""
from __future__ import annotations

import html

import numpy as np

from ..pl._colors import available_keys, format_value
from ..pl._thumbs import decode_data_uri, png_bytes, tile_geometry

NONE = "(none)"


def replace_figure(fw, fig) -> None:
    """Swap every trace and the layout of a FigureWidget for those of ``fig`` (one front-end update)."""
    with fw.batch_update():
        fw.data = []
        fw.add_traces(list(fig.data))
        fw.layout = fig.layout


def _rows_of(trace, point_inds) -> list[int]:
    cd = trace.customdata
    return [int(cd[i][0]) for i in point_inds]


class SlideExplorer:
    """Explore one slide's tiles in JupyterLab.

    - a dropdown picks the colour key (any obs column, gene of ``obsm["rna"]``);
    - left: the slide thumbnail with the tile overlay (``pk.pl.slide``); right: the UMAP (``pk.pl.umap``)
      when ``obsm["X_umap"]`` exists;
    - clicking a tile (on either figure) shows it at full resolution (``Slide.read_tile`` at the tiles'
      ``tile_px`` / ``mpp``) with its values; hovering a UMAP point shows its thumbnail;
    - a box/lasso selection on the UMAP outlines those tiles on the slide and rings them on the UMAP, and a
      selection on the slide does the same the other way.

    Programmatic API (what the callbacks call): :meth:`set_color`, :meth:`select_tiles`,
    :meth:`click_tile`, and the state ``color``, ``selected`` (sorted tile rows), ``current_tile``.
    Figures: ``slide_figure`` and ``umap_figure`` (``plotly.graph_objects.FigureWidget``, needs anywidget).

    Parameters
    ----------
    slide
        The Slide the tiles come from.
    tiles
        Tile AnnData (``pk.tl.embed_tiles`` output; ``pk.tl.umap`` for the UMAP panel).
    color
        Initial colour key.
    thumbnail_size
        Longest side of the slide thumbnail.
    max_thumbnails, thumb_px
        Hover thumbnails on the UMAP (see ``pk.pl.umap``).
    """

    def __init__(self, slide, tiles, color: str | None = None, *, thumbnail_size: int = 1024,
                 max_thumbnails: int = 300, thumb_px: int = 96, alpha: float = 0.5, tile_view_px: int = 256):
        import ipywidgets as W
        import plotly.graph_objects as go

        from .. import pl

        self.slide, self.tiles, self.alpha = slide, tiles, alpha
        self._geom = tile_geometry(tiles, slide=slide)
        self._n = len(self._geom.xy)
        self._thumb = slide.thumbnail(thumbnail_size).convert("RGB")
        self._has_umap = hasattr(tiles, "obsm") and "X_umap" in tiles.obsm
        self.tile_view_px = tile_view_px
        self.selected = np.zeros(0, dtype=np.int64)
        self.current_tile: int | None = None
        self.color: str | None = None

        keys = [k for k in available_keys(tiles) if k not in ("x", "y")]
        if color is not None and color not in keys:
            pl._colors.resolve_color(tiles, color)  # a KeyError naming the options, or a feature index
            keys.append(color)
        self.color_dropdown = W.Dropdown(options=[NONE] + keys, value=color or NONE, description="colour")
        self.slide_figure = go.FigureWidget()
        self.umap_figure = go.FigureWidget() if self._has_umap else None
        self.tile_image = W.Image(format="png", width=tile_view_px, height=tile_view_px)
        self.hover_image = W.Image(format="png", width=thumb_px, height=thumb_px)
        self.values = W.HTML()
        self.status = W.HTML()

        self._thumbs: dict[int, str] = {}
        if self._has_umap:
            fig = pl.umap(tiles, color=None, thumbnails="auto", slide=slide, max_thumbnails=max_thumbnails,
                          thumb_px=thumb_px)
            for tr in fig.data:
                for r, uri in tr.customdata:
                    if uri:
                        self._thumbs[int(r)] = uri
        self._render(color)
        self.color_dropdown.observe(lambda ch: self._render(None if ch["new"] == NONE else ch["new"]),
                                    names="value")

        figs = [self.slide_figure] + ([self.umap_figure] if self._has_umap else [])
        side = W.VBox([W.HTML("<b>tile</b>"), self.tile_image, self.values,
                       W.HTML("<b>hover</b>"), self.hover_image])
        self.widget = W.VBox([W.HBox([self.color_dropdown, self.status]), W.HBox(figs + [side])])

    # -- display -----------------------------------------------------------------------------------------
    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -- figure building -----------------------------------------------------------------------------------
    def _trace_index(self, fw, name) -> int:
        # the helper traces come after the data traces: search from the end, so a category that happens to
        # be called "selected" cannot be mistaken for them
        for i in range(len(fw.data) - 1, -1, -1):
            if fw.data[i].name == name:
                return i
        raise KeyError(name)

    def _render(self, color):
        import plotly.graph_objects as go

        from .. import pl

        self.color = color
        sfig = pl.slide(self.slide, self.tiles, color=color, alpha=self.alpha, highlight=self.selected,
                        thumbnail=self._thumb, height=520, width=620)
        sfig.add_trace(go.Scatter(x=[], y=[], mode="lines", name="current", line={"color": "red", "width": 3},
                                  hoverinfo="skip", showlegend=False))
        sfig.update_layout(dragmode="select")
        replace_figure(self.slide_figure, sfig)
        tiles_trace = self.slide_figure.data[self._trace_index(self.slide_figure, "tiles")]
        tiles_trace.on_click(self._on_click)
        tiles_trace.on_selection(self._on_slide_selection)

        if self._has_umap:
            ufig = pl.umap(self.tiles, color=color, thumbnails=False, height=520, width=560)
            for tr in ufig.data:
                cd = np.asarray(tr.customdata, dtype=object)
                cd[:, 1] = [self._thumbs.get(int(r), "") for r in cd[:, 0]]
                tr.customdata = cd
            self._umap_point_traces = len(ufig.data)
            ufig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="selected", hoverinfo="skip",
                                      marker={"symbol": "circle-open", "size": 11, "color": "black",
                                              "line": {"width": 2}},
                                      showlegend=False))
            ufig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="current", hoverinfo="skip",
                                      marker={"symbol": "x", "size": 12, "color": "red"}, showlegend=False))
            replace_figure(self.umap_figure, ufig)
            self._umap_sel: dict[int, list[int]] = {}
            for i in range(self._umap_point_traces):
                t = self.umap_figure.data[i]
                t.on_click(self._on_click)
                t.on_hover(self._on_hover)
                t.on_selection(lambda trace, points, selector, i=i: self._on_umap_selection(i, trace, points))
        self._draw_selection()
        self._draw_current()

    def _draw_selection(self):
        from ..pl._slide import _rect_path

        sx, sy = self.slide_figure.layout.meta["scale"]
        sel = self.selected
        xy, size = self._geom.xy, self._geom.size
        hx, hy = _rect_path(xy[sel, 0] * sx, xy[sel, 1] * sy, size * sx, size * sy)
        with self.slide_figure.batch_update():
            self.slide_figure.data[self._trace_index(self.slide_figure, "selected")].update(x=hx, y=hy)
        if self._has_umap:
            u = np.asarray(self.tiles.obsm["X_umap"], dtype=float)
            with self.umap_figure.batch_update():
                self.umap_figure.data[self._trace_index(self.umap_figure, "selected")].update(
                    x=u[sel, 0], y=u[sel, 1])
        self.status.value = f"{len(sel)} tiles selected"

    def _draw_current(self):
        from ..pl._slide import _rect_path

        i = self.current_tile
        rows = [] if i is None else [i]
        sx, sy = self.slide_figure.layout.meta["scale"]
        xy, size = self._geom.xy, self._geom.size
        hx, hy = _rect_path(xy[rows, 0] * sx, xy[rows, 1] * sy, size * sx, size * sy)
        self.slide_figure.data[self._trace_index(self.slide_figure, "current")].update(x=hx, y=hy)
        if self._has_umap:
            u = np.asarray(self.tiles.obsm["X_umap"], dtype=float)
            self.umap_figure.data[self._trace_index(self.umap_figure, "current")].update(
                x=u[rows, 0], y=u[rows, 1])

    # -- programmatic API -------------------------------------------------------------------------------
    def set_color(self, key: str | None):
        """Recolour both figures by ``key`` (None: one colour). Keeps the selection and current tile."""
        from ..pl._colors import resolve_color

        key = None if key == NONE else key
        want = key or NONE
        if want not in self.color_dropdown.options:
            resolve_color(self.tiles, key)  # a KeyError naming the options when the key is unknown
            self.color_dropdown.options = list(self.color_dropdown.options) + [want]
        if self.color_dropdown.value != want:
            self.color_dropdown.value = want  # the dropdown's observer renders
        else:
            self._render(key)
        return self

    def select_tiles(self, rows):
        """Select tiles by row position: outlined on the slide, ringed on the UMAP."""
        rows = np.unique(np.asarray(list(rows), dtype=np.int64))
        if rows.size and (rows[0] < 0 or rows[-1] >= self._n):
            raise IndexError(f"tile rows must lie in 0..{self._n - 1}")
        self.selected = rows
        self._draw_selection()
        return self

    def click_tile(self, row: int):
        """Show tile ``row`` at full resolution with its values (what clicking it does)."""
        row = int(row)
        if not 0 <= row < self._n:
            raise IndexError(f"tile row {row} outside 0..{self._n - 1}")
        self.current_tile = row
        x, y = self._geom.xy[row]
        g = self._geom
        if g.tile_px and g.mpp:
            img = self.slide.read_tile(int(np.rint(x)), int(np.rint(y)), tile_px=g.tile_px, mpp=g.mpp)
        else:  # no tile_spec mpp: read the level-0 square
            img = self.slide.read_tile(int(np.rint(x)), int(np.rint(y)), tile_px=int(np.rint(g.size)),
                                       mpp=float(self.slide.mpp))
        self.tile_array = img
        self.tile_image.value = png_bytes(img)
        self.values.value = self._values_html(row)
        self._draw_current()
        return self

    def _values_html(self, row: int) -> str:
        obs = self.tiles.obs if hasattr(self.tiles, "obs") else self.tiles
        rec = obs.iloc[row]
        items = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(format_value(v))}</td></tr>"
                        for k, v in rec.items())
        return f"<table><tr><th colspan=2>tile {html.escape(str(obs.index[row]))}</th></tr>{items}</table>"

    # -- plotly callbacks -------------------------------------------------------------------------------
    def _on_click(self, trace, points, state):
        if points.point_inds:
            self.click_tile(_rows_of(trace, points.point_inds)[0])

    def _on_hover(self, trace, points, state):
        if points.point_inds:
            row = _rows_of(trace, points.point_inds)[0]
            uri = self._thumbs.get(row)
            if uri:
                self.hover_image.value = png_bytes(decode_data_uri(uri))

    def _on_slide_selection(self, trace, points, selector):
        self.select_tiles(_rows_of(trace, points.point_inds))

    def _on_umap_selection(self, i, trace, points):
        # plotly dispatches one selection event to every trace in turn: keep each trace's part, select
        # the union
        self._umap_sel[i] = _rows_of(trace, points.point_inds)
        self.select_tiles([r for part in self._umap_sel.values() for r in part])
