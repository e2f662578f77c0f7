"""Widgets driven programmatically and through plotly's own front-end event path."""
from __future__ import annotations

import io

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


def trace(fw, name):
    return next(t for t in fw.data if t.name == name)


def trace_index(fw, name):
    return next(i for i, t in enumerate(fw.data) if t.name == name)


def rows_of(tr, point_inds):
    return [int(tr.customdata[i][0]) for i in point_inds]


@pytest.fixture
def explorer():
    a = tile_adata()
    return pk.widgets.SlideExplorer(FakeSlide(), a, color="leiden", thumbnail_size=500, max_thumbnails=20,
                                    thumb_px=24)


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
    # one selection event spanning the "0" and "2" traces, as plotly.js reports it
    want = {0: [0, 1], 2: [3]}
    fire(ex.umap_figure, "plotly_selected", want, BOX)
    expected = sorted(rows_of(ex.umap_figure.data[0], [0, 1]) + rows_of(ex.umap_figure.data[2], [3]))
    assert ex.selected.tolist() == expected
    assert (a.obs["leiden"].iloc[expected[:]].isin(["0", "2"])).all()
    xs = [v for v in trace(ex.slide_figure, "selected").x if v is not None]
    assert len(xs) == 5 * len(expected)


def test_slide_selection_highlights_umap(explorer):
    ex, a = explorer, explorer.tiles
    ti = trace_index(ex.slide_figure, "tiles")
    fire(ex.slide_figure, "plotly_selected", {ti: [4, 7, 11]}, BOX)
    assert ex.selected.tolist() == [4, 7, 11]
    np.testing.assert_allclose(trace(ex.umap_figure, "selected").y, a.obsm["X_umap"][[4, 7, 11], 1])


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
    p = next(i for i, (r, uri) in enumerate(tr.customdata) if uri)
    fire(ex.umap_figure, "plotly_hover", {0: [p]})
    img = np.asarray(Image.open(io.BytesIO(ex.hover_image.value)).convert("RGB"))
    r = int(tr.customdata[p][0])
    assert img.shape == (24, 24, 3)
    assert (img.reshape(-1, 3) == block_color(a.obs["x"].iloc[r], a.obs["y"].iloc[r])).all()


def test_umap_hover_widget_shows_thumbnail():
    a = tile_adata()
    box = pk.pl.umap(a, color="leiden", slide=FakeSlide(), thumb_px=20, widget=True)
    fw = box.figure
    p = next(i for i, (r, uri) in enumerate(fw.data[2].customdata) if uri)
    fire(fw, "plotly_hover", {2: [p]})
    r = int(fw.data[2].customdata[p][0])
    img = np.asarray(Image.open(io.BytesIO(box.image.value)).convert("RGB"))
    assert img.shape == (20, 20, 3)
    assert (img.reshape(-1, 3) == block_color(a.obs["x"].iloc[r], a.obs["y"].iloc[r])).all()
    assert box.caption.value == f"row {r}"


def test_explorer_without_umap():
    a = tile_adata()
    del a.obsm["X_umap"]
    ex = pk.widgets.SlideExplorer(FakeSlide(), a)
    assert ex.umap_figure is None
    ex.select_tiles([1]).click_tile(1)
    assert len([v for v in trace(ex.slide_figure, "selected").x if v is not None]) == 5


def test_explorer_on_a_real_slide(tmp_path):
    slide, _, a = build_real_tiles(tmp_path)
    ex = pk.widgets.SlideExplorer(slide, a, color="tissue", thumbnail_size=512, max_thumbnails=5)
    assert len(ex._thumbs) == 5
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
