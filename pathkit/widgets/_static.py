"""Static fallbacks: a widget that also leaves its current figures in the notebook as plain outputs.

A live ipywidgets view needs the kernel's widget models; a notebook that is saved and reopened (or rendered by
nbconvert / nbviewer) has none, and JupyterLab shows "model not found" in place of the widget. Each pathkit
widget is therefore displayed as two things:

1. the live widget view (``application/vnd.jupyter.widget-view+json``);
2. right after it, one output per figure holding the figure as ``application/vnd.plotly.v1+json`` (drawn by
   JupyterLab's bundled plotly renderer, offline) and ``text/html`` (nbconvert, nbviewer, VS Code) with a
   ``text/plain`` summary. These outputs carry a ``display_id`` and are updated whenever the widget's state
   changes (colour, selection, cut-off), so the saved notebook shows the state the user left.

While the live view is on the page, a ``<style>`` rule inside it hides the static copies that follow it
(CSS ``:has``), so the figures are not shown twice; without the live view (reopened notebook) the rule is
gone and the static copies show.
"""
from __future__ import annotations

import functools
import html
import json
import logging
import traceback
import uuid

#: Logger of widget callbacks: an exception in a front-end event is logged here with its traceback.
log = logging.getLogger("pathkit.widgets")

#: Class of the marker element inside a live view (the CSS rule keys on it).
LIVE_CLASS = "pk-live"


def static_copy(fw):
    """A plain ``go.Figure`` of a FigureWidget's current state, for the static copy. The front end's drawn
    box/lasso (``layout.selections``, in plotly.js's own form, which plotly.py's validation may refuse) is
    left out: the widgets draw the selection as a trace of their own."""
    import plotly.graph_objects as go

    d = fw.to_dict()
    d.get("layout", {}).pop("selections", None)
    return go.Figure(d, skip_invalid=True)


#: Class of the caption under a static copy's HTML figure (the widget's state in words: the cut-off and its
#: p-value, the selection); ``tools/notebooks/run.py`` keeps it when it redraws the figure for the docs.
CAPTION_CLASS = "pk-static-caption"


# A notebook reopened without its widget state (JupyterLab saves none by default) shows "Error displaying
# widget: model not found" (or "Loading widget...") as a text-only output node where the live view was, above the
# static copies that stand in for it. A last, empty output carries the rule that hides such nodes in its output
# area (a live view has child elements, so it is never matched; JupyterLab keeps <style> in trusted outputs,
# which a notebook the user saved is). The static copies themselves are drawn by plotly's renderer, which
# ignores their text/html, so the rule cannot live there.
VIEWLESS_CLASS = "pk-viewless"
VIEWLESS_BUNDLE = {
    "text/html": (f'<span class="{VIEWLESS_CLASS}"></span><style>.jp-OutputArea:has(.{VIEWLESS_CLASS}) '
                  ".jp-OutputArea-output.lm-Panel:not(:has(*)) {display: none;}</style>"),
    "text/plain": ""}


def figure_bundle(fig, summary: str = "") -> dict:
    """The static mimebundle of one plotly figure (plotly JSON + HTML with the summary as a caption + the
    summary as text)."""
    import plotly.io as pio

    spec = json.loads(pio.to_json(fig, validate=False))  # numpy -> lists, NaN -> null
    figure_html = pio.to_html(fig, include_plotlyjs="cdn", full_html=False, validate=False)
    caption = f'<p class="{CAPTION_CLASS}">{html.escape(summary)}</p>' if summary else ""
    return {"application/vnd.plotly.v1+json": spec,
            "text/html": f'<div class="pk-static">{figure_html}{caption}</div>',
            "text/plain": summary or "pathkit figure (static copy of a widget)"}


def live_marker_html(uid: str, n_static: int) -> str:
    """HTML for a live view: a marker and the rule that hides the ``n_static`` outputs that follow it."""
    cls = f"{LIVE_CLASS}-{uid}"
    sels = []
    for k in range(1, n_static + 1):
        sels.append(f".jp-OutputArea-child:has(.{cls})" + " + .jp-OutputArea-child" * k)
    rule = ", ".join(sels)
    return f'<span class="{cls}"></span><style>{rule} {{display: none;}}</style>' if sels else \
        f'<span class="{cls}"></span>'


