"""Widgets driven programmatically and through plotly's own front-end event path."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_pl_figures import FakeSlide, block_color, build_real_tiles, tile_adata

import pathkit as pk

pytest.importorskip("anywidget")  # plotly's FigureWidget is built on anywidget


def fire(fw, event_type, rows_by_trace, selector=None):
    """Send ``fw`` the message plotly.js sends on a click / hover / selection: {trace index: [point idx]}."""
    xs, ys, pis, tis = [], [], [], []
    for ti, pts in rows_by_trace.items():
        for p in pts:
            xs.append(float(fw.data[ti].x[p]))
            ys.append(float(fw.data[ti].y[p]))
            pis.append(int(p))
            tis.append(int(ti))
    msg = {"event_type": event_type,
           "points": {"xs": xs, "ys": ys, "point_indexes": pis, "trace_indexes": tis}}
    if selector is not None:
        msg["selector"] = selector
    fw._handler_js2py_pointsCallback({"new": msg})


BOX = {"type": "box", "selector_state": {"xrange": [0, 1], "yrange": [0, 1]}}


def typed(v):
    """A plotly JSON array: a list, or a typed array {"dtype", "bdata"} (base64)."""
    import base64

    if isinstance(v, dict) and "bdata" in v:
        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=v["dtype"])
    return np.asarray(v)


def trace(fw, name):
    return next(t for t in fw.data if t.name == name)


def trace_index(fw, name):
    return next(i for i, t in enumerate(fw.data) if t.name == name)


def rows_of(tr, point_inds):
    return [int(tr.customdata[i][0]) for i in point_inds]


@pytest.fixture
def explorer():
    a = tile_adata()
    return pk.widgets.SlideExplorer(a, "leiden", slide=FakeSlide(), thumbnail_size=500, thumb_px=24)


# ------------------------------------------------------------------------------------------ SlideExplorer
def test_colour_dropdown_recolours_both_figures(explorer):
    ex, a = explorer, explorer.tiles
    assert [t.name for t in ex.umap_figure.data][:3] == ["0", "1", "2"]
    ex.color_dropdown.value = "score"              # what the user does in the UI
    assert ex.color == "score"
    (pts,) = [t for t in ex.umap_figure.data if t.name == "score"]
    np.testing.assert_allclose(pts.marker.color, a.obs["score"])
    z = np.asarray(trace(ex.slide_figure, "overlay").z, dtype=float)
    col = ((a.obs["x"] - a.obs["x"].min()) // 100).to_numpy()
    row = ((a.obs["y"] - a.obs["y"].min()) // 100).to_numpy()
    np.testing.assert_allclose(z[row, col], a.obs["score"])
    ex.set_color("EGFR")                           # a gene of obsm["rna"]
    assert ex.color_dropdown.value == "EGFR"
    np.testing.assert_allclose(ex.umap_figure.data[0].marker.color, a.obsm["rna"]["EGFR"])
    ex.set_color("5")                              # a feature index, added to the dropdown
    assert "5" in ex.color_dropdown.options
    np.testing.assert_allclose(ex.umap_figure.data[0].marker.color, a.X[:, 5], rtol=1e-6)
    with pytest.raises(KeyError):
        ex.set_color("no_such_key")


def test_select_tiles_highlights_on_both(explorer):
    ex, a = explorer, explorer.tiles
    ex.select_tiles([9, 2, 2])
    np.testing.assert_array_equal(ex.selected, [2, 9])
    sel = trace(ex.umap_figure, "selected")
    np.testing.assert_allclose(sel.x, a.obsm["X_umap"][[2, 9], 0])
    rect = trace(ex.slide_figure, "selected")
    s = 500 / 2000
    xs = [v for v in rect.x if v is not None]
    assert len(xs) == 10
    assert xs[0] == pytest.approx(a.obs["x"].iloc[2] * s)
    assert xs[1] == pytest.approx((a.obs["x"].iloc[2] + 100) * s)
    assert ex.status.value == "2 tiles selected"
    # recolouring keeps the selection drawn
    ex.set_color(None)
    np.testing.assert_allclose(trace(ex.umap_figure, "selected").x, a.obsm["X_umap"][[2, 9], 0])


def test_umap_lasso_selection_across_traces_highlights_slide(explorer):
    ex, a = explorer, explorer.tiles
    u = a.obsm["X_umap"]
    # a lasso (SVG path) around the left half of the UMAP, spanning every leiden trace
    lo, hi = u.min(0) - 1, u.max(0) + 1
    path = f"M{lo[0]},{lo[1]}L0,{lo[1]}L0,{hi[1]}L{lo[0]},{hi[1]}Z"
    relayout(ex.umap_figure, {"selections": [{"type": "path", "path": path}]})
    expected = np.flatnonzero(u[:, 0] < 0)
    assert ex.selected.tolist() == expected.tolist()
    assert set(a.obs["leiden"].iloc[expected]) == {"0", "1", "2"}
    xs = [v for v in trace(ex.slide_figure, "selected").x if v is not None]
    assert len(xs) == 5 * len(expected)
    # plotly.js's point events (the old path, lost in 2 of 3 drags on the slide) no longer decide anything
    fire(ex.umap_figure, "plotly_selected", {0: []}, BOX)
    assert ex.selected.tolist() == expected.tolist()


def relayout(fw, data):
    """Send ``fw`` the relayout message plotly.js sends, e.g. after a box/lasso drawn with the select tool."""
    fw._js2py_relayout = {"relayout_data": data, "source_view_id": None}   # the trait the front end sets


def test_slide_box_selection_from_geometry(explorer):
    ex, a = explorer, explorer.tiles
    s = 500 / 2000                                   # thumbnail px per level-0 px
    cx, cy = (a.obs["x"] + 50) * s, (a.obs["y"] + 50) * s
    # a box over level-0 x 300..900, y 200..700 (thumbnail px), as plotly.js reports it in layout.selections
    box = {"type": "rect", "xref": "x", "yref": "y", "x0": 900 * s, "x1": 300 * s, "y0": 200 * s, "y1": 700 * s}
    relayout(ex.slide_figure, {"selections": [box]})
    want = np.flatnonzero((cx >= 300 * s) & (cx <= 900 * s) & (cy >= 200 * s) & (cy <= 700 * s))
    assert len(want) >= 3
    assert ex.selected.tolist() == want.tolist()
    np.testing.assert_allclose(trace(ex.umap_figure, "selected").y, a.obsm["X_umap"][want, 1])
    assert ex.status.value == f"{len(want)} tiles selected"
    # a drawn box cannot be dragged (plotly.py cannot apply "selections[0].x0" edits): a new one replaces it
    assert ex.slide_figure._config["editSelection"] is False and ex.umap_figure._config["editSelection"] is False
    # plotly.js's point list (sometimes empty for the slide's invisible markers) cannot lose it
    fire(ex.slide_figure, "plotly_selected", {trace_index(ex.slide_figure, "tiles"): []}, BOX)
    assert ex.selected.tolist() == want.tolist()
    # recolouring replaces the layout (its selections go): the selection stays
    ex.set_color("score")
    assert ex.selected.tolist() == want.tolist()
    # a lasso (SVG path): a triangle with corners at level-0 (0,0), (2000,0), (0,1200)
    path = f"M0,0L{2000 * s},0L0,{1200 * s}Z"
    relayout(ex.slide_figure, {"selections": [{"type": "path", "path": path, "xref": "x", "yref": "y"}]})
    tri = np.flatnonzero(cx / (2000 * s) + cy / (1200 * s) < 1)
    assert ex.selected.tolist() == tri.tolist()
    # the drawn box is removed from the plot (it would swallow the next drag started inside it); the front
    # end's echo of that removal does not clear the selection; the "clear selection" button does
    relayout(ex.slide_figure, {"selections": []})
    assert ex.selected.tolist() == tri.tolist()
    ex.clear_button.click()
    assert ex.selected.tolist() == []


def test_static_copy_follows_a_selection_with_the_drawn_box_in_the_layout(explorer, monkeypatch):
    """Issue 29: plotly.js leaves the drawn box in the FigureWidget's layout in its own form, which plotly.py's
    validation refuses (ValueError); the static copy built from it failed inside the callback, silently, and
    the saved notebook kept "0 selected" while the kernel held the selection."""
    import IPython.display

    ex = explorer
    shown = []
    monkeypatch.setattr(IPython.display, "update_display",
                        lambda b, raw, display_id: shown.append((display_id, b)))
    ex._static_shown = 1                                  # displayed once: refreshes update the saved copy
    # the front end's box, as plotly.js keeps it (with keys plotly.py does not know)
    ex.slide_figure._layout["selections"] = [{"type": "rect", "x0": 10, "x1": 200, "y0": 10, "y1": 150,
                                              "xref": "x", "yref": "y", "_input": {"type": "rect"}}]
    ex.select_tiles([1, 2, 3])
    texts = [b["text/plain"] for _, b in shown]
    assert texts and "3 selected" in texts[-1]
    fig = shown[-2 if ex.umap_figure is not None else -1][1]["application/vnd.plotly.v1+json"]
    sel = next(t for t in fig["data"] if t.get("name") == "selected")
    assert len([v for v in sel["x"] if v is not None]) == 15   # 3 tiles x 5 corners
    assert "selections" not in fig["layout"]


def test_callback_errors_are_shown_in_the_widget_and_logged(explorer, caplog):
    """Issue 29: an exception in a front-end callback was swallowed (ipywidgets sends it to the browser's
    hidden log); now the widget shows it and the 'pathkit.widgets' logger records the traceback."""
    ex = explorer

    def boom(rows):
        raise RuntimeError("tile store unreachable")

    ex.select_tiles = boom
    box = {"type": "rect", "x0": 0, "x1": 500, "y0": 0, "y1": 500}
    with caplog.at_level("ERROR", logger="pathkit.widgets"):
        relayout(ex.slide_figure, {"selections": [box]})
    assert "RuntimeError: tile store unreachable" in ex._error_widget().value
    assert ex._error_widget() in ex.widget.children
    assert any("tile store unreachable" in r.getMessage() for r in caplog.records)
    del ex.select_tiles                                    # the next callback that works clears the message
    relayout(ex.slide_figure, {"selections": [box]})
    assert ex._error_widget().value == ""
    # the survival explorer's dropdown and slider report the same way
    rng = np.random.default_rng(0)
    d = pd.DataFrame({"time": rng.exponential(10, 40), "event": rng.integers(0, 2, 40), "a": rng.normal(size=40),
                      "b": rng.normal(size=40)})
    sv = pk.widgets.SurvivalExplorer(d, "time", "event")
    sv._update = lambda cut: (_ for _ in ()).throw(ValueError("bad split"))
    sv.cutoff_slider.value = float(d["a"].quantile(0.3))
    assert "ValueError: bad split" in sv._error_widget().value


def test_layout_tile_view_beside_the_slide_and_legend_below_the_axis_title(explorer):
    """Issue 29: at 1440 x 900 the tile view, wrapped after the UMAP, fell below the fold; the UMAP's
    horizontal legend (y = -0.02) covered its x-axis title."""
    ex = explorer
    panels = ex.widget.children[-1].children
    assert panels[0] is ex.slide_figure and ex.tile_image in panels[1].children and panels[2] is ex.umap_figure
    assert 500 + ex.tile_view_px + 16 <= 1000              # slide + tile view fit a 1440-px screen's column
    lay = ex.umap_figure.layout
    plot_h = lay.height - lay.margin.t - lay.margin.b
    top = lay.legend.y * plot_h                              # px from the plot's bottom edge (negative: below)
    assert lay.legend.yanchor == "top" and top <= -45        # below tick labels (~20 px) and title (~20 px)
    assert lay.margin.b >= -top + 25                         # and room for a row of legend items


def test_umap_lasso_geometry(explorer):
    ex, a = explorer, explorer.tiles
    u = a.obsm["X_umap"]
    relayout(ex.umap_figure, {"selections": [{"type": "rect", "x0": 0, "x1": 5, "y0": -5, "y1": 0}]})
    assert ex.selected.tolist() == np.flatnonzero((u[:, 0] >= 0) & (u[:, 1] <= 0)).tolist()


def test_click_tile_shows_full_resolution_tile_and_values(explorer):
    ex, a = explorer, explorer.tiles
    ti = trace_index(ex.slide_figure, "tiles")
    fire(ex.slide_figure, "plotly_click", {ti: [7]})
    assert ex.current_tile == 7
    img = np.asarray(Image.open(io.BytesIO(ex.tile_image.value)).convert("RGB"))
    assert img.shape == (50, 50, 3)               # tile_spec: 50 px at 1.0 mpp
    assert (img.reshape(-1, 3) == block_color(a.obs["x"].iloc[7], a.obs["y"].iloc[7])).all()
    assert f"{a.obs['score'].iloc[7]:.4g}" in ex.values.value
    cur = trace(ex.umap_figure, "current")
    assert (cur.x[0], cur.y[0]) == tuple(a.obsm["X_umap"][7])
    # a click on a UMAP point selects the tile it stands for
    fire(ex.umap_figure, "plotly_click", {1: [0]})
    assert ex.current_tile == rows_of(ex.umap_figure.data[1], [0])[0]
    with pytest.raises(IndexError):
        ex.click_tile(10_000)


def test_hover_shows_thumbnail(explorer):
    ex, a = explorer, explorer.tiles
    tr = ex.umap_figure.data[0]
    assert all(uri == "" for _, uri in tr.customdata)      # nothing embedded: read when hovered
    assert ex.hover_image.layout.display == "none" and ex.tile_image.layout.display == "none"
    p = 3
    fire(ex.umap_figure, "plotly_hover", {0: [p]})
    assert ex.hover_image.layout.display is None          # shown from the first hover on
    img = np.asarray(Image.open(io.BytesIO(ex.hover_image.value)).convert("RGB"))
    r = int(tr.customdata[p][0])
    assert img.shape == (24, 24, 3)
    assert (img.reshape(-1, 3) == block_color(a.obs["x"].iloc[r], a.obs["y"].iloc[r])).all()


def test_umap_hover_widget_shows_thumbnail():
    a = tile_adata()
    box = pk.pl.umap(a, color="leiden", slide=FakeSlide(), thumb_px=20, widget=True)
    fw = box.figure
    assert all(uri == "" for _, uri in fw.data[2].customdata)   # read on hover, not embedded
    p = 1
    fire(fw, "plotly_hover", {2: [p]})
    r = int(fw.data[2].customdata[p][0])
    img = np.asarray(Image.open(io.BytesIO(box.image.value)).convert("RGB"))
    assert img.shape == (20, 20, 3)
    assert (img.reshape(-1, 3) == block_color(a.obs["x"].iloc[r], a.obs["y"].iloc[r])).all()
    assert box.caption.value == f"row {r}"
    b = box._repr_mimebundle_()       # a static copy for notebooks reopened without a kernel
    assert "application/vnd.jupyter.widget-view+json" in b
    np.testing.assert_allclose(typed(b["application/vnd.plotly.v1+json"]["data"][2]["x"]), fw.data[2].x)


def test_explorer_without_umap():
    a = tile_adata()
    del a.obsm["X_umap"]
    ex = pk.widgets.SlideExplorer(a, slide=FakeSlide())
    assert ex.umap_figure is None
    ex.select_tiles([1]).click_tile(1)
    assert len([v for v in trace(ex.slide_figure, "selected").x if v is not None]) == 5


def test_explorer_on_a_real_slide(tmp_path):
    slide, _, a = build_real_tiles(tmp_path)
    ex = pk.widgets.SlideExplorer(a, "tissue", thumbnail_size=512)   # the slide from uns["slide"]["path"]
    ex.hover_tile(4)
    hov = np.asarray(Image.open(io.BytesIO(ex.hover_image.value)).convert("RGB"))
    size0 = a.uns["tile_spec"]["size_level0"]
    np.testing.assert_array_equal(hov, slide.read_tile(int(a.obs["x"].iloc[4]), int(a.obs["y"].iloc[4]),
                                                       tile_px=96, mpp=size0 * slide.mpp / 96))
    ex.click_tile(3)
    img = np.asarray(Image.open(io.BytesIO(ex.tile_image.value)).convert("RGB"))
    ref = slide.read_tile(int(a.obs["x"].iloc[3]), int(a.obs["y"].iloc[3]), tile_px=32, mpp=4.0)
    np.testing.assert_array_equal(img, ref)          # the tile as the model saw it (tile_px at mpp)


# --------------------------------------------------------------------------------------- SurvivalExplorer
@pytest.fixture
def cohort():
    rng = np.random.default_rng(0)
    n = 120
    risk = rng.normal(size=n)
    t = rng.exponential(scale=np.exp(-1.2 * risk) * 30)
    c = rng.exponential(scale=60, size=n)
    return pd.DataFrame({"time": np.minimum(t, c), "event": (t <= c).astype(int), "risk": risk,
                         "noise": rng.normal(size=n), "stage": rng.integers(1, 4, size=n).astype(float)},
                        index=[f"P{i}" for i in range(n)])


def traces_json(fig) -> str:
    import json

    from plotly.utils import PlotlyJSONEncoder

    data = [{k: v for k, v in t.to_plotly_json().items() if k != "uid"} for t in fig.data]
    return json.dumps(data, cls=PlotlyJSONEncoder, sort_keys=True)


def lifelines_p(df, col, cut):
    from lifelines.statistics import logrank_test

    hi = df[col] > cut
    return logrank_test(df.time[hi], df.time[~hi], df.event[hi], df.event[~hi]).p_value


def test_survival_explorer_default_median_split(cohort):
    ex = pk.widgets.SurvivalExplorer(cohort, time="time", event="event")
    assert list(ex.covariate_dropdown.options) == ["risk", "noise", "stage"]
    assert ex.covariate == "risk" and ex.cutoff == pytest.approx(np.median(cohort["risk"]))
    assert (ex.groups == "high").sum() == 60
    assert ex.p_value == pytest.approx(lifelines_p(cohort, "risk", ex.cutoff), rel=1e-6)
    assert ex.p_value < 1e-4                       # risk drives survival in this cohort
    assert f"p = {ex.p_value:.3g}" in ex.label.value
    # the figure is the KM plot of that split
    df = cohort[["time", "event"]].assign(group=pd.Categorical(ex.groups, categories=["low", "high"]))
    ref = pk.pl.kaplan_meier(df, "time", "event", groupby="group")
    assert len(ex.figure.data) == len(ref.data) > 0
    assert traces_json(ex.figure) == traces_json(ref)
    assert f"{ex.cutoff:.4g}" in ex.figure.layout.title.text


def test_survival_explorer_cutoff_and_covariate_update(cohort):
    ex = pk.widgets.SurvivalExplorer(cohort, time="time", event="event")
    before = traces_json(ex.figure)
    p_before = ex.p_value
    ex.cutoff_slider.value = 1.0                   # the user drags the slider
    assert ex.cutoff == pytest.approx(1.0, abs=ex.cutoff_slider.step)
    assert (ex.groups == "high").sum() == (cohort["risk"] > ex.cutoff).sum()
    assert ex.p_value == pytest.approx(lifelines_p(cohort, "risk", ex.cutoff), rel=1e-6)
    assert ex.p_value != p_before
    assert traces_json(ex.figure) != before          # the KM curves follow the new split
    groups = pd.Categorical(np.where(cohort["risk"] > ex.cutoff, "high", "low"), categories=["low", "high"])
    ref = pk.pl.kaplan_meier(cohort[["time", "event"]].assign(group=groups), "time", "event", groupby="group")
    assert traces_json(ex.figure) == traces_json(ref)
    ex.covariate_dropdown.value = "noise"          # back to that covariate's median
    assert ex.cutoff == pytest.approx(np.median(cohort["noise"]))
    assert ex.cutoff_slider.min == pytest.approx(cohort["noise"].min())
    assert ex.p_value == pytest.approx(lifelines_p(cohort, "noise", ex.cutoff), rel=1e-6)
    ex.set_cutoff(cohort["noise"].max())           # everyone "low": no test
    assert np.isnan(ex.p_value) and "n/a" in ex.label.value


def test_survival_explorer_missing_covariate_values_and_errors(cohort):
    cohort.loc[cohort.index[:10], "risk"] = np.nan
    ex = pk.widgets.SurvivalExplorer(cohort, time="time", event="event", covariates=["risk"])
    assert len(ex.groups) == 110 and "10 without risk left out" in ex.label.value
    with pytest.raises(KeyError, match="months"):
        pk.widgets.SurvivalExplorer(cohort, time="months", event="event")
    with pytest.raises(KeyError, match="stage"):
        ex.set_covariate("stage")


# ------------------------------------------------------------------- maxstat: the cut-off chosen by looking
HOHNLOSER = Path(__file__).parent / "fixtures" / "maxstat_hohnloser.txt"


def test_maxstat_reproduces_r_maxstat_published_values():
    """R maxstat 0.7's own examples (tests/Examples/maxstat-Ex.Rout.save): hohnloser, LogRank scores:
    M = 3.5691, cut-point 39, Lau92 p = 0.01065, Lau94 p = 0.005453; pLausen94(2.5, 20, 0.25, 0.75) = 0.073
    (Lausen 1994, p. 489); qLausen92 reproduces Table 2 of Lausen & Schumacher (1992)."""
    from scipy.optimize import brentq

    from pathkit.widgets._maxstat import maxstat, p_lausen92, p_lausen94

    d = pd.read_csv(HOHNLOSER, sep=r"\s+")
    r = maxstat(d["EF"], d["month"], d["cens"])
    assert r.statistic == pytest.approx(3.5691, abs=5e-5)
    assert r.cutpoint == 39
    assert r.p_lau92 == pytest.approx(0.01065, abs=5e-6)
    assert r.p_lau94 == pytest.approx(0.005453, abs=5e-7)
    assert round(p_lausen94(2.5, 20, np.arange(5, 16)), 3) == 0.073
    table2 = {(0.1, 0.25, 0.75): 2.539, (0.05, 0.4, 0.6): 2.560, (0.025, 0.1, 0.9): 3.297,
              (0.01, 0.4, 0.9): 3.442}
    for (alpha, lo, hi), q in table2.items():
        got = brentq(lambda b, a=alpha, lo=lo, hi=hi: p_lausen92(b, lo, hi) - a, 1.01, 10)
        assert round(got, 3) == q


def test_dragged_cutoff_is_exploratory_with_corrected_p():
    from pathkit.widgets._maxstat import p_lausen94

    d = pd.read_csv(HOHNLOSER, sep=r"\s+")
    ex = pk.widgets.SurvivalExplorer(d, time="month", event="cens")
    assert list(ex.covariate_dropdown.options) == ["EF"]          # month/cens are the outcome
    assert not ex.exploratory and "pre-specified cut-off (median)" in ex.label.value
    assert np.isnan(ex.p_corrected)
    ex.cutoff_slider.value = 39.0                                   # the user drags to R's best cut-off
    assert ex.exploratory and ex.cutoff == pytest.approx(39.0, abs=ex.cutoff_slider.step)
    ex.set_cutoff(39)
    assert ex.p_value == pytest.approx(lifelines_p(d.rename(columns={"month": "time", "cens": "event"}),
                                                   "EF", 39), rel=1e-6)
    assert ex.p_corrected == pytest.approx(0.005453, abs=5e-7)    # R maxstat, Lau94, at its cut-point
    assert ex.p_corrected > ex.p_value                             # the uncorrected one is too small
    assert "EXPLORATORY" in ex.label.value and f"p = {ex.p_corrected:.3g}" in ex.label.value
    assert "corrected for choosing the cut-off" in ex.figure.layout.title.text
    ex.set_cutoff(30)                                               # any other cut-off: its own statistic
    assert ex.p_corrected > 0.005453
    assert ex.p_corrected == pytest.approx(p_lausen94(ex.maxstat.statistic_at(30, d["EF"], _scores(d)),
                                                      ex.maxstat.n, ex.maxstat.counts))
    ex.covariate_dropdown.value = "EF"                              # no change: stays
    ex.set_covariate("EF")                                          # a fresh median split: pre-specified again
    assert not ex.exploratory


def _scores(d):
    from pathkit.widgets._maxstat import logrank_scores

    return logrank_scores(d["month"], d["cens"])


def test_outcome_and_bookkeeping_columns_are_not_covariates():
    """The columns issue 16 found in the dropdown (survival_months, censorship, DSS/PFI variants, train) and
    what pk.io.link records in uns['survival'] are never offered; asking for one says why."""
    import anndata as ad

    from pathkit.io.survival_columns import normalise_survival

    rng = np.random.default_rng(1)
    n = 80
    raw = pd.DataFrame({"survival_months": rng.exponential(30, n), "censorship": rng.integers(0, 2, n),
                        "survival_months_dss": rng.exponential(30, n), "censorship_dss": rng.integers(0, 2, n),
                        "PFI": rng.integers(0, 2, n), "PFI.time": rng.exponential(900, n),
                        "train": rng.integers(0, 2, n), "fold": rng.integers(0, 5, n),
                        "n_tiles": rng.integers(100, 900, n), "case_id_num": rng.integers(0, 9, n),
                        "age": rng.normal(60, 9, n), "abmil_risk": rng.normal(size=n)},
                       index=[f"S{i}" for i in range(n)])
    obs, info = normalise_survival(raw)
    c = ad.AnnData(obs=obs, uns={"survival": info})
    ex = pk.widgets.SurvivalExplorer(c, time="time_months", event="event")
    assert list(ex.covariate_dropdown.options) == ["age", "abmil_risk"]
    for col in ("survival_months", "censorship", "event_dss", "time_months_dss", "PFI", "PFI.time", "train",
                "fold", "n_tiles"):
        assert col in ex.excluded
    with pytest.raises(KeyError, match="survival"):
        ex.set_covariate("survival_months")


def test_genes_from_the_rna_modality():
    """Genes come from a MuData's "rna" modality (var = genes) or a linked cohort's obsm["rna"]; a gene that
    drives survival separates the curves."""
    import anndata as ad

    mudata = pytest.importorskip("mudata")
    rng = np.random.default_rng(2)
    n = 150
    ids = [f"P{i}" for i in range(n)]
    expr = rng.normal(size=(n, 3))
    t = rng.exponential(np.exp(-1.5 * expr[:, 1]) * 30)
    cens = rng.exponential(60, n)
    obs = pd.DataFrame({"time": np.minimum(t, cens), "event": (t <= cens).astype(int),
                        "age": rng.normal(60, 8, n)}, index=ids)
    rna = ad.AnnData(expr.astype(np.float32), obs=pd.DataFrame(index=ids),
                     var=pd.DataFrame(index=["TP53", "EGFR", "KRAS"]))
    slides = ad.AnnData(obs=obs.copy())
    md = mudata.MuData({"slides": slides, "rna": rna})
    md.obs = md.obs.join(obs)
    ex = pk.widgets.SurvivalExplorer(md, time="time", event="event")
    # the rows are the modality holding time and event (the slides), not mdata.obs's prefixed union
    assert list(ex.covariate_dropdown.options) == ["age", "TP53", "EGFR", "KRAS"]
    ex.covariate_dropdown.value = "EGFR"
    hi = expr[:, 1] > np.median(expr[:, 1])
    assert (ex.groups == "high").to_numpy().tolist() == hi.tolist()
    assert ex.p_value < 1e-4
    # a linked cohort (obsm["rna"] DataFrame) with many genes: none in the dropdown, each can be picked
    c = ad.AnnData(obs=obs.copy())
    c.obsm["rna"] = pd.DataFrame(np.c_[expr, rng.normal(size=(n, 60))], index=ids,
                                 columns=["TP53", "EGFR", "KRAS"] + [f"G{i}" for i in range(60)])
    ex = pk.widgets.SurvivalExplorer(c, time="time", event="event")
    assert list(ex.covariate_dropdown.options) == ["age"]
    ex.set_covariate("EGFR")
    assert ex.covariate_dropdown.value == "EGFR" and ex.p_value < 1e-4
    with pytest.raises(KeyError, match="MYC"):
        ex.set_covariate("MYC")


@pytest.fixture(scope="module")
def linked_coadread(shared_data):
    """pk.link of SurvPath's real COADREAD tables: slides (by slide) + rna (by patient, 1,577 genes)."""
    import warnings

    tc = shared_data / "tcga" / "coadread"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.link(pk.io.cohort_from_table(tc / "slides_survival.csv"), rna=tc / "rna_xena_log2.csv")


