"""Sphinx configuration of pathkit's documentation (build: python tools/docs.py; see README)."""
from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import pathkit

project = "pathkit"
author = "pathkit developers"
release = version = pathkit.__version__
copyright = "pathkit developers"

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]
root_doc = "index"
exclude_patterns = ["_build", "api_contract.md", "**/.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# notebooks are executed beforehand with the offline CI parameters (tools/notebooks/run.py) into _generated/
nb_execution_mode = "off"
nb_merge_streams = True
# widgets need a live kernel: the static pages show their text form, and no widget JavaScript from a CDN
nb_ipywidgets_js = {}
nb_mime_priority_overrides = [("html", "application/vnd.jupyter.widget-view+json", None),
                              ("html", "application/vnd.jupyter.widget-state+json", None)]
myst_enable_extensions = ["colon_fence", "dollarmath"]
myst_heading_anchors = 3

# plotly.js is served from this site (offline-safe), not a CDN
html_static_path = ["_static"]
html_js_files = ["plotly.min.js", "pathkit.js"]
html_css_files = ["pathkit.css"]
html_theme = "pydata_sphinx_theme"
html_title = f"pathkit {version}"
html_theme_options = {"navigation_with_keys": False, "show_toc_level": 2,
                      "footer_start": ["copyright"], "footer_end": ["sphinx-version"]}
html_show_sourcelink = False

autosummary_generate = False   # the stubs are written below, before Sphinx reads any source
autodoc_default_options = {"members": False}
autodoc_typehints = "none"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_rtype = False
napoleon_custom_sections = [("Writes", "returns_style")]
suppress_warnings = ["myst.header"]

# ---------------------------------------------------------------------------------------------- API pages
API_MODULES = {
    "pathkit": "Top level: slides, linking, the model list",
    "pathkit.pp": "Preprocessing: tissue and tiles",
    "pathkit.tl": "Tools: embeddings, cohorts, ABMIL, survival, zero-shot, UMAP",
    "pathkit.pl": "Plots",
    "pathkit.io": "Reading and writing: bags, cohorts, linking, manifests",
    "pathkit.datasets": "Example data",
    "pathkit.models": "Models: the registry and the encoders",
    "pathkit.widgets": "Interactive widgets",
    "pathkit.engines": "CPU inference engines for tile encoders (OpenVINO, ONNX Runtime)",
}


def _public(modname: str) -> list[str]:
    mod = importlib.import_module(modname)
    names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
    out = []
    for n in names:
        obj = getattr(mod, n, None)
        if n == "registry" or inspect.ismodule(obj) or obj is None:
            continue
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and getattr(obj, "__module__", "").startswith(
                "pathkit"):
            out.append(n)
    return sorted(set(out))


def _write_api_pages() -> None:
    api = HERE / "api"
    api.mkdir(exist_ok=True)
    index = ["# API reference", "", "Generated from the numpydoc docstrings of the public functions and classes.",
             "", "```{toctree}", ":maxdepth: 1", ""]
    for modname, title in API_MODULES.items():
        short = modname.replace("pathkit", "pk")
        index.append(modname)
        lines = [f"{short}: {title}", "=" * (len(short) + len(title) + 2), "",
                 f".. currentmodule:: {modname}", "", ".. autosummary::", "   :toctree: generated", ""]
        names = _public(modname)
        lines += [f"   {n}" for n in names]
        _write(api / f"{modname}.rst", "\n".join(lines) + "\n")
        mod = importlib.import_module(modname)
        for n in names:
            kind = "autoclass" if inspect.isclass(getattr(mod, n)) else "autofunction"
            title = f"{short}.{n}"
            opts = "\n   :members:\n   :show-inheritance:" if kind == "autoclass" else ""
            _write(api / "generated" / f"{modname}.{n}.rst",
                   f"{title}\n{'=' * len(title)}\n\n.. currentmodule:: {modname}\n\n.. {kind}:: {n}{opts}\n")
    index += ["```", ""]
    _write(api / "index.md", "\n".join(index))


def _write(path: Path, text: str) -> None:
    """Write only when changed (Sphinx re-reads changed files only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _copy_plotly_js() -> None:
    import plotly

    src = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    dst = HERE / "_static" / "plotly.min.js"
    dst.parent.mkdir(exist_ok=True)
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        dst.write_bytes(src.read_bytes())


_write_api_pages()
_copy_plotly_js()


def _write_data_page() -> None:
    """The registry of example data as a table (name, size, licence, source, citation)."""
    reg = pathkit.datasets.get_registry()
    rows = ["# Example data", "",
            ("Every file `pk.datasets.fetch(name)` knows: upstream (pinned to a commit or a stable id), sha256 "
             "checked on download, licence and citation. `PATHKIT_DATA_DIR` pointing at a folder holding the "
             "files at these names serves them offline."), "",
            "| name | size | licence | source | citation |", "|---|---|---|---|---|"]
    for r in reg.itertuples():
        src = r.url or r.source
        link = f"[{r.source or 'download'}]({src})" if src.startswith("http") else src
        cells = [f"`{r.name}`", f"{r.size / 1e6:.2f} MB", r.license, link, r.citation]
        rows.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    _write(HERE / "_generated" / "datasets.md", "\n".join(rows) + "\n")


_write_data_page()


def _viewcode_backlinks(app, exc) -> None:
    """An object exported by two modules (``pk.link`` and ``pk.io.link``) has two API pages; viewcode keeps one
    anchor prefix per source module (the first module seen) for all its objects, so six "[docs]" links of the
    source pages pointed at anchors their page does not have. Each API page is named for its object
    (``api/generated/<module>.<name>``) and holds that id: point every back-link at it."""
    import re

    if exc is not None or app.builder.format != "html":
        return
    link = re.compile(r'(href="[^"#]*api/generated/)([^"#/]+)\.html#[^"]*"')
    for page in (Path(app.outdir) / "_modules").rglob("*.html"):
        text = page.read_text(encoding="utf-8")
        fixed = link.sub(lambda m: f'{m.group(1)}{m.group(2)}.html#{m.group(2)}"', text)
        if fixed != text:
            page.write_text(fixed, encoding="utf-8")


def setup(app):
    app.connect("build-finished", _viewcode_backlinks)
