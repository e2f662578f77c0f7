"""Survival columns normalised to one convention: ``event`` (1 = death observed) and a time column
whose unit is in its name (``time_days``, ``time_months``).

Recognised inputs (the original columns are kept next to the normalised ones):

=============================  ==================================================
``censorship`` (1 = censored)  ``event`` = 1 - censorship (SurvPath, CLAM style)
``censorship_<end>``           ``event_<end>`` (e.g. ``censorship_dss``)
``OS`` / ``OS.time`` (days)    ``event``, ``time_days`` (TCGA-CDR)
``DSS``/``DFI``/``PFI`` + time ``event_dss`` ..., ``time_days_dss`` ...
``survival_months``            ``time_months`` (SurvPath)
``survival_months_<end>``      ``time_months_<end>``
``vital_status`` only          not converted (it carries no time): use OS/OS.time
=============================  ==================================================
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import TableError

_CDR_ENDPOINTS = {"OS": "", "DSS": "_dss", "DFI": "_dfi", "PFI": "_pfi"}


def _as_binary(df: pd.DataFrame, col: str, what: str) -> pd.Series:
    v = pd.to_numeric(df[col], errors="coerce")
    bad = df[col].notna() & ~v.isin([0, 1])
    if bad.any():
        ex = df.loc[bad, col].unique()[:5].tolist()
        raise TableError(f"column {col!r} ({what}) must hold 0/1 (or be empty); found {ex}")
    return v.astype("Float64").astype(float)


def _as_time(df: pd.DataFrame, col: str) -> pd.Series:
    v = pd.to_numeric(df[col], errors="coerce")
    bad = df[col].notna() & v.isna()
    if bad.any():
        ex = df.loc[bad, col].unique()[:5].tolist()
        raise TableError(f"survival time column {col!r} holds non-numeric values {ex}")
    if (v < 0).any():
        raise TableError(f"survival time column {col!r} has {int((v < 0).sum())} negative value(s)")
    return v.astype(float)


def normalise_survival(df: pd.DataFrame, *, overwrite: bool = False) -> tuple[pd.DataFrame, dict]:
    """Add ``event`` / ``time_<unit>`` columns derived from the survival columns ``df`` holds.

    Parameters
    ----------
    df
        A clinical or slide table.
    overwrite
        Replace an existing ``event`` / ``time_*`` column; by default an existing normalised column is kept
        and a source that would produce it again is checked against it (TableError when they differ).

    Returns
    -------
    (DataFrame, dict)
        A copy with the new columns, and ``{new_column: {"source": ..., "unit": ..., "rule": ...}}``
        (what :func:`pathkit.link` stores in ``uns["survival"]``).
    """
    out = df.copy()
    info: dict = {}

    def put(name, values, source, unit, rule):
        if name in out.columns and not overwrite:
            old = pd.to_numeric(out[name], errors="coerce").astype(float)
            both = old.notna() & values.notna()
            diff = both & ~np.isclose(old.where(both, 0), values.where(both, 0))
            if diff.any():
                raise TableError(f"column {name!r} already exists and disagrees with {rule} from {source!r} "
                                 f"in {int(diff.sum())} row(s); rename one or pass overwrite=True")
            return
        out[name] = values
        info[name] = {"source": source, "unit": unit, "rule": rule}

    for col in df.columns:
        c = str(col)
        if c == "censorship" or c.startswith("censorship_"):
            suffix = c[len("censorship"):]
            put(f"event{suffix}", 1.0 - _as_binary(df, c, "1 = censored"), c, "1 = event observed",
                "event = 1 - censorship")
        elif c == "survival_months" or c.startswith("survival_months_"):
            suffix = c[len("survival_months"):]
            put(f"time_months{suffix}", _as_time(df, c), c, "months", "copied")
        elif c == "survival_days" or c.startswith("survival_days_"):
            suffix = c[len("survival_days"):]
            put(f"time_days{suffix}", _as_time(df, c), c, "days", "copied")
    for ep, suffix in _CDR_ENDPOINTS.items():
        tcol = f"{ep}.time"
        if ep in df.columns and tcol in df.columns:
            put(f"event{suffix}", _as_binary(df, ep, "1 = event"), ep, "1 = event observed", "copied (TCGA-CDR)")
            put(f"time_days{suffix}", _as_time(df, tcol), tcol, "days", "copied (TCGA-CDR)")
    return out, info
