"""Build the documentation: execute the notebooks with the CI parameters (when their executed copy is missing
or older than the notebook), then ``sphinx-build -W --keep-going``.

    python tools/docs.py              # -> docs/_build/html/index.html
    python tools/docs.py --execute    # re-execute every notebook first

Executed copies live in ``docs/_generated/{notebooks,tutorials}/`` (``tests/test_notebooks.py`` writes them
there too when ``PATHKIT_EXECUTED_DIR=docs/_generated``, so CI executes each notebook once).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools" / "notebooks"))
import run

DOCS = REPO / "docs"
GENERATED = DOCS / "_generated"


def stale(nb: Path) -> bool:
    copy = GENERATED / nb.parent.name / nb.name
    return not copy.is_file() or copy.stat().st_mtime < nb.stat().st_mtime


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--execute", action="store_true", help="re-execute every notebook")
    ap.add_argument("--out", default=str(DOCS / "_build" / "html"))
    args = ap.parse_args(argv)
    notebooks = sorted(p for d in ("notebooks", "tutorials") for p in (REPO / d).glob("*.ipynb"))
    todo = [nb for nb in notebooks if args.execute or stale(nb)]
    if todo:
        rc = run.main(["--out", str(GENERATED), *map(str, todo)])
        if rc:
            return rc
    for copy in sorted(GENERATED.glob("*/*.ipynb")):
        run.for_docs(copy)
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    rc = subprocess.call([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", str(DOCS),
                          args.out], env=env)
    print(f"sphinx-build: {time.perf_counter() - t0:.0f} s, rc={rc} -> {args.out}/index.html")
    return rc


if __name__ == "__main__":
    sys.exit(main())