def test_survival_explorer_takes_pk_link_mudata(linked_coadread, rna):
    """Issue 29: SurvivalExplorer(mdata), rna=mdata and rna=mdata["rna"] all work on pk.link's MuData; genes
    reach the slides through rna.uns["link"]; any gene is accepted by name; mdata.obs is filled."""
    from lifelines.statistics import logrank_test

    mdata = linked_coadread
    assert mdata.obs.shape[1] > 0 and "slides:time_months" in mdata.obs.columns   # mudata's pull, not empty
    slides = mdata["slides"]
    gene = mdata["rna"].var_names[1500]                                  # far outside the first 50
    truth = rna[gene].reindex(slides.obs["patient_id"]).to_numpy()   # each slide shows its patient's value
    views = [pk.widgets.SurvivalExplorer(mdata, "time_months", "event", covariate=gene),
             pk.widgets.SurvivalExplorer(slides, "time_months", "event", rna=mdata, covariate=gene),
             pk.widgets.SurvivalExplorer(slides, "time_months", "event", rna=mdata["rna"])]
    views[2].set_covariate(gene)
    hi = truth > np.nanmedian(truth)
    o = slides.obs[~np.isnan(truth)]
    want = logrank_test(o.time_months[hi[~np.isnan(truth)]], o.time_months[~hi[~np.isnan(truth)]],
                        o.event[hi[~np.isnan(truth)]], o.event[~hi[~np.isnan(truth)]]).p_value
    for ex in views:
        assert ex.covariate == gene and len(ex.groups) == int((~np.isnan(truth)).sum())
        assert (ex.groups == "high").to_numpy().tolist() == hi[~np.isnan(truth)].tolist()
        assert ex.p_value == pytest.approx(want, rel=1e-6)
    with pytest.raises(KeyError, match="NOT_A_GENE"):
        views[0].set_covariate("NOT_A_GENE")


