"""Both widgets in a real JupyterLab, driven by a real (headless) Chromium as a user would: click a tile,
drag boxes on the slide, drag the survival cut-off, change a dropdown; the kernel's state must follow. Then
the saved notebook is reopened without its kernel and the static copies of the widgets must show.

Needs JupyterLab + selenium (the dev extra) and Debian's ``chromium`` + ``chromium-driver`` (``.ci/run``
installs them). In CI (``CI=true``) a missing browser or driver fails the test instead of skipping it.
Screenshots (1280 x 800) go to ``test-artifacts/browser/`` (git-ignored), to be looked at.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver")
                                         else None)


def _require():
    missing = [n for n, ok in (("chromium", CHROMIUM), ("chromium-driver", DRIVER)) if not ok]
    for mod in ("selenium", "jupyterlab"):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        msg = (f"real-browser test needs {missing} (apt-get install -y chromium chromium-driver; "
               "pip install -e '.[dev]')")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg)
        pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Lab:
    """A JupyterLab server on 127.0.0.1 and a headless Chromium on it."""

    def __init__(self, root: Path):
        self.root, self.port, self.token = root, _free_port(), "pk-test-token"
        self.runtime = root / ".runtime"
        news = root / ".settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
        news.parent.mkdir(parents=True, exist_ok=True)
        news.write_text('{"fetchNews": "false"}')  # no "get notified about news?" toast over the widgets
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   JUPYTER_RUNTIME_DIR=str(self.runtime), JUPYTERLAB_SETTINGS_DIR=str(root / ".settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(root / ".workspaces"), HF_HUB_OFFLINE="1")
        self.log = open(root / "lab.log", "w")  # noqa: SIM115 - open while the server runs
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={self.port}", f"--IdentityProvider.token={self.token}",
             f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
             "--LabApp.news_url=", "--ServerApp.disable_check_xsrf=True", "--allow-root"],
            cwd=root, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"
        for _ in range(120):
            try:
                self.api("GET", "/api/status")
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"jupyter lab exited: {(root / 'lab.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        else:
            raise RuntimeError("jupyter lab did not start in 60 s")
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--window-size=1280,800", "--force-device-scale-factor=1"):
            opts.add_argument(a)
        self.driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
        # the page itself is 1280 x 800 (a headless window's size includes its frame)
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                    {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False})

    def api(self, method: str, path: str, body=None):
        req = urllib.request.Request(f"{self.url}{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"Authorization": f"token {self.token}",
                                              "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def kernel_eval(self, expr: str, timeout: float = 30):
        """Evaluate ``expr`` in the notebook's own kernel (a second client on its connection file)."""
        from jupyter_client import BlockingKernelClient

        (sess,) = self.api("GET", "/api/sessions")
        kid = sess["kernel"]["id"]
        if getattr(self, "_kid", None) != kid:
            if getattr(self, "_kc", None) is not None:
                self._kc.stop_channels()
            self._kc = BlockingKernelClient(connection_file=str(self.runtime / f"kernel-{kid}.json"))
            self._kc.load_connection_file()
            self._kc.start_channels()
            self._kid = kid
        kc = self._kc
        if True:
            msg_id = kc.execute(f"import json as _j; print('@@' + _j.dumps({expr}))", store_history=False)
            end = time.time() + timeout
            while time.time() < end:
                m = kc.get_iopub_msg(timeout=timeout)
                if m["parent_header"].get("msg_id") != msg_id:
                    continue
                if m["msg_type"] == "stream" and "@@" in m["content"]["text"]:
                    return json.loads(m["content"]["text"].split("@@", 1)[1])
                if m["msg_type"] == "error":
                    raise RuntimeError("\n".join(m["content"]["traceback"]))
            raise TimeoutError(expr)

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def wait(self, cond, timeout=60, what="condition"):
        end = time.time() + timeout
        last = None
        while time.time() < end:
            try:
                last = cond()
                if last:
                    return last
            except Exception as e:  # noqa: BLE001 - the page is still changing
                last = e
            time.sleep(0.25)
        self.shot("timeout")
        raise TimeoutError(f"{what} not met in {timeout} s (last: {last!r})")

    def shot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        p = ARTIFACTS / f"{name}.png"
        self.driver.save_screenshot(str(p))
        return p

    def close(self):
        try:
            if getattr(self, "_kc", None) is not None:
                self._kc.stop_channels()
            self.driver.quit()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.log.close()


