"""Kaplan-Meier plotly figure: curves, bands, censoring ticks, numbers at risk, log-rank p, export."""
from __future__ import annotations

import numpy as np
import pytest

import pathkit as pk

pytest.importorskip("plotly")
lifelines = pytest.importorskip("lifelines")
from lifelines.datasets import load_lung


@pytest.fixture(scope="module")
def lung():
    return load_lung()


def _traces(fig, suffix):
    return [t for t in fig.data if (t.name or "").endswith(suffix)]


def test_km_figure_content(lung):
    fig = pk.pl.kaplan_meier(lung, "time", "status", "sex")
    assert fig.layout.legend.x > 1 and fig.layout.legend.xanchor == "left"  # beside the curves, not on them
    km = pk.tl.kaplan_meier(lung, "time", "status", "sex")
    curves = [t for t in fig.data if t.mode == "lines"]
    assert [c.name for c in curves] == ["1 (n=138)", "2 (n=90)"]
    for c, g in zip(curves, [1, 2]):
        assert c.line.shape == "hv"
        np.testing.assert_allclose(c.y, km.curves.loc[km.curves.group == g, "survival"])
    # CI bands: closed polygons within [0, 1]
    bands = _traces(fig, " CI")
    assert len(bands) == 2 and all(b.fill == "toself" for b in bands)
    assert all(np.nanmin(b.y) >= 0 and np.nanmax(b.y) <= 1 for b in bands)
    # censoring ticks at every censored time, on the curve
    ticks = _traces(fig, " censored")
    for t, g in zip(ticks, [1, 2]):
        sub = lung[(lung.sex == g) & (lung.status == 0)]
        np.testing.assert_allclose(np.sort(t.x), np.unique(sub["time"]))
    # numbers at risk under the axis equal a hand count at each tick
    risk = _traces(fig, " at risk")
    assert len(risk) == 2
    for t, g in zip(risk, [1, 2]):
        times = lung.loc[lung.sex == g, "time"].to_numpy()
        assert [int(s) for s in t.text] == [int((times >= x).sum()) for x in t.x]
    assert risk[0].text[0] == "138" and risk[1].text[0] == "90"
    assert list(risk[0].x) == [0, 200, 400, 600, 800, 1000]
    # log-rank p in the title (R survdiff: p = 0.00131)
    assert "log-rank p = 0.001" in fig.layout.title.text
    assert fig.layout.meta["logrank_p"] == pytest.approx(0.00131116, rel=1e-4)


def test_km_figure_options(lung, tmp_path):
    fig = pk.pl.kaplan_meier(lung, "time", "status", at_risk=False, ci=False, censor_ticks=False,
                             title="Overall", time_label="days")
    assert len(fig.data) == 1 and fig.data[0].name == "all (n=228)"
    assert fig.layout.title.text == "Overall" and fig.layout.xaxis.title.text == "days"
    with pytest.warns(UserWarning, match="dropped 1 of 228 rows"):
        fig = pk.pl.kaplan_meier(lung, "time", "status", "ph.ecog", logrank=False, dropna=True,
                                 at_risk_times=[0, 365, 730])
    assert "log-rank" not in fig.layout.title.text
    assert list(_traces(fig, " at risk")[0].x) == [0, 365, 730]
    out = tmp_path / "km.html"
    pk.pl.kaplan_meier(lung, "time", "status", "sex", save=out)
    assert out.stat().st_size > 1000 and "plotly" in out.read_text()[:5000].lower()
    with pytest.raises(ValueError, match="use .html"):
        pk.pl.kaplan_meier(lung, "time", "status", save=tmp_path / "km.txt")
    assert not list(tmp_path.glob("*.txt")) and not list(tmp_path.glob("tmp*"))


def test_km_figure_static_png(lung, tmp_path):
    out = tmp_path / "km.png"
    try:
        pk.pl.kaplan_meier(lung, "time", "status", "sex", save=out)
    except RuntimeError as e:
        pytest.skip(f"static export unavailable here: {e}")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
