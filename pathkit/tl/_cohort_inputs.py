"""embed_cohort's inputs and run state: the slide table from any accepted form, and the resume state file
(``cohort_state.json``, written atomically) with the clean-up of what a killed run left behind."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from .._ids import SLIDE_EXTENSIONS, is_slide_file, slide_id_from_path
from .._io import write_text_atomic
from ..errors import TableError

STATE_FILE = "cohort_state.json"


def _slides_table(slides, slide_dir) -> pd.DataFrame:
    """Normalise ``slides`` into a DataFrame with path, slide_id (+ mpp, expected sha256, extra columns)."""
    from ..io import read_table
    from ..io.manifest import validate_manifest

    if isinstance(slides, (str, os.PathLike)):
        p = Path(slides)
        if p.is_dir():
            from ..backends.dicom import dicom_files

            # a sub-folder holding DICOM files is one slide (a DICOM series split over files)
            files = sorted(f for f in p.iterdir() if (is_slide_file(f) and f.is_file())
                           or (f.is_dir() and dicom_files(f)))
            if not files:
                raise TableError(f"{p}: no slide files ({', '.join(SLIDE_EXTENSIONS)}) and no DICOM series "
                                 f"folders in this folder")
            df = pd.DataFrame({"path": [str(f) for f in files]})
        elif p.suffix.lower() in (".csv", ".tsv"):
            df = read_table(p, "slides table")
            if slide_dir is None and "path" not in df.columns:
                slide_dir = None  # reported below
        else:
            df = pd.DataFrame({"path": [str(p)]})
    elif isinstance(slides, pd.DataFrame):
        df = slides.copy()
    else:
        df = pd.DataFrame({"path": [str(s) for s in slides]})
    df = df.reset_index(drop=True)
    if "path" not in df.columns:
        if "file_name" not in df.columns:
            raise TableError(f"slides table needs a 'path' column (or a manifest's 'file_name' with slide_dir=); "
                             f"columns are {list(df.columns)}")
        df = validate_manifest(df)
        if slide_dir is None:
            raise TableError("the slides are a manifest (file_name column): pass slide_dir= (the folder "
                             "`pathkit fetch` downloaded them into)")
        df["path"] = [str(Path(slide_dir) / f) for f in df["file_name"]]
        if "sha256" in df.columns:
            df["expected_sha256"] = df["sha256"]
    missing = df["path"].isna() | (df["path"].astype(str).str.strip() == "")
    if missing.any():
        raise TableError(f"slides table: {int(missing.sum())} row(s) without a path (rows {list(df.index[missing])[:10]})")
    df["path"] = df["path"].map(str)
    if "slide_id" not in df.columns or df["slide_id"].isna().all() or (df["slide_id"] == "").all():
        df["slide_id"] = [slide_id_from_path(p) for p in df["path"]]
    else:
        df["slide_id"] = df["slide_id"].where(df["slide_id"].notna() & (df["slide_id"] != ""),
                                              pd.Series([slide_id_from_path(p) for p in df["path"]]))
        df["slide_id"] = df["slide_id"].map(str)
    dup = df["slide_id"].duplicated(keep=False)
    if dup.any():
        raise TableError(f"duplicate slide_id(s) {sorted(set(df.loc[dup, 'slide_id']))[:10]}: each slide writes "
                         "out_dir/<slide_id>.h5ad, so ids must be unique (set a slide_id column)")
    bad = df["slide_id"].str.contains(r"[/\\]") | df["slide_id"].isin([".", ".."])
    if bad.any():
        raise TableError(f"slide_id(s) {df.loc[bad, 'slide_id'].tolist()[:5]} contain a path separator")
    return df


def _load_state(out_dir: Path) -> dict:
    try:
        st = json.loads((out_dir / STATE_FILE).read_text())
        return st if isinstance(st, dict) and isinstance(st.get("slides"), dict) else {"slides": {}}
    except (OSError, ValueError):
        return {"slides": {}}


def _save_state(out_dir: Path, state: dict) -> None:
    write_text_atomic(out_dir / STATE_FILE, json.dumps(state, indent=1, sort_keys=True, default=str))


def _clean_stale_tmp(out_dir: Path) -> int:
    """Remove temporary files a killed run left behind (``.<name>.<pid>.tmp`` of dead processes)."""
    n = 0
    for f in out_dir.glob(".*.tmp"):
        parts = f.name.rsplit(".", 2)
        try:
            pid = int(parts[-2])
        except (ValueError, IndexError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            f.unlink(missing_ok=True)
            n += 1
    return n