# JS helpers: the plotly graph divs of a cell's outputs, and a point's position on the page.
PLOTS_OF_CELL = """
const cell = document.querySelectorAll('.jp-Notebook .jp-Cell')[arguments[0]];
return Array.from(cell.querySelectorAll('.js-plotly-plot'));
"""
POINT_XY = """
const gd = arguments[0], ti = arguments[1], pi = arguments[2];
const fl = gd._fullLayout, tr = gd._fullData[ti];
const xa = fl[tr.xaxis.replace('x', 'xaxis')], ya = fl[tr.yaxis.replace('y', 'yaxis')];
const r = gd.getBoundingClientRect();
return [r.left + xa._offset + xa.l2p(tr.x[pi]), r.top + ya._offset + ya.l2p(tr.y[pi])];
"""
FRAC_XY = """
const gd = arguments[0], fx = arguments[1], fy = arguments[2];
const fl = gd._fullLayout, r = gd.getBoundingClientRect(), wh = gd.layout.meta.thumbnail_size;
return [r.left + fl.xaxis._offset + fl.xaxis.l2p(fx * wh[0]), r.top + fl.yaxis._offset + fl.yaxis.l2p(fy * wh[1])];
"""
DATA_AT = """
const gd = arguments[0], px = arguments[1], py = arguments[2];
const fl = gd._fullLayout, r = gd.getBoundingClientRect();
return [fl.xaxis.p2l(px - r.left - fl.xaxis._offset), fl.yaxis.p2l(py - r.top - fl.yaxis._offset)];
"""


def _mouse(driver):
    from selenium.webdriver.common.actions.action_builder import ActionBuilder
    from selenium.webdriver.common.actions.mouse_button import MouseButton

    return ActionBuilder(driver, duration=50), MouseButton


def click_at(driver, x, y):
    ab, _ = _mouse(driver)
    ab.pointer_action.move_to_location(int(x), int(y)).pause(0.1).click()
    ab.perform()


def drag(driver, x0, y0, x1, y1):
    ab, button = _mouse(driver)
    p = ab.pointer_action
    p.move_to_location(int(x0), int(y0)).pointer_down(button.LEFT)
    for k in range(1, 9):
        p.move_to_location(int(x0 + (x1 - x0) * k / 8), int(y0 + (y1 - y0) * k / 8)).pause(0.03)
    p.pointer_up(button.LEFT)
    ab.perform()


# cell 5: pathkit's progress bars (issue 29: tqdm.auto's widget bars reopened as "model not found")
PROGRESS_CELL = ("from pathkit._progress import progress_bar\nimport time\n"
                 "for _ in progress_bar(range(30), desc='steps', unit='step'):\n    time.sleep(0.02)")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    _require()
    from _widget_notebook import write_notebook

    root = tmp_path_factory.mktemp("lab")
    write_notebook(root / "widgets.ipynb", root, extra_cells=[PROGRESS_CELL])
    lab = Lab(root)
    try:
        yield lab
    finally:
        lab.close()


def _visible_plots(lab, cell):
    return [p for p in lab.js(PLOTS_OF_CELL, cell) if p.is_displayed()]


