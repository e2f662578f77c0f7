"""Exported figures render in headless Chromium without JavaScript errors (offline: plotly.js inlined)."""
from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_pl_figures import FakeSlide, tile_adata

import pathkit as pk
from pathkit.pl._thumbs import write_html


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None


CHROMIUM = _chromium()
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get "
                                "install chromium; .ci/run installs it)")

# Collects errors from the very start of the page (before plotly.js loads).
ERROR_HOOK = ("<script>window.__pkErrors = [];"
              "window.addEventListener('error', function (e) { window.__pkErrors.push(String(e.message)); });"
              "window.addEventListener('unhandledrejection', function (e) {"
              " window.__pkErrors.push('unhandled: ' + String(e.reason)); });</script>")

# Runs after the plot is drawn (CURVE/PT: the trace and point to hover): counts what plotly put in the DOM,
# hovers the point and reports whether pathkit's hover thumbnail appeared; the result goes into an attribute
# that --dump-dom shows.
PROBE = """
var gd = document.getElementById('{plot_id}');
// move a real mouse over point %d of the first point trace (Fx.hover without a mouse event emits nothing)
var fl = gd._fullLayout, tr = gd._fullData[CURVE], rect = gd.getBoundingClientRect();
var px = fl.xaxis.l2p(tr.x[PT]) + fl.xaxis._offset, py = fl.yaxis.l2p(tr.y[PT]) + fl.yaxis._offset;
gd.querySelector('.nsewdrag').dispatchEvent(new MouseEvent('mousemove',
    {clientX: rect.left + px, clientY: rect.top + py, bubbles: true}));
setTimeout(function () {  // plotly throttles hover events: read the page a moment later
  var img = document.querySelector('img.pathkit-hover-thumb');
  var r = {
    svg: gd.querySelectorAll('svg.main-svg').length,
    traces: gd.querySelectorAll('.scatterlayer .trace').length,
    points: gd.querySelectorAll('.scatterlayer .point').length,
    images: gd.querySelectorAll('image').length,
    hoverLabel: gd.querySelectorAll('.hoverlayer .hovertext').length,
    hoverThumb: img ? img.style.display : 'missing',
    hoverSrc: img && img.src ? img.src.slice(0, 22) : '',
    errors: window.__pkErrors
  };
  document.body.setAttribute('data-pk-probe', JSON.stringify(r));
}, 500);
"""


def probe_js(curve: int, point: int) -> str:
    return PROBE.replace("CURVE", str(curve)).replace("PT", str(point)) % point


def render(path: Path, tmp_path: Path) -> tuple[dict, str]:
    text = path.read_text()
    path.write_text(text.replace("<head>", "<head>" + ERROR_HOOK, 1))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr",
           "--v=0", "--virtual-time-budget=15000", "--dump-dom", path.resolve().as_uri()]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)
    m = re.search(r'data-pk-probe="([^"]*)"', proc.stdout)
    assert m, f"page did not finish rendering (rc {proc.returncode}); stderr tail:\n{proc.stderr[-3000:]}"
    console_errors = [ln for ln in proc.stderr.splitlines()
                      if "CONSOLE" in ln and ("Uncaught" in ln or "Error" in ln)]
    return json.loads(html.unescape(m.group(1))), "\n".join(console_errors)


def test_umap_html_renders_with_hover_thumbnail(tmp_path):
    a = tile_adata()
    fig = pk.pl.umap(a, color="leiden", slide=FakeSlide(), thumbnails="hover", max_thumbnails=a.n_obs,
                     thumb_px=32)
    out = write_html(fig, tmp_path / "umap.html", post_script=probe_js(0, 0))
    assert not re.search(r"<script[^>]*\bsrc=", out.read_text())  # plotly.js inlined: nothing to fetch
    probe, console = render(out, tmp_path)
    assert probe["errors"] == [] and console == "", (probe["errors"], console)
    assert probe["svg"] >= 1
    assert probe["traces"] == 3                     # one per leiden category
    assert probe["points"] == a.n_obs
    assert probe["hoverLabel"] == 1
    assert probe["hoverThumb"] == "block"           # hovering a point shows its thumbnail
    assert probe["hoverSrc"] == "data:image/png;base64,"


def test_slide_html_renders(tmp_path):
    a = tile_adata()
    fig = pk.pl.slide(a, "score", slide=FakeSlide(), thumbnail_size=600, highlight=[1, 2])
    ti = next(i for i, t in enumerate(fig.data) if t.name == "tiles")
    out = write_html(fig, tmp_path / "slide.html", post_script=probe_js(ti, 0))
    probe, console = render(out, tmp_path)
    assert probe["errors"] == [] and console == "", (probe["errors"], console)
    assert probe["svg"] >= 1
    assert probe["points"] == a.n_obs               # the hover/selection layer has every tile
    assert probe["images"] >= 1                     # the slide thumbnail (go.Image) is drawn
    assert probe["hoverThumb"] == "none"            # tiles carry no thumbnail: nothing pops up
