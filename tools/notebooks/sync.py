"""Write each notebook's .ipynb from its jupytext percent script (the reviewed source), or check the pairs.

    python tools/notebooks/sync.py           # notebooks/*.py and tutorials/*.py -> .ipynb (no outputs)
    python tools/notebooks/sync.py --check   # exit 1 and name the notebooks whose .ipynb is out of date

Cell ids are stable (``cell-00``, ``cell-01``, ...), so re-writing an unchanged notebook changes no byte.
"""
from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("notebooks", "tutorials")
KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def sources() -> list[Path]:
    return sorted(p for d in FOLDERS for p in (REPO / d).glob("*.py"))


def build(py: Path) -> nbformat.NotebookNode:
    """The notebook a percent script describes: cells, tags, stable ids, no outputs."""
    nb = jupytext.read(py, fmt="py:percent")
    nb.metadata = {"kernelspec": dict(KERNELSPEC), "language_info": {"name": "python"}}
    for i, c in enumerate(nb.cells):
        c.id = f"cell-{i:02d}"
        tags = c.metadata.get("tags")
        c.metadata = {"tags": tags} if tags else {}
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbformat.validate(nb)
    return nb


def text(nb) -> str:
    return nbformat.writes(nb) + "\n"


def out_of_sync() -> list[str]:
    bad = []
    for py in sources():
        ipynb = py.with_suffix(".ipynb")
        if not ipynb.is_file() or ipynb.read_text(encoding="utf-8") != text(build(py)):
            bad.append(str(ipynb.relative_to(REPO)))
    return bad


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--check" in argv:
        bad = out_of_sync()
        for b in bad:
            print(f"{b} is out of sync with its .py: run python tools/notebooks/sync.py")
        return 1 if bad else 0
    for py in sources():
        py.with_suffix(".ipynb").write_text(text(build(py)), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
