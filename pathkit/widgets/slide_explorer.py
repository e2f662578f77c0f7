"""Slide explorer widget: slide with tile overlay + UMAP, linked selection, full-resolution tile on click."""
from __future__ import annotations

import html
import time

import numpy as np

from ..pl._colors import available_keys, format_value
from ..pl._thumbs import png_bytes, thumb_reader, tile_geometry
from ._static import StaticFallback, static_copy

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


def _in_polygon(px, py, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule: which points (px, py) lie inside the closed polygon ``poly`` (k x 2)."""
    inside = np.zeros(len(px), dtype=bool)
    x0, y0 = poly[-1]
    for x1, y1 in poly:
        crosses = (y1 > py) != (y0 > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xint = (x0 - x1) * (py - y1) / (y0 - y1) + x1
        inside ^= crosses & (px < xint)
        x0, y0 = x1, y1
    return inside


def _path_points(path: str) -> np.ndarray:
    """Vertices of an SVG path of plotly's lasso selection ("M x,y L x,y ... Z")."""
    import re

    nums = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?", path)]
    return np.asarray(nums, dtype=float).reshape(-1, 2)


def points_in_selections(x, y, selections) -> np.ndarray:
    """Indices of points inside any of plotly's ``layout.selections`` (rect: x0..x1, y0..y1; path: lasso)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    hit = np.zeros(len(x), dtype=bool)
    for sel in selections or ():
        get = sel.get if isinstance(sel, dict) else (lambda k, s=sel: getattr(s, k, None))
        kind = get("type") or ("path" if get("path") else "rect")
        if kind == "rect" and None not in (get("x0"), get("x1"), get("y0"), get("y1")):
            xa, xb = sorted((float(get("x0")), float(get("x1"))))
            ya, yb = sorted((float(get("y0")), float(get("y1"))))
            hit |= (x >= xa) & (x <= xb) & (y >= ya) & (y <= yb)
        elif get("path"):
            poly = _path_points(get("path"))
            if len(poly) >= 3:
                hit |= _in_polygon(x, y, poly)
    return np.flatnonzero(hit)


_SEL_KEY = __import__("re").compile(r"selections\[(\d+)\](?:\.(\w+))?")


#: Where the UMAP panel's horizontal legend starts (paper units, below the x-axis title) and the bottom margin
#: that holds it.
UMAP_LEGEND_Y, UMAP_LEGEND_MARGIN = -0.16, 90


class SlideExplorer(StaticFallback):
    """Explore one slide's tiles in JupyterLab.

    - a dropdown picks the colour key (any obs column, gene of ``obsm["rna"]``);
    - left: the slide thumbnail with the tile overlay (``pk.pl.slide``); middle: the UMAP (``pk.pl.umap``)
      when ``obsm["X_umap"]`` exists; right: the clicked tile and the hovered point's thumbnail. The panels
      wrap below one another when the notebook is narrower than ~1,200 px;
    - clicking a tile (on either figure) shows it at full resolution (``Slide.read_tile`` at the tiles'
      ``tile_px`` / ``mpp``) with its values; hovering a UMAP point shows its tile (read when hovered);
    - a box/lasso selection on either figure outlines those tiles on the slide and rings them on the UMAP.
      The selection is derived from the selection's geometry (``layout.selections``: the box or lasso the
      user drew), so it does not depend on which points plotly.js reports; the status line says how many
      tiles it holds.
    - a static copy of both figures stays in the notebook (see :mod:`pathkit.widgets._static`), so a
      notebook reopened without a kernel still shows them.

    Programmatic API (what the callbacks call): :meth:`set_color`, :meth:`select_tiles`,
    :meth:`click_tile`, and the state ``color``, ``selected`` (sorted tile rows), ``current_tile``.
    Figures: ``slide_figure`` and ``umap_figure`` (``plotly.graph_objects.FigureWidget``).

    Parameters
    ----------
    tiles
        Tile AnnData of one slide (``pk.pp.tile``, with features from ``pk.tl.embed_tiles``; ``pk.tl.umap``
        for the UMAP panel).
    color
        Initial colour key.
    slide
        The Slide the tiles come from; ``None``: opened from ``tiles.uns["slide"]["path"]``.
    use_rep
        obsm key whose feature indices may be colour keys.
    thumbnail_size
        Longest side of the slide thumbnail.
    thumb_px
        Side of the hover thumbnail.
    """

    def __init__(self, tiles, color: str | None = None, slide=None, *, use_rep: str | None = None,
                 thumbnail_size: int = 1024, thumb_px: int = 96, alpha: float = 0.5, tile_view_px: int = 224):
        import ipywidgets as W
        import plotly.graph_objects as go

        from .. import pl
        from ..pl._thumbs import slides_for

        if hasattr(tiles, "thumbnail") and not hasattr(tiles, "obs"):
            raise TypeError("SlideExplorer takes the tiles first: SlideExplorer(tiles, color, slide=slide)")
        if slide is None:
            slide = slides_for(tiles, None, required=True)["__one__"]
        self.slide, self.tiles, self.alpha, self.use_rep = slide, tiles, alpha, use_rep
        self._geom = tile_geometry(tiles, slide=slide)
        self._n = len(self._geom.xy)
        self._thumb = slide.thumbnail(thumbnail_size).convert("RGB")
        self._has_umap = hasattr(tiles, "obsm") and "X_umap" in tiles.obsm
        self.tile_view_px = tile_view_px
        self.selected = np.zeros(0, dtype=np.int64)
        self.current_tile: int | None = None
        self.color: str | None = None
        self._rendering = False

        keys = [k for k in available_keys(tiles) if k not in ("x", "y")]
        if color is not None and color not in keys:
            pl._colors.resolve_color(tiles, color, use_rep=use_rep)  # KeyError naming the options
            keys.append(color)
        self.color_dropdown = W.Dropdown(options=[NONE] + keys, value=color or NONE, description="colour")
        self.slide_figure = go.FigureWidget()
        self.umap_figure = go.FigureWidget() if self._has_umap else None
        hidden = W.Layout(display="none")
        self.tile_image = W.Image(format="png", width=tile_view_px, height=tile_view_px, layout=hidden)
        self.hover_image = W.Image(format="png", width=thumb_px, height=thumb_px,
                                   layout=W.Layout(display="none"))
        self.values = W.HTML("<i>click a tile to see it at full resolution</i>")
        self.hover_caption = W.HTML("<i>hover a UMAP point</i>" if self._has_umap else "")
        self.status = W.HTML()
        self.clear_button = W.Button(description="clear selection", layout=W.Layout(width="auto"))
        self.clear_button.on_click(self.callback(lambda _: self.select_tiles([])))
        self._reader = thumb_reader(tiles, slide, thumb_px, required=False) if self._has_umap else None
        self._thumb_cache: dict[int, bytes] = {}

        self._render(color)
        self.color_dropdown.observe(
            self.callback(lambda ch: self._render(None if ch["new"] == NONE else ch["new"])), names="value")
        # the selection geometry arrives in plotly.js's relayout message; plotly.py drops a whole new
        # "selections" array when it applies the message to layout, so read the message itself
        self._drawn: dict[str, list[dict]] = {"slide": [], "umap": []}
        self._echo_until = {"slide": 0.0, "umap": 0.0}
        for fw in (self.slide_figure, self.umap_figure):
            if fw is not None:  # plotly.py raises on edits of a drawn box ("selections[0].x0"): draw new ones
                fw._config = dict(fw._config or {}, editSelection=False)
        self.slide_figure.observe(self.callback(lambda ch: self._on_relayout("slide", ch["new"])),
                                  names="_js2py_relayout")
        if self._has_umap:
            self.umap_figure.observe(self.callback(lambda ch: self._on_relayout("umap", ch["new"])),
                                     names="_js2py_relayout")

        side = W.VBox([W.HTML("<b>tile</b>"), self.tile_image, self.values,
                       W.HTML("<b>hover</b>"), self.hover_image, self.hover_caption, self._marker()],
                      layout=W.Layout(width=f"{tile_view_px + 16}px", overflow="hidden"))
        # the tile view right of the slide: at 1440 x 900 the three panels (500 + 420 + 240 px) do not fit
        # beside each other in JupyterLab's column, and a tile view wrapped last fell below the fold
        panels = W.Box([self.slide_figure, side] + ([self.umap_figure] if self._has_umap else []), layout=W.Layout(display="flex", flex_flow="row wrap",
                                                      align_items="flex-start", width="100%"))
        self.widget = W.VBox([W.HBox([self.color_dropdown, self.clear_button, self.status]),
                              self._error_widget(), panels],
                             layout=W.Layout(max_width="100%"))

    # -- static fallback ---------------------------------------------------------------------------------
    def static_figures(self) -> list:
        return [static_copy(f) for f in (self.slide_figure, self.umap_figure) if f is not None]

    def static_summary(self) -> str:
        return (f"SlideExplorer: {self._n} tiles, colour {self.color or 'none'}, {len(self.selected)} selected"
                f", current tile {self.current_tile} (static copy; run the cell for the live widget)")

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
        # height from the slide's aspect ratio (no empty band above and below a wide slide)
        height = int(min(max(480 * self._thumb.height / self._thumb.width + 90, 260), 560))
        sfig = pl.slide(self.tiles, color=color, slide=self.slide, use_rep=self.use_rep, alpha=self.alpha,
                        highlight=self.selected, thumbnail=self._thumb, height=height, width=500)
        sfig.add_trace(go.Scatter(x=[], y=[], mode="lines", name="current", line={"color": "red", "width": 3},
                                  hoverinfo="skip", showlegend=False))
        sfig.update_layout(dragmode="select", margin={"l": 10, "r": 10, "t": 30, "b": 10},
                           legend={"orientation": "h", "y": -0.02, "yanchor": "top"})
        self._rendering = True  # a new layout clears layout.selections: that is not the user deselecting
        try:
            replace_figure(self.slide_figure, sfig)
            tiles_trace = self.slide_figure.data[self._trace_index(self.slide_figure, "tiles")]
            tiles_trace.on_click(self.callback(self._on_click))
            if self._has_umap:
                ufig = pl.umap(self.tiles, color=color, thumbnails=False, use_rep=self.use_rep, height=460,
                               width=420)
                # the horizontal legend goes below the x-axis title (at y = -0.02 it covered "UMAP1")
                ufig.update_layout(margin={"l": 10, "r": 10, "t": 30, "b": UMAP_LEGEND_MARGIN},
                                   legend={"orientation": "h", "y": UMAP_LEGEND_Y, "yanchor": "top"})
                self._umap_point_traces = len(ufig.data)
                ufig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="selected", hoverinfo="skip",
                                          marker={"symbol": "circle-open", "size": 11, "color": "black",
                                                  "line": {"width": 2}}, showlegend=False))
                ufig.add_trace(go.Scatter(x=[], y=[], mode="markers", name="current", hoverinfo="skip",
                                          marker={"symbol": "x", "size": 12, "color": "red"}, showlegend=False))
                replace_figure(self.umap_figure, ufig)
                for i in range(self._umap_point_traces):
                    t = self.umap_figure.data[i]
                    t.on_click(self.callback(self._on_click))
                    t.on_hover(self.callback(self._on_hover))
        finally:
            self._rendering = False
        self._draw_selection(refresh=False)
        self._draw_current(refresh=False)
        self.refresh_static()

    def _draw_selection(self, refresh=True):
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
        if refresh:
            self.refresh_static()

    def _draw_current(self, refresh=True):
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
        if refresh:
            self.refresh_static()

    # -- programmatic API -------------------------------------------------------------------------------
    def set_color(self, key: str | None):
        """Recolour both figures by ``key`` (None: one colour). Keeps the selection and current tile."""
        from ..pl._colors import resolve_color

        key = None if key == NONE else key
        want = key or NONE
        if want not in self.color_dropdown.options:
            resolve_color(self.tiles, key, use_rep=self.use_rep)  # a KeyError naming the options
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
        self.tile_image.layout.display = None
        self.values.value = self._values_html(row)
        self._draw_current()
        return self

    def hover_tile(self, row: int):
        """Show tile ``row``'s thumbnail in the hover panel (what hovering a UMAP point does)."""
        row = int(row)
        if self._reader is None:
            return self
        if row not in self._thumb_cache:
            self._thumb_cache[row] = png_bytes(self._reader(row))
        self.hover_image.value = self._thumb_cache[row]
        self.hover_image.layout.display = None
        self.hover_caption.value = f"tile {html.escape(str(self.tiles.obs_names[row]))}"
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
            self.hover_tile(_rows_of(trace, points.point_inds)[0])

    def _tile_centres(self):
        sx, sy = self.slide_figure.layout.meta["scale"]
        half = self._geom.size / 2
        return (self._geom.xy[:, 0] + half) * sx, (self._geom.xy[:, 1] + half) * sy

    def _on_relayout(self, which: str, msg):
        """A relayout from the front end: apply its selection geometry (a new box/lasso, an edited one,
        or none after a double-click) and select every tile whose centre (slide) or point (UMAP) is inside."""
        data = (msg or {}).get("relayout_data") or {}
        shapes = self._drawn[which]
        changed = False
        for key, val in data.items():
            m = _SEL_KEY.fullmatch(key)
            if key == "selections":
                shapes[:] = [dict(v) for v in (val or [])]
                changed = True
            elif m:
                i, attr = int(m.group(1)), m.group(2)
                while len(shapes) <= i:
                    shapes.append({})
                if attr:
                    shapes[i][attr] = val
                else:
                    shapes[i] = dict(val or {})
                changed = True
        if not changed or self._rendering:
            return
        if not shapes and time.monotonic() < self._echo_until[which]:
            return  # the front end echoing our own clearing of the drawn box, not a deselect
        if shapes:
            # the drawn box would stay on the plot and swallow the next drag that starts inside it (plotly
            # then moves nothing and sends nothing: a silently lost selection). Clear it: the black outlines
            # show the selection from now on.
            fw = self.slide_figure if which == "slide" else self.umap_figure
            self._echo_until[which] = time.monotonic() + 2.0
            fw._send_relayout_msg({"selections": []})
            shapes = list(shapes)
            self._drawn[which] = []
        if which == "slide":
            x, y = self._tile_centres()
        else:
            u = np.asarray(self.tiles.obsm["X_umap"], dtype=float)
            x, y = u[:, 0], u[:, 1]
        self.select_tiles(points_in_selections(x, y, shapes))
