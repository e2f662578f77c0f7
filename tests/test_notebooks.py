"""Notebooks and tutorials: the .py sources and the .ipynb agree, data comes from pk.datasets, one tagged
parameters cell, and every notebook runs top to bottom with the offline CI parameters (papermill) from an
empty working directory, with only PATHKIT_DATA_DIR pointing at the data."""
from __future__ import annotations

import ast
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "notebooks"))
import run
import sync

NOTEBOOKS = sorted(p for d in ("notebooks", "tutorials") for p in (REPO / d).glob("*.ipynb"))
IDS = [f"{p.parent.name}/{p.name}" for p in NOTEBOOKS]


def test_notebooks_exist_with_sources():
    assert len([p for p in NOTEBOOKS if p.parent.name == "notebooks"]) == 10  # 01-07, 08 spatial, 09 cells, 10 stain
    assert len([p for p in NOTEBOOKS if p.parent.name == "tutorials"]) == 3
    assert sorted(p.with_suffix(".ipynb") for p in sync.sources()) == NOTEBOOKS


def test_pairs_in_sync():
    assert sync.out_of_sync() == [], "run: python tools/notebooks/sync.py"


def test_sync_check_detects_an_edit(tmp_path, monkeypatch):
    # a copy of the repo's pair, one edited .py: --check must name it
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "tutorials").mkdir()
    src = REPO / "notebooks" / "01_quickstart.py"
    shutil.copy(src, tmp_path / "notebooks" / src.name)
    shutil.copy(src.with_suffix(".ipynb"), tmp_path / "notebooks" / src.with_suffix(".ipynb").name)
    monkeypatch.setattr(sync, "REPO", tmp_path)
    assert sync.out_of_sync() == []
    py = tmp_path / "notebooks" / src.name
    py.write_text(py.read_text().replace("tiles.obs.head()", "tiles.obs.head(3)"))
    assert sync.out_of_sync() == ["notebooks/01_quickstart.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_rules(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not any(c.get("outputs") for c in code), f"{path.name} has committed outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: {len(params)} cells tagged 'parameters'"
    # the parameters cell holds assignments of literals only (papermill overrides them)
    tree = ast.parse(params[0].source)
    assert tree.body and all(isinstance(s, ast.Assign) for s in tree.body)
    assigned = {t.id for s in tree.body for t in s.targets}
    assert set(run.ci_parameters(path)) <= assigned, "CI parameters must be names of the parameters cell"
    text = "\n".join(c.source for c in nb.cells)
    assert "shared" not in text.lower(), f"{path.name} mentions shared data: use pk.datasets"
    assert "PATHKIT_TEST_DATA" not in text and "../../" not in text
    assert not re.search(r"print\(\s*[\"']ok[\"']\s*\)", text)


def test_user_defaults_are_real_weights():
    import nbformat

    from pathkit.models import get_spec

    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        values = {t.id: ast.literal_eval(s.value) for s in ast.parse(cell.source).body for t in s.targets}
        for key in ("TILE_MODEL", "MODEL"):
            if key in values:
                spec = get_spec(values[key] + ("" if key == "TILE_MODEL" else "_vision"))
                assert spec.weights and not spec.gated, f"{path.name}: default {key}={values[key]!r}"
                assert values.get("WEIGHTS") is None


@pytest.mark.notebooks
@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_notebook_runs(path, shared_data, tmp_path, monkeypatch):
    monkeypatch.setenv("PATHKIT_DATA_DIR", str(shared_data))
    monkeypatch.setenv("PATHKIT_DATA_MIRROR", "http://127.0.0.1:9/no-downloads-in-tests")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    # the kernel must be this interpreter (the venv with pathkit), whatever `python` is on PATH
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "executed.ipynb"
    run.execute(path, out, cwd=work, timeout=900)
    assert not (REPO / "pathkit_out").exists()
    keep = os.environ.get("PATHKIT_EXECUTED_DIR")  # CI keeps the executed copies for the docs
    if keep:
        dest = Path(keep) / path.parent.name / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(out, dest)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=IDS)
def test_kaplan_meier_titles_do_not_repeat_the_logrank_p(path):
    """pk.pl.kaplan_meier appends the log-rank p to its title: a title that holds one too prints it twice
    (issue 29: tutorial 03's last figure)."""
    import nbformat

    text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
    for call in re.findall(r"pk\.pl\.kaplan_meier\((?:[^()]|\([^()]*\))*\)", text, flags=re.S):
        title = re.search(r"title=(.*)", call, flags=re.S)
        assert not (title and re.search(r"log-?rank|p = ", title.group(1))) or "logrank=False" in call, call
