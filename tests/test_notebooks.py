"""Every notebook and tutorial runs top to bottom (on ../shared/data, small or random-weight models)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for d in ("notebooks", "tutorials") for p in (REPO / d).glob("*.ipynb"))


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[f"{p.parent.name}/{p.name}" for p in NOTEBOOKS])
def test_notebook_runs(path, shared_data, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), \
        f"{path.name} has committed outputs: strip them"
    monkeypatch.setenv("PATHKIT_TEST_DATA", str(shared_data))
    monkeypatch.setenv("PATHKIT_OUT", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # the kernel must be this interpreter (the venv with pathkit), whatever `python` is on PATH
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()


def test_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert len([n for n in names if n[:2].isdigit()]) >= 7, names