@pytest.mark.timeout(300)
def test_widgets_in_jupyterlab_reach_the_kernel(lab):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    d = lab.driver
    d.get(f"{lab.url}/lab/tree/widgets.ipynb?reset&token={lab.token}")
    lab.wait(lambda: lab.js("return !!(window.jupyterapp && document.querySelector('.jp-Notebook'))"),
             what="JupyterLab and the notebook")
    lab.wait(lambda: lab.js("return window.jupyterapp.shell.currentWidget?.sessionContext?.session?.kernel"
                            "?.status === 'idle'"), what="kernel idle")
    lab.js("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    # the live views: SlideExplorer (cell 3) has two figures, SurvivalExplorer (cell 4) one
    lab.wait(lambda: len(_visible_plots(lab, 3)) == 2 and len(_visible_plots(lab, 4)) == 1, timeout=120,
             what="both widgets drawn")
    lab.wait(lambda: lab.kernel_eval("sv.covariate") == "risk", what="kernel reachable")
    bar_cell = d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")[5]
    bar_text = lambda: lab.js("return arguments[0].textContent", bar_cell)  # textContent: also off-screen
    lab.wait(lambda: "steps: 100%" in bar_text() and "30/30" in bar_text(), timeout=60, what="progress bar finished")
    errors = [e.text for e in d.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type="
                                                               "'application/vnd.jupyter.stderr']")]
    assert not any("JSON compliant" in e or "Error" in e for e in errors), errors
    # the static copies are hidden while the live views are there; no broken images before first use
    assert len(lab.js(PLOTS_OF_CELL, 3)) == 4 and len(lab.js(PLOTS_OF_CELL, 4)) == 2
    broken = lab.js("return Array.from(document.querySelectorAll('.jp-Notebook img'))"
                    ".filter(i => i.offsetParent !== null && !(i.complete && i.naturalWidth > 0)).length")
    assert broken == 0

    # layout: the explorer fits a 1280-px window (nothing off to the right of the notebook panel)
    sx_cell = d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")[3]
    d.execute_script("arguments[0].scrollIntoView()", sx_cell)
    panel_right = lab.js("return document.querySelector('.jp-NotebookPanel').getBoundingClientRect().right")
    widest = lab.js("return Math.max(...Array.from(arguments[0].querySelectorAll('.widget-box, .js-plotly-plot'))"
                    ".map(e => e.getBoundingClientRect().right))", sx_cell)
    assert widest <= panel_right + 1, (widest, panel_right)
    lab.shot("slide_explorer")

    slide_gd = _visible_plots(lab, 3)[0]
    tiles_ti = lab.js("return arguments[0]._fullData.findIndex(t => t.name === 'tiles')", slide_gd)
    # 1. click a tile
    x, y = lab.js(POINT_XY, slide_gd, tiles_ti, 5)
    click_at(d, x, y)
    lab.wait(lambda: lab.kernel_eval("sx.current_tile") == 5, what="tile click reached the kernel")
    lab.wait(lambda: lab.js("return arguments[0].querySelector('img') && arguments[0].querySelector('img')"
                            ".naturalWidth > 0", sx_cell), what="tile image shown")
    # 2. drag three boxes on the slide (fractions of the slide; the third starts inside the second): each must
    # reach the kernel with exactly the tiles whose centres are inside
    boxes = [(0.1, 0.1, 0.4, 0.5), (0.5, 0.3, 0.9, 0.9), (0.6, 0.4, 0.8, 0.6)]
    for k, (a0, b0, a1, b1) in enumerate(boxes):
        p0, p1 = lab.js(FRAC_XY, slide_gd, a0, b0), lab.js(FRAC_XY, slide_gd, a1, b1)
        (dx0, dy0), (dx1, dy1) = lab.js(DATA_AT, slide_gd, *p0), lab.js(DATA_AT, slide_gd, *p1)
        want = lab.kernel_eval(
            f"[int(i) for i in __import__('numpy').flatnonzero((sx._tile_centres()[0] >= {min(dx0, dx1)}) & "
            f"(sx._tile_centres()[0] <= {max(dx0, dx1)}) & (sx._tile_centres()[1] >= {min(dy0, dy1)}) & "
            f"(sx._tile_centres()[1] <= {max(dy0, dy1)}))]")
        assert want, f"box {k} holds no tile centre: pick another box"
        drag(d, *p0, *p1)
        lab.wait(lambda want=want: lab.kernel_eval("[int(i) for i in sx.selected]") == want, timeout=20,
                 what=f"box {k} selection reached the kernel")
    lab.shot("slide_explorer_selected")
    # the copy the notebook saves follows the selection (issue 29: it froze at "0 selected" after the first
    # box, plotly.js's drawn box in the layout made the refresh raise, and the error was swallowed)
    static_text = ("return window.jupyterapp.shell.currentWidget.content.model.cells.get(3).outputs.toJSON()"
                   ".map(o => (o.data || {})['text/plain'] || '').join('\\n')")
    lab.wait(lambda: f"{len(want)} selected" in lab.js(static_text), timeout=20, what="saved copy updated")
    assert "callback failed" not in sx_cell.text
    # 3. change a dropdown (the colour key)
    Select(sx_cell.find_element(By.CSS_SELECTOR, "select")).select_by_visible_text("score")
    lab.wait(lambda: lab.kernel_eval("sx.color") == "score", what="dropdown change reached the kernel")
    assert lab.kernel_eval("len(sx.selected)") == len(want)               # recolouring keeps it

    # 4. drag the survival cut-off
    sv_cell = d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")[4]
    d.execute_script("arguments[0].scrollIntoView()", sv_cell)
    before = lab.kernel_eval("[sv.cutoff, sv.exploratory]")
    handle = sv_cell.find_element(By.CSS_SELECTOR, ".widget-slider .noUi-handle")
    hr = handle.rect
    drag(d, hr["x"] + hr["width"] / 2, hr["y"] + hr["height"] / 2, hr["x"] + hr["width"] / 2 + 90,
         hr["y"] + hr["height"] / 2)
    lab.wait(lambda: lab.kernel_eval("sv.exploratory"), timeout=20, what="cut-off drag reached the kernel")
    after = lab.kernel_eval("[sv.cutoff, sv.exploratory]")
    assert before[1] is False and after[0] > before[0]
    assert "EXPLORATORY" in sv_cell.text
    lab.shot("survival_explorer")
    # 5. the covariate dropdown lists no outcome column
    opts = [o.text for o in Select(sv_cell.find_element(By.CSS_SELECTOR, "select")).options]
    assert opts == ["risk", "age"], opts


