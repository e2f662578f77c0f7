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


def check_embed_kwargs(embed_kwargs: dict) -> None:
    """What can be checked on the driver before any slide: batch size, reader count, the device's spelling
    (whether it exists is the workers' business: a login node without a GPU may drive GPU workers)."""
    import numpy as np

    from ..errors import ParameterError

    bs = embed_kwargs.get("batch_size", 64)
    if isinstance(bs, bool) or not isinstance(bs, (int, np.integer)) or bs < 1:
        raise ParameterError(f"embed_kwargs batch_size={bs!r}: the number of tiles per forward pass, an integer >= 1")
    nw = embed_kwargs.get("num_workers")
    if nw is not None and (isinstance(nw, bool) or not isinstance(nw, (int, np.integer)) or nw < 0):
        raise ParameterError(f"embed_kwargs num_workers={nw!r}: an integer >= 0, or None for the default")
    dev = embed_kwargs.get("device", "auto")
    if isinstance(dev, str) and dev != "auto":
        import torch

        try:
            torch.device(dev)
        except (RuntimeError, ValueError) as e:
            hint = " did you mean 'cuda'?" if dev.strip().lower() == "gpu" else ""
            raise ParameterError(f"embed_kwargs device={dev!r} is not a torch device name ('auto', 'cpu', 'cuda', "
                                 f"'cuda:<index>', 'mps'):{hint} {e}") from None


def _load_state(out_dir: Path) -> dict:
    """The state file's content; a damaged one (a run killed by a full disk, a copy cut short) is said and
    started afresh: it is only a cache, the per-slide files' records decide what is reused."""
    path = out_dir / STATE_FILE
    if not path.exists():
        return {"slides": {}}
    try:
        st = json.loads(path.read_text())
        if isinstance(st, dict) and isinstance(st.get("slides"), dict):
            return st
        why = "it does not hold a 'slides' table"
    except (OSError, ValueError) as exc:
        why = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    import warnings

    from .._warn import user_stacklevel

    warnings.warn(f"{path}: unreadable cohort state ({why}); rebuilt from the slides and their h5ad files (each "
                  "slide file is hashed again; results whose records match are reused)", UserWarning,
                  stacklevel=user_stacklevel())
    return {"slides": {}}


def _save_state(out_dir: Path, state: dict) -> None:
    write_text_atomic(out_dir / STATE_FILE, json.dumps(state, indent=1, sort_keys=True, default=str))


def _clean_stale_tmp(out_dir: Path, legacy_age_s: float = 86400.0) -> int:
    """Remove temporary files a killed run left behind: ``.<name>.pk-<host>-<pid>-<start>.tmp`` written on
    this host by a process that is gone. Another host's file is never touched (on a shared file system its
    writer may be alive); an old-style ``.<name>.<pid>.tmp`` (no host) only once it is `legacy_age_s` old."""
    import time

    from .. import _owner

    n = 0
    for f in out_dir.glob(".*.tmp"):
        owner = _owner.parse_tag(f.name[:-len(".tmp")].rsplit(".", 1)[-1])
        if owner is not None:
            stale = _owner.is_dead(owner)
        else:
            try:
                int(f.name.rsplit(".", 2)[-2])
                stale = time.time() - f.stat().st_mtime > legacy_age_s
            except (ValueError, IndexError, OSError):
                continue
        if stale:
            f.unlink(missing_ok=True)
            n += 1
    return n


LOCK_FILE = ".pathkit.lock"


