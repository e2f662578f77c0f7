"""Issue 29: progress bars leave clean static output in a saved notebook (no widget view whose model the
reopened notebook lacks: "Error displaying widget: model not found"), and still move while the cell runs."""
from __future__ import annotations

import re

import pytest

from pathkit._progress import progress_bar

WIDGET = "application/vnd.jupyter.widget-view+json"


def test_terminal_bar_is_tqdm_text_on_stderr(capsys):
    for _ in progress_bar(range(7), desc="steps", unit="step", mininterval=0):
        pass
    err = capsys.readouterr().err
    assert "steps: 100%" in err and "7/7" in err and "step/s" in err


def test_disabled_bar_prints_nothing(capsys, monkeypatch):
    for _ in progress_bar(range(7), desc="tiny", disable=True):
        pass
    # TQDM_DISABLE wins over a caller's disable=False (the documentation build sets it)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    with progress_bar(total=3, desc="forced", disable=False) as bar:
        bar.update(3)
    assert capsys.readouterr().err == ""


NOTEBOOK = [
    "import sys, time\nimport pathkit as pk\nfrom pathkit._progress import progress_bar",
    # a real pathkit bar (the synthetic slide writer)
    "path = pk.datasets.synthetic_slide('syn.svs', width=1024, height=768, progress=True)",
    # nested bars: folds (kept) and epochs (leave=False), with a message on stderr in between
    ("for k in progress_bar(range(3), desc='folds'):\n"
     "    for e in progress_bar(range(40), desc=f'fold {k}', leave=False, unit='epoch'):\n"
     "        time.sleep(0.001)\n"
     "    print(f'fold {k} done', file=sys.stderr)"),
]


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    import nbclient
    import nbformat

    d = tmp_path_factory.mktemp("progress")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in NOTEBOOK]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    # JupyterLab does not save widget state by default: neither does this run
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=False,
                            resources={"metadata": {"path": str(d)}}).execute()
    path = d / "progress.ipynb"
    nbformat.write(nb, str(path))
    return nbformat.read(str(path), as_version=4)


def _texts(cell):
    return [o["data"]["text/plain"] for o in cell.outputs if o.output_type == "display_data"]


def test_saved_notebook_has_no_widget_views(executed):
    for cell in executed.cells:
        for o in cell.outputs:
            assert WIDGET not in o.get("data", {}), (cell.source, o)
    assert "widgets" not in executed.metadata


def test_saved_notebook_shows_the_finished_bars_as_text(executed):
    (writer,) = _texts(executed.cells[1])
    # 1024 x 768 in 256-px tiles: 4 x 3 (the bar stopped at 11/12 before: the writer never resumes the
    # tile generator after the last tile, so a count after the yield was never made)
    assert writer.startswith("writing syn.svs: 100%|█") and "12/12" in writer and "tile/s" in writer
    texts = _texts(executed.cells[2])
    assert texts[0].startswith("folds: 100%") and "3/3" in texts[0]
    assert texts[1:] == ["", "", ""]              # leave=False: each epoch bar is gone once its loop ends
    stderr = "".join(o.get("text", "") for o in executed.cells[2].outputs if o.output_type == "stream")
    assert stderr == "fold 0 done\nfold 1 done\nfold 2 done\n"


def test_pathkit_uses_the_one_helper():
    """No module draws tqdm bars of its own (tqdm.auto is a widget in a kernel)."""
    from pathlib import Path

    import pathkit

    root = Path(pathkit.__file__).parent
    direct = [str(p.relative_to(root)) for p in root.rglob("*.py") if p.name != "_progress.py"
              and re.search(r"^\s*(from tqdm|import tqdm)", p.read_text(encoding="utf-8"), re.MULTILINE)]
    assert direct == []