@pytest.mark.timeout(200)
def test_reopened_notebook_shows_static_copies(lab):
    from selenium.webdriver.common.by import By

    d = lab.driver
    if not lab.js("return !!document.querySelector('.jp-Notebook')"):
        pytest.skip("the JupyterLab session of the previous test did not start")
    lab.js("window.jupyterapp.commands.execute('docmanager:save')")
    lab.wait(lambda: not lab.js("return window.jupyterapp.shell.currentWidget.context.model.dirty"),
             what="notebook saved")
    saved = json.loads((lab.root / "widgets.ipynb").read_text())
    sv_static = [o for o in saved["cells"][4]["outputs"] if "application/vnd.plotly.v1+json" in o.get("data", {})]
    assert "exploratory" in sv_static[-1]["data"]["application/vnd.plotly.v1+json"]["layout"]["title"]["text"]
    for s in lab.api("GET", "/api/sessions"):                  # no kernel: the widget models are gone
        lab.api("DELETE", f"/api/sessions/{s['id']}")
    d.get(f"{lab.url}/lab/tree/widgets.ipynb?reset&token={lab.token}")
    lab.wait(lambda: lab.js("return document.querySelectorAll('.jp-Notebook .jp-Cell').length") >= 5,
             what="notebook reopened")
    # the static copies show: 2 for the slide explorer, 1 for the survival explorer (with the moved cut-off)
    lab.wait(lambda: len(_visible_plots(lab, 3)) == 2 and len(_visible_plots(lab, 4)) == 1, timeout=60,
             what="static copies drawn")
    sv_cell = d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")[4]
    assert "exploratory" in sv_cell.text
    # the progress bar reopens as its last line of text, not as a widget without its model
    bar_cell = d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")[5]
    d.execute_script("arguments[0].scrollIntoView()", bar_cell)
    lab.wait(lambda: "steps: 100%" in lab.js("return arguments[0].textContent", bar_cell), timeout=20,
             what="progress bar's saved text shown")
    assert "model not found" not in lab.js("return arguments[0].textContent", bar_cell)
    lab.shot("reopened_progress_bar")
    # the widgets' own views have no state in the saved notebook: their "model not found" node is hidden by the
    # static copy that stands in for them
    for k in (3, 4):
        cell = d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")[k]
        d.execute_script("arguments[0].scrollIntoView()", cell)
        outs = cell.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
        views = [e for e in outs if any(w in lab.js("return arguments[0].textContent", e)
                                        for w in ("model not found", "Loading widget"))]
        assert views  # the saved views are there, only hidden
        shown = [e.text for e in views if e.is_displayed()]
        assert not [t for t in shown if "model not found" in t or "Loading widget" in t], (k, shown)
    d.execute_script("arguments[0].scrollIntoView()", d.find_elements(By.CSS_SELECTOR, ".jp-Notebook .jp-Cell")[3])
    lab.shot("reopened_slide_explorer")
    d.execute_script("arguments[0].scrollIntoView()", sv_cell)
    lab.shot("reopened_survival_explorer")