def test_survival_explorer_fold_columns_and_large_p_label(cohort):
    """Issue 29: a fold index written by cross-validation (abmil_fold) is not a covariate; a dragged cut-off
    with a large p is labelled exploratory without calling p = 0.668 "too small"."""
    c = cohort.assign(abmil_fold=np.arange(len(cohort)) % 5, abmil_risk=cohort["risk"])
    ex = pk.widgets.SurvivalExplorer(c, time="time", event="event", covariate="noise")
    assert "abmil_fold" not in ex.covariate_dropdown.options and "abmil_fold" in ex.excluded
    assert "abmil_risk" in ex.covariate_dropdown.options
    ps = []
    for q in np.linspace(0.2, 0.8, 13):
        ex.set_cutoff(float(c["noise"].quantile(q)))
        ps.append(ex.p_value)
        assert ex.exploratory and f"p = {ex.p_value:.3g} uncorrected" in ex.label.value
        assert "too small" not in ex.label.value
    assert max(ps) > 0.3                                    # large p values were among them


# ------------------------------------------------------------------ a saved notebook: weight, static copies
#: A one-run notebook with pl.slide, pl.umap and both widgets must save under this size (issue 16: 5-6 MB).
#: Widget state is not stored (JupyterLab's default); with "Save Widget State Automatically" on, each plotly
#: FigureWidget adds plotly's own ~5 MB JavaScript bundle to the notebook's metadata.
MAX_NOTEBOOK_BYTES = 1_000_000


