"""Execute notebooks with the offline CI parameters (papermill injects them after the `parameters` cell).

    python tools/notebooks/run.py --out docs/_generated                  # every notebook and tutorial
    python tools/notebooks/run.py --out DIR notebooks/01_quickstart.ipynb --cwd /tmp/empty

Each notebook runs with its working directory set to ``--cwd`` (default: a fresh temporary folder), so it
reads data only through ``pk.datasets`` (``$PATHKIT_DATA_DIR``) and writes only there. The executed copy goes
to ``<out>/<folder>/<name>.ipynb``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PARAMS = Path(__file__).resolve().parent / "ci_parameters.json"


def ci_parameters(path) -> dict:
    """The CI parameters of a notebook (``notebooks/01_quickstart.ipynb`` or any path ending so)."""
    table = json.loads(PARAMS.read_text())
    p = Path(path)
    return dict(table.get(f"{p.parent.name}/{p.name}", {}))


def execute(path, out, *, cwd=None, parameters=None, timeout: int = 900) -> float:
    """Run one notebook with papermill; write the executed copy to `out`; return the seconds it took."""
    import papermill as pm

    params = ci_parameters(path) if parameters is None else parameters
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pathkit-nb-") as tmp:
        pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(cwd or tmp), kernel_name="python3",
                            progress_bar=False, execution_timeout=timeout, report_mode=False)
    return time.perf_counter() - t0


#: Machine-specific path prefixes that executed outputs show (warnings name their file): the kernel's cell
#: files, the kernel's temporary working folder, installed packages, this checkout.
_PATHS = [(re.compile(r"(?:/[^\s:'\"]*)?/ipykernel_\d+/\d+\.py"), "<cell>"),
          (re.compile(r"/[^\s:'\"]*/pathkit-nb-[^/\s]+/"), ""),
          (re.compile(r"/[^\s:'\"]*/(?:site|dist)-packages/"), ""),
          (re.compile(re.escape(str(REPO)) + "/"), "")]
_WIDGET = "application/vnd.jupyter.widget-view+json"
_CAPTION = re.compile(r'<p class="pk-static-caption">.*?</p>', re.DOTALL)   # pathkit.widgets._static.CAPTION_CLASS
VIEWLESS_CLASS = "pk-viewless"   # pathkit.widgets._static.VIEWLESS_CLASS


def clean_text(text: str) -> str:
    """Output text without the build machine's paths (``/tmp/ipykernel_123/456.py:6: UserWarning`` ->
    ``<cell>:6: UserWarning``; installed packages and this checkout as relative paths)."""
    for pat, repl in _PATHS:
        text = pat.sub(repl, text)
    return text


def for_docs(path) -> bool:
    """Make an executed notebook renderable as a static, offline page: each plotly figure (mime
    ``application/vnd.plotly.v1+json``) gets a ``text/html`` form that uses the site's plotly.js (no CDN, no
    MathJax); live widget views go (a static page has no widget models: their ``text/plain`` would show a
    raw ``VBox(children=...`` repr or a progress bar frozen at 0 %; pathkit's widgets leave static copies of
    their figures right after the view); stream and text outputs lose the build machine's paths. Returns
    whether the file changed."""
    import nbformat
    import plotly.io as pio

    path = Path(path)
    nb = nbformat.read(path, as_version=4)
    # the widgets' saved state (tqdm bars, figures) only feeds live views, which a static page has none of
    changed = nb.metadata.pop("widgets", None) is not None
    for cell in nb.cells:
        if cell.get("cell_type") != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if VIEWLESS_CLASS in (data.get("text/html") or "") and not data.get("text/plain"):
                changed = True
                continue               # the rule that hides widget views saved without state: no views here
            if _WIDGET in data:
                changed = True
                if not set(data) - {_WIDGET, "text/plain"}:
                    continue           # a view and its repr only (a widget box, a tqdm bar): nothing to show
                del data[_WIDGET]      # a view with a static form (a figure): keep the static form
            if out.get("output_type") == "stream":
                text = clean_text(out.get("text", ""))
                changed |= text != out.get("text", "")
                out["text"] = text
            for mime in ("text/plain", "text/html"):   # tables show paths too (a cohort's output files)
                if isinstance(data.get(mime), str):
                    text = clean_text(data[mime])
                    changed |= text != data[mime]
                    data[mime] = text
            fig = data.get("application/vnd.plotly.v1+json")
            if fig is not None:
                layout = fig.setdefault("layout", {})
                layout.pop("width", None)  # follow the page's column width
                height = layout.get("height") or 500
                # a widget's static copy says its state in a caption (cut-off, p-value, selection): keep it
                caption = _CAPTION.search(data.get("text/html") or "")
                data["text/html"] = pio.to_html(fig, include_plotlyjs=False, include_mathjax=False,
                                                full_html=False, default_width="100%",
                                                default_height=f"{height}px", validate=False,
                                                config={"responsive": True}) + (caption.group(0) if caption else "")
                del data["application/vnd.plotly.v1+json"]
                changed = True
            kept.append(out)
        cell["outputs"] = kept
    if changed:
        nbformat.write(nb, path)
    return changed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", help="default: notebooks/*.ipynb and tutorials/*.ipynb")
    ap.add_argument("--out", required=True, help="folder for the executed copies (<out>/<folder>/<name>)")
    ap.add_argument("--cwd", default=None, help="working directory of the kernels (default: a temp folder)")
    args = ap.parse_args(argv)
    paths = [Path(p) for p in args.notebooks] or sorted(
        p for d in ("notebooks", "tutorials") for p in (REPO / d).glob("*.ipynb"))
    # the kernel must be this interpreter (the venv with pathkit), whatever `python` is on PATH
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("TQDM_DISABLE", "1")   # progress bars: the build machine's timings, noise on a page
    failed = 0
    for p in paths:
        dest = Path(args.out) / p.resolve().parent.name / p.name
        try:
            secs = execute(p, dest, cwd=args.cwd)
            print(f"{p.parent.name}/{p.name}: {secs:.0f} s", flush=True)
        except Exception as exc:  # noqa: BLE001 - report every notebook, fail at the end
            failed += 1
            print(f"{p.parent.name}/{p.name}: FAILED {type(exc).__name__}: {str(exc)[-2000:]}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
