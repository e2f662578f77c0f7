"""Survival inputs: time / event / extra columns from an AnnData, a linked MuData (its slides) or a DataFrame,
validated with messages that name the column."""
from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ...errors import TableError


# --------------------------------------------------------------------------------------------- inputs
def _obs(data) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    mods = getattr(data, "mod", None)
    if isinstance(mods, dict) or hasattr(mods, "keys"):  # a linked MuData: the slides carry the survival
        if "slides" not in mods:
            raise TypeError(f"MuData without a 'slides' modality (has {list(mods)}); pass the AnnData instead")
        data = mods["slides"]
    obs = getattr(data, "obs", None)
    if isinstance(obs, pd.DataFrame):
        return obs
    raise TypeError(f"data must be an AnnData or a pandas DataFrame, not {type(data).__name__}")


def _column(df: pd.DataFrame, col, role: str) -> pd.Series:
    """A column by name, or values passed directly (array-like of the frame's length)."""
    if isinstance(col, str):
        if col not in df.columns:
            raise TableError(f"{role} column {col!r} not found; available columns: {list(df.columns)}")
        return df[col]
    values = np.asarray(col)
    if values.ndim != 1 or len(values) != len(df):
        raise TableError(f"{role} values must be a column name or a 1-d array of length {len(df)}, "
                         f"got shape {values.shape}")
    return pd.Series(values, index=df.index, name=role)


def _survival_frame(data, time, event, extra: Sequence[tuple[Any, str]] = (), dropna: bool = False,
                    ) -> pd.DataFrame:
    """A clean frame with columns ``time``, ``event`` and the extra columns; validates values.

    Missing values raise :class:`TableError` naming each column and its count, unless ``dropna=True``, in
    which case the rows are dropped and a warning reports how many and why.
    """
    df = _obs(data)
    cols = {"time": _column(df, time, "time"), "event": _column(df, event, "event")}
    names = {"time": time if isinstance(time, str) else "time",
             "event": event if isinstance(event, str) else "event"}
    for col, role in extra:
        key = col if isinstance(col, str) else role
        cols[key] = _column(df, col, role)
        names[key] = key
    out = pd.DataFrame(cols, index=df.index)
    missing = {names[c]: int(n) for c, n in out.isna().sum().items() if n}
    if missing:
        what = ", ".join(f"{c!r}: {n} missing" for c, n in missing.items())
        if not dropna:
            raise TableError(f"missing values in {what} (of {len(out)} rows); fill or drop them, or pass "
                             f"dropna=True to drop those rows")
        keep = out.notna().all(axis=1)
        warnings.warn(f"dropna=True: dropped {int((~keep).sum())} of {len(out)} rows ({what})", stacklevel=3)
        out = out[keep]
    try:
        out["time"] = pd.to_numeric(out["time"]).astype(float)
    except (ValueError, TypeError) as e:
        raise TableError(f"time column {names['time']!r} is not numeric: {e}") from None
    inf = ~np.isfinite(out["time"].to_numpy())
    if inf.any():
        raise TableError(f"time column {names['time']!r} has {int(inf.sum())} infinite value(s); a follow-up time "
                         "must be finite: censor those rows at their last follow-up (event 0) or drop them")
    if (out["time"] < 0).any():
        raise TableError(f"time column {names['time']!r} has {int((out['time'] < 0).sum())} negative values")
    ev = out["event"]
    if ev.dtype == bool:
        ev = ev.astype(int)
    try:
        ev = pd.to_numeric(ev)
    except (ValueError, TypeError):
        raise TableError(f"event column {names['event']!r} must be 0/1 (1 = event observed), got values "
                         f"{sorted(map(str, pd.unique(out['event'])))[:5]}") from None
    bad = ~ev.isin([0, 1])
    if bad.any():
        raise TableError(f"event column {names['event']!r} must be 0/1 (1 = event observed); found "
                         f"{sorted(pd.unique(ev[bad]))[:5]}. For a censorship column use event = 1 - censorship")
    out["event"] = ev.astype(int)
    if len(out) == 0:
        raise TableError("no rows left to analyse")
    out.attrs["names"] = names
    return out