@pytest.fixture(scope="module")
def executed_notebook(tmp_path_factory):
    """The widget notebook run once by nbclient (no widget state stored, as JupyterLab by default), after
    moving the survival cut-off and selecting tiles in the kernel."""
    import nbclient
    import nbformat
    from _widget_notebook import write_notebook

    d = tmp_path_factory.mktemp("nb")
    path = write_notebook(d / "widgets.ipynb", d, extra_cells=["sv.set_cutoff(0.8)\nsx.select_tiles([1, 2, 3]);"])
    nb = nbformat.read(str(path), as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(d)}}).execute()
    nbformat.write(nb, str(path))
    return nb, path


def test_saved_notebook_stays_small(executed_notebook):
    nb, path = executed_notebook
    size = path.stat().st_size
    assert size < MAX_NOTEBOOK_BYTES, f"{path.name} is {size / 1e6:.2f} MB"
    umap_out = "".join(str(o.get("data", {})) for o in nb.cells[2].outputs)
    assert "data:image/png;base64" not in umap_out          # no hover thumbnails embedded by default


def test_saved_notebook_keeps_static_copies_of_the_widgets(executed_notebook):
    """Each widget output is followed by its figures as plotly JSON + HTML; the survival copy shows the
    cut-off moved after display (update_display), the slide copy the selection made after display."""
    nb, _ = executed_notebook
    for ci, n_figs, name in ((3, 2, "SlideExplorer"), (4, 1, "SurvivalExplorer")):
        outs = [o for o in nb.cells[ci].outputs if o.output_type in ("display_data", "execute_result")]
        assert "application/vnd.jupyter.widget-view+json" in outs[0]["data"]
        static = outs[1:-1]
        assert len(static) == n_figs
        # last, the rule that hides the view's "model not found" once the notebook is reopened without state
        assert 'class="pk-viewless"' in outs[-1]["data"]["text/html"] and not outs[-1]["data"]["text/plain"]
        for o in static:
            assert {"application/vnd.plotly.v1+json", "text/html", "text/plain"} <= set(o["data"])
            assert o["data"]["text/plain"].startswith(name)
            assert "transient" not in o or o["transient"].get("display_id")
    sv_fig = [o for o in nb.cells[4].outputs if "application/vnd.plotly.v1+json" in o.get("data", {})][-1][
        "data"]["application/vnd.plotly.v1+json"]
    assert "0.8 (high)" in sv_fig["layout"]["title"]["text"] and "exploratory" in sv_fig["layout"]["title"]["text"]
    sx_fig = [o for o in nb.cells[3].outputs if o.output_type == "display_data"][1]["data"][
        "application/vnd.plotly.v1+json"]
    sel = next(t for t in sx_fig["data"] if t.get("name") == "selected")
    assert len([v for v in sel["x"] if v is not None]) == 15      # 3 tiles x 5 corners
    assert "3 selected" in [o for o in nb.cells[3].outputs if o.output_type == "display_data"][1]["data"][
        "text/plain"]


def test_repr_mimebundle_has_widget_view_and_static_figure():
    a = tile_adata()
    ex = pk.widgets.SlideExplorer(a, "leiden", slide=FakeSlide(), thumbnail_size=300)
    b = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in b and "application/vnd.plotly.v1+json" in b
    assert b["application/vnd.plotly.v1+json"]["layout"]["meta"]["pathkit"] == "slide"
    import json
    json.dumps(b["application/vnd.plotly.v1+json"], allow_nan=False)
