"""Issue 29: the docs' executed notebooks show clean static output: no live widget views (a raw
``VBox(children=(HBox(...`` repr, tqdm bars frozen at 0 %), no build-machine paths in warnings."""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "notebooks"))
import run

from pathkit.widgets._static import VIEWLESS_BUNDLE


def _executed(tmp_path: Path) -> Path:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook, new_output

    widget = {"model_id": "abc", "version_major": 2, "version_minor": 0}
    warn = ("/tmp/ipykernel_17114/685555519.py:6: UserWarning: model 'vit_tiny_test' has RANDOM weights\n"
            "  bag = pk.datasets.tile_bag(TILE_MODEL)\n"
            f"{REPO}/.venv/lib/python3.11/site-packages/anndata/_core/aligned_df.py:68: ImplicitModificationWarning\n"
            "/tmp/pathkit-nb-x1y2/pathkit_out/s.h5ad written\n")
    cells = [
        new_code_cell("tiles = embed()", outputs=[
            new_output("display_data", data={"application/vnd.jupyter.widget-view+json": widget,
                                             "text/plain": "embed CMU-1:   0%|          | 0/50 [00:00<?, ?tile/s]"}),
            new_output("stream", name="stderr", text=warn)]),
        new_code_cell("table", outputs=[
            new_output("execute_result", execution_count=1,
                       data={"text/html": "<td>/tmp/pathkit-nb-q3uqqdy0/pathkit_out/a.h5ad</td>",
                             "text/plain": "0  /tmp/pathkit-nb-q3uqqdy0/pathkit_out/a.h5ad"})]),
        new_code_cell("sv", outputs=[
            new_output("display_data", data={"application/vnd.jupyter.widget-view+json": widget,
                                             "text/plain": "VBox(children=(HBox(children=(Dropdown("}),
            new_output("display_data", data={"application/vnd.plotly.v1+json": {"data": [], "layout": {}},
                                             "text/html": '<div class="pk-static"><div>cdn figure</div>'
                                                          '<p class="pk-static-caption">SurvivalExplorer: '
                                                          'pre-specified cut-off (median)</p></div>',
                                             "text/plain": "SurvivalExplorer: static copy"}),
            new_output("display_data", data=dict(VIEWLESS_BUNDLE)),
            new_output("execute_result", execution_count=2,
                       data={"application/vnd.jupyter.widget-view+json": widget,
                             "application/vnd.plotly.v1+json": {"data": [], "layout": {}},
                             "text/plain": "SlideExplorer"})]),
    ]
    path = tmp_path / "nb.ipynb"
    state = {"application/vnd.jupyter.widget-state+json": {"state": {"abc": {"value": "50/50"}}}}
    nbformat.write(new_notebook(cells=cells, metadata={"widgets": state}), path)
    return path


def test_for_docs_drops_live_views_and_machine_paths(tmp_path):
    import nbformat

    path = _executed(tmp_path)
    assert run.for_docs(path)
    nb = nbformat.read(path, as_version=4)
    text = nbformat.writes(nb)
    assert "widget-view" not in text and "VBox(children" not in text and "0/50" not in text
    assert "/tmp/" not in text and "ipykernel_" not in text and "site-packages" not in text
    assert str(REPO) not in text and "widget-state" not in text and "widgets" not in nb.metadata
    stream = nb.cells[0].outputs[0]["text"]
    assert stream.startswith("<cell>:6: UserWarning: model 'vit_tiny_test' has RANDOM weights")
    assert "anndata/_core/aligned_df.py:68: ImplicitModificationWarning" in stream
    assert "pathkit_out/s.h5ad written" in stream
    # the widget's static copies stay, as HTML for the page; a view with a figure keeps the figure
    assert nb.cells[1].outputs[0]["data"]["text/html"] == "<td>pathkit_out/a.h5ad</td>"
    outs = nb.cells[2].outputs
    assert len(outs) == 2 and all("text/html" in o["data"] for o in outs)   # the rule for stateless views went
    assert "pk-viewless" not in text
    assert outs[0]["data"]["text/plain"] == "SurvivalExplorer: static copy"
    # the widget's state in words stays under the redrawn figure (the page showed the figure alone)
    page_html = outs[0]["data"]["text/html"]
    assert page_html.endswith('<p class="pk-static-caption">SurvivalExplorer: pre-specified cut-off (median)</p>')
    assert "cdn figure" not in page_html and "plotly-graph-div" in page_html


def test_clean_text_keeps_ordinary_text():
    assert run.clean_text("a/b.py:3: note 0/50 done") == "a/b.py:3: note 0/50 done"


def test_static_copy_html_has_the_widget_state_as_caption():
    import plotly.graph_objects as go

    from pathkit.widgets._static import figure_bundle

    b = figure_bundle(go.Figure(), "SurvivalExplorer: p < 0.05 & low: n=3")
    assert b["text/html"].endswith('<p class="pk-static-caption">SurvivalExplorer: p &lt; 0.05 &amp; low: n=3</p>'
                                   "</div>")
    assert b["text/plain"] == "SurvivalExplorer: p < 0.05 & low: n=3"
    assert run._CAPTION.search(b["text/html"]).group(0).startswith('<p class="pk-static-caption">')
