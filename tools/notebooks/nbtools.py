import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def build(path, cells):
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    out = []
    for kind, text in cells:
        text = text.strip("\n")
        if kind == "md":
            out.append(new_markdown_cell(text))
        else:
            c = new_code_cell(text)
            if kind == "params":
                c.metadata["tags"] = ["parameters"]
            out.append(c)
    for i, c in enumerate(out):  # stable ids: regenerating an unchanged notebook changes no byte
        c.id = f"cell-{i:02d}"
    nb.cells = out
    nbformat.write(nb, path)


SETUP = '''
import os
from pathlib import Path

import pathkit as pk

# Where the real example data lives (the shared test data in CI); point it at your own files.
DATA = Path(os.environ.get("PATHKIT_TEST_DATA", "../../shared/data"))
OUT = Path(os.environ.get("PATHKIT_OUT", "pathkit_out"))
OUT.mkdir(parents=True, exist_ok=True)
'''