class StaticFallback:
    """Mixin for a widget object with ``.widget`` (the ipywidgets view) and ``static_figures()`` (its
    current figures). Adds ``_ipython_display_`` (live view + static copies), ``_repr_mimebundle_`` (live
    view and the first figure, for front ends that take one bundle) and :meth:`refresh_static`."""

    _static_uid: str | None = None
    _static_shown = 0

    def static_figures(self) -> list:  # pragma: no cover - implemented by the widgets
        raise NotImplementedError

    def static_summary(self) -> str:
        return type(self).__name__

    def _view_bundle(self, **kwargs) -> dict:
        """The live view's own mimebundle (widget-view + text/plain)."""
        return dict(self.widget._repr_mimebundle_(**kwargs))

    def _error_widget(self):
        """The ipywidgets.HTML in which a failed callback shows its error (empty otherwise)."""
        import ipywidgets as W

        if getattr(self, "_error_html", None) is None:
            self._error_html = W.HTML("")
        return self._error_html

    def callback(self, fn):
        """``fn`` wrapped for a front-end event (click, selection, dropdown, slider). ipywidgets sends an
        exception raised there to the browser's hidden log console, so the widget would look frozen; here it
        is shown in the widget (red, with the error's type and message) and logged on ``pathkit.widgets``
        with its traceback. The next callback that succeeds clears the message."""
        @functools.wraps(fn)
        def run(*args, **kwargs):
            err = self._error_widget()
            try:
                out = fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - shown and logged, never silent
                log.error("%s: a widget callback failed\n%s", type(self).__name__, traceback.format_exc())
                err.value = ('<pre style="color:#b00020;white-space:pre-wrap;margin:4px 0">'
                             f"{html.escape(type(self).__name__)} callback failed: "
                             f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</pre>")
                return None
            if err.value:
                err.value = ""
            return out
        return run

    def _marker(self):
        """The ipywidgets.HTML holding the live marker (added to the view by the widget)."""
        import ipywidgets as W

        if getattr(self, "_marker_widget", None) is None:
            self._static_uid = self._static_uid or uuid.uuid4().hex[:12]
            self._marker_widget = W.HTML(live_marker_html(self._static_uid, len(self.static_figures())),
                                         layout=W.Layout(width="0px", height="0px", margin="0px"))
        return self._marker_widget

    def static_bundles(self) -> list[dict]:
        """One static mimebundle per current figure."""
        return [figure_bundle(f, self.static_summary()) for f in self.static_figures()]

    def _ipython_display_(self):
        from IPython.display import display

        self._marker()
        display(self._view_bundle(), raw=True)
        for i, b in enumerate(self.static_bundles()):
            display(b, raw=True, display_id=f"{self._static_uid}-{i}")
        display(VIEWLESS_BUNDLE, raw=True)
        self._static_shown += 1

    def _repr_mimebundle_(self, **kwargs):
        bundle = self._view_bundle(**kwargs)
        figs = self.static_bundles()
        if figs:
            for k, v in figs[0].items():
                bundle.setdefault(k, v)
        return bundle

    def refresh_static(self):
        """Update the static copies already in the notebook to the current figures."""
        if not self._static_shown:
            return
        from IPython.display import update_display

        for i, b in enumerate(self.static_bundles()):
            update_display(b, raw=True, display_id=f"{self._static_uid}-{i}")


def _box_class():
    import ipywidgets as W

    class StaticFallbackBox(StaticFallback, W.Box):
        """An ipywidgets Box that leaves static copies of ``static_figures()`` (set by its maker)."""

        def _view_bundle(self, **kwargs) -> dict:
            return dict(W.Box._repr_mimebundle_(self, **kwargs))

    return StaticFallbackBox


def StaticFallbackBox(children, **kwargs):
    """Make a :class:`StaticFallback` ipywidgets Box (the class is built lazily: ipywidgets is imported
    only when a widget is made)."""
    global _BOX
    if _BOX is None:
        _BOX = _box_class()
    return _BOX(children, **kwargs)


_BOX = None
