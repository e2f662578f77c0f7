"""The package's licence and metadata, as an institution adopting pathkit would check them."""
from __future__ import annotations

from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_licence_is_bsd3_in_the_file_and_the_metadata():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("BSD 3-Clause License") and "Neither the name of the copyright holder" in text
    meta = metadata.metadata("pathkit")
    assert meta.get("License-Expression") == "BSD-3-Clause", dict(meta)
    assert "Intended Audience :: Science/Research" in meta.get_all("Classifier")
    # the weights' own licences are pointed at from the README, where a user starts
    readme = (ROOT / "README.md").read_text()
    assert "BSD-3-Clause" in readme and "docs/models.md" in readme and "own licences" in readme
