"""Derived registry files made from their upstream source (the CDR table from its xlsx)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .._io import atomic_write

CDR_SHEET = "TCGA-CDR"


def _convert(name: str, src: Path, target: Path) -> None:
    """Make a derived registry file from its upstream source (only TCGA-CDR.csv from the CDR xlsx)."""
    if name != "tcga/TCGA-CDR.csv":
        raise KeyError(f"no conversion is known for {name}")
    try:
        df = pd.read_excel(src, sheet_name=CDR_SHEET)
    except ImportError as exc:
        raise ImportError(f"reading {src} needs openpyxl: pip install openpyxl ({exc})") from exc
    first = df.columns[0]
    if str(first).startswith("Unnamed"):  # the sheet's unnamed row-number column
        df = df.drop(columns=first)
    with atomic_write(target) as tmp:
        df.to_csv(tmp, index=False)