class OutDirLock:
    """An exclusive lock on a cohort's ``out_dir`` (``out_dir/.pathkit.lock``: host, pid, start time).

    A second run on the same folder stops at once with a :class:`~pathkit.errors.CohortError` that names
    the holder. A lock left by a process of this host that is gone is taken over; a lock from another host is
    never broken (its run may be alive): the message says which file to delete once that run is over.
    """

    def __init__(self, out_dir: Path):
        self.path = Path(out_dir) / LOCK_FILE
        self._held = False

    def acquire(self) -> OutDirLock:
        import time

        from .. import _owner
        from ..errors import CohortError

        me = {"host": _owner.host(), "pid": os.getpid(), "start": _owner.process_start(os.getpid()) or 0,
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    holder = {}
                if holder and _owner.is_dead(holder):
                    self.path.unlink(missing_ok=True)  # its process on this host is gone
                    continue
                if not holder:  # being written this instant, or an empty file of a crashed writer
                    time.sleep(0.2)
                    try:
                        holder = json.loads(self.path.read_text() or "{}")
                    except (OSError, ValueError):
                        holder = {}
                    if not holder:
                        raise CohortError(f"{self.path.parent}: locked by an unreadable lock file {self.path}; "
                                          "if no other pathkit run uses this folder, delete that file") from None
                    continue
                where = "this host" if holder.get("host") == me["host"] else f"host {holder.get('host')!r}"
                raise CohortError(
                    f"{self.path.parent} is in use by another pathkit run (pid {holder.get('pid')} on {where}, "
                    f"since {holder.get('since', '?')}): two runs on one out_dir would compute every slide twice. "
                    f"Wait for it, or use another out_dir; if that run is gone, delete {self.path}") from None
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(me))
            self._held = True
            return self
        raise CohortError(f"{self.path.parent}: could not take the lock {self.path}; delete it if no run is using "
                          "this folder")

    def release(self) -> None:
        """Remove the lock file if it is still this process's (someone may have deleted and retaken it)."""
        from .. import _owner

        if self._held:
            self._held = False
            try:
                holder = json.loads(self.path.read_text() or "{}")
            except (OSError, ValueError):
                return
            if holder.get("pid") == os.getpid() and holder.get("host") == _owner.host():
                self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _abs_weights(weights, what: str):
    """A local weights path made absolute (workers may run elsewhere) and checked now; hub / special values
    as they are."""
    from ..errors import WeightsError

    if weights is None or not isinstance(weights, (str, Path)):
        return weights
    w = str(weights)
    if w in ("random",) or w.startswith(("hf_hub:", "hf-hub:", "http://", "https://")):
        return w
    p = Path(w).expanduser()
    if not p.exists():
        raise WeightsError(f"{what}={w!r}: no such file (from {Path.cwd()}); pass the path of a local weights "
                           "file, 'hf_hub:<repo>', or None for the registry's weights")
    return str(p.absolute())


def _check_slide_model(slide_model, tile_model: str, slide_kwargs: dict) -> str:
    """The slide model's key, after checking that it exists and takes `tile_model`'s features."""
    from ..errors import ModelNotFoundError
    from ..models.registry import get_spec

    if slide_model != "mean":
        spec = get_spec(slide_model, kind="slide")
        bound = (spec.extra or {}).get("tile_model")
        if bound and bound != tile_model and not slide_kwargs.get("use_rep"):
            raise ModelNotFoundError(f"slide model {spec.name!r} takes {bound!r} tile features, not {tile_model!r}: "
                                     f"pass tile_model={bound!r} (or slide_model='mean' for {tile_model!r})")
    return _slide_key(slide_model, slide_kwargs, tile_model)


def _slide_key(slide_model, slide_kwargs=None, tile_model=None) -> str:
    """Key of the slide embedding in uns["slide_embeddings"] / the cohort's obsm["X_<key>"]. A slide model
    that is not bound to one tile model (``"mean"``) gets the tile model in its key (``mean_uni``), so the
    slide vectors of several tile models sit side by side in one out_dir."""
    if slide_kwargs and slide_kwargs.get("key_added"):
        return str(slide_kwargs["key_added"])
    if slide_model in ("mean", None):
        base, bound = "mean", None
    else:
        from ..models.registry import get_spec

        spec = get_spec(slide_model, kind="slide")
        base, bound = spec.name, (spec.extra or {}).get("tile_model")
    if bound or tile_model is None:
        return base
    from .embed import feature_key

    return f"{base}_{feature_key(tile_model)[2:]}"
