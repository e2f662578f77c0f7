"""Cohorts: many slides into one AnnData (one row per slide), resumable, behind an executor interface.

The work unit is :func:`process_slide` (one slide: read, tile, embed tiles, optionally embed the slide),
a pure function of a picklable :class:`SlideJob`. Its output, ``out_dir/<slide_id>.h5ad``, is written
atomically and records in ``uns["cohort_job"]`` the slide file's sha256 and a hash of every parameter that
changes the numbers (model, weights, tiling, dtype, mpp override). A slide whose file carries the same
record is not computed again. ``out_dir/cohort_state.json`` (atomic) caches each slide's size, mtime and
sha256 so a resumed run does not re-hash unchanged slides.
"""
from __future__ import annotations

import hashlib
import json
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._hashing import sha256_path, stat_path
from .._io import h5ad_safe, write_h5ad_atomic
from ..errors import ChecksumError, CohortError, TableError
from ._cohort_inputs import STATE_FILE, _clean_stale_tmp, _load_state, _save_state, _slides_table

COHORT_FILE = "cohort.h5ad"
# embed_tiles arguments that do not change the numbers (excluded from the parameter hash)
_NEUTRAL = {"batch_size", "num_workers", "device", "progress"}


@dataclass
class SlideJob:
    """Everything one slide's work unit needs (picklable: sent to Dask / process workers)."""

    slide_id: str
    path: str
    out_path: str
    tile_model: str
    weights: str | None = None
    mpp: float | None = None
    tile_kwargs: dict = field(default_factory=dict)
    embed_kwargs: dict = field(default_factory=dict)
    slide_model: str | None = None
    slide_weights: str | None = None
    slide_kwargs: dict = field(default_factory=dict)
    params_hash: str = ""
    resume: bool = True
    slide_params_hash: str = ""
    expected_sha256: str | None = None   # from a manifest: refuse a file that differs
    known_sha256: str | None = None      # from the state file, valid while size + mtime are unchanged
    known_stat: tuple | None = None


def _stable_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _stat(path: Path) -> tuple:
    return stat_path(path)  # a DICOM series folder is one slide


def _slide_key(slide_model, slide_kwargs=None) -> str:
    """Key of the slide embedding in uns["slide_embeddings"] / obsm["X_<key>"] (embed_slide's naming)."""
    if slide_kwargs and slide_kwargs.get("key_added"):
        return str(slide_kwargs["key_added"])
    if slide_model in ("mean", None):
        return "mean"
    return str(getattr(slide_model, "name", slide_model))


def _read_uns(path: Path, key: str):
    """One uns entry of an h5ad without loading X (None when absent or unreadable)."""
    import h5py
    from anndata.io import read_elem

    try:
        with h5py.File(path, "r") as f:
            if "uns" in f and key in f["uns"]:
                return read_elem(f["uns"][key])
    except (OSError, KeyError, ValueError):
        return None
    return None


def _embed_slide_tiles(job: SlideJob):
    """read -> tile -> embed; the heavy part of a work unit. Returns the tiles AnnData with features."""
    from .. import pp
    from ..slide import read_slide
    from . import embed as _embed

    slide = read_slide(job.path, mpp=job.mpp)
    try:
        tiles = pp.tile(slide, **job.tile_kwargs)
        if tiles.n_obs == 0:
            raise TableError(f"{job.path}: no tissue tiles (tile_kwargs={job.tile_kwargs}); lower min_tissue or "
                             "check the slide")
        kw = dict(job.embed_kwargs)
        kw.setdefault("progress", False)
        _embed.embed_tiles(tiles, slide, job.tile_model, weights=job.weights, **kw)
        return tiles
    finally:
        try:
            slide.close()
        except Exception:
            pass


QC_COLUMNS = ("tissue_area_mm2", "pen_area_mm2", "n_qc_pass")


def _qc_summary(qc) -> dict:
    """The per-slide QC figures of ``uns["qc"]`` (pk.pp.tile_qc) that go into the cohort's obs."""
    qc = dict(qc or {})
    return {"tissue_area_mm2": float(qc.get("tissue_area_mm2", np.nan)),
            "pen_area_mm2": float(qc.get("pen_area_mm2", np.nan)),
            "n_qc_pass": float(qc.get("n_pass", np.nan))}


def process_slide(job: SlideJob) -> dict:
    """The work unit: one slide to ``job.out_path``; never raises (errors are returned).

    Returns a dict: slide_id, path, status ("ok" computed now / "skipped" reused from an earlier run /
    "failed"), error, n_tiles, tile_file, sha256, stat (size, mtime_ns), seconds, slide_embeddings
    {key: list} when a slide model is set.
    """
    t0 = time.perf_counter()
    res = {"slide_id": job.slide_id, "path": job.path, "status": "failed", "error": "", "n_tiles": 0,
           "tile_file": job.out_path, "sha256": "", "stat": None, "seconds": 0.0, "slide_embeddings": {},
           "qc": {}}
    try:
        src, out = Path(job.path), Path(job.out_path)
        if not (src.is_file() or src.is_dir()):
            raise FileNotFoundError(f"slide file not found: {src}")
        stat = _stat(src)
        if job.known_sha256 and job.known_stat and tuple(job.known_stat) == stat:
            sha = job.known_sha256
        else:
            sha = sha256_path(src)
        res.update(sha256=sha, stat=list(stat))
        if job.expected_sha256 and sha != job.expected_sha256.lower():
            raise ChecksumError(f"{src}: sha256 {sha} differs from the manifest's {job.expected_sha256}; "
                                "re-download it (pathkit fetch) or fix the manifest")
        rec = _read_uns(out, "cohort_job") if out.exists() else None
        adata = None
        if job.resume and rec and rec.get("slide_sha256") == sha and rec.get("params_hash") == job.params_hash:
            res["status"] = "skipped"
            res["n_tiles"] = int(rec.get("n_tiles", 0))
            dirty = False
        else:
            adata = _embed_slide_tiles(job)
            rec = {"slide_sha256": sha, "params_hash": job.params_hash, "n_tiles": int(adata.n_obs),
                   "slide_params": {}}
            adata.uns["cohort_job"] = rec
            res["status"] = "ok"
            res["n_tiles"] = int(adata.n_obs)
            dirty = True
        if job.slide_model:
            key = _slide_key(job.slide_model, job.slide_kwargs)
            sp = dict(rec.get("slide_params", {}) or {})
            emb = None
            if job.resume and sp.get(key) == job.slide_params_hash:
                emb = (_read_uns(out, "slide_embeddings") or {}).get(key)
            if emb is None:
                import anndata as ad

                from . import slide_embed as _se

                if adata is None:
                    adata = ad.read_h5ad(out)
                _se.embed_slide(adata, model=job.slide_model, weights=job.slide_weights, **job.slide_kwargs)
                emb = adata.uns["slide_embeddings"][key]
                cj = dict(adata.uns["cohort_job"])
                sp[key] = job.slide_params_hash
                cj["slide_params"] = sp
                adata.uns["cohort_job"] = cj
                dirty = True
                if res["status"] == "skipped":
                    res["status"] = "ok"
            res["slide_embeddings"] = {key: np.asarray(emb, dtype=np.float32).tolist()}
        qc = adata.uns.get("qc") if adata is not None else _read_uns(out, "qc")
        res["qc"] = _qc_summary(qc)
        if dirty:  # one atomic write holding tiles, record and slide embedding together
            write_h5ad_atomic(adata, out)
    except Exception as exc:
        res.update(status="failed", error=f"{type(exc).__name__}: {exc}")
        res["traceback"] = traceback.format_exc(limit=5)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


# ---------------------------------------------------------------------------------------------- public
def embed_cohort(slides, out_dir, tile_model: str = "gigapath_tile", slide_model: str | None = None,
                 weights=None, tile_kwargs: dict | None = None, embed_kwargs: dict | None = None,
                 slide_weights=None, slide_kwargs: dict | None = None, slide_dir=None, executor=None,
                 client=None, resources: dict | None = None, progress: bool = True, write: bool = True,
                 resume: bool = True):
    """Embed many slides into one cohort AnnData (one row per slide), resuming where a run stopped.

    Parameters
    ----------
    slides
        A list of slide paths; a folder; a DataFrame with ``path`` (optional ``slide_id``, ``mpp`` and any
        other columns, kept in ``obs``); a slide-table CSV; or a manifest (``data_manifests/``, CSV path or
        DataFrame with ``file_name``) together with ``slide_dir``; a manifest's sha256 is checked first.
    out_dir
        Folder for ``<slide_id>.h5ad`` (tile AnnData of each slide, :func:`pathkit.tl.embed_tiles` keys),
        ``cohort_state.json`` and ``cohort.h5ad``.
    tile_model, weights
        Tile encoder (registry name) and its weights (None: the registry's).
    slide_model, slide_weights, slide_kwargs
        Optional slide encoder for :func:`pathkit.tl.embed_slide` (``"gigapath_slide"``, ``"mean"``...);
        each slide's vector goes to ``obsm["X_<key>"]`` (NaN rows for failed slides).
    tile_kwargs
        Arguments of :func:`pathkit.pp.tile` (tile_px, mpp, min_tissue, overlap).
    embed_kwargs
        Arguments of :func:`pathkit.tl.embed_tiles` (device, batch_size, num_workers, dtype).
    executor, client, resources
        Where slides run: None = in this process; a ``dask.distributed.Client`` (one task per slide,
        ``resources={"GPU": 1}`` to use GPU workers); or a :class:`pathkit.io.executors.Executor` /
        ``concurrent.futures`` executor.
    progress
        Progress bar counting slides (tiles in its postfix).
    write
        Also write ``out_dir/cohort.h5ad``.
    resume
        Reuse a slide's h5ad when it was made from the same file (sha256) with the same parameters (the
        default); False recomputes every slide.

    Returns
    -------
    AnnData
        obs_names = slide ids; ``obs``: ``slide_id``, ``path``, ``status`` ("ok" computed now, "skipped"
        reused from an earlier run, "failed"), ``error``, ``n_tiles``, ``tile_file``, ``seconds``, the slide's QC
        (``tissue_area_mm2``, ``pen_area_mm2``, ``n_qc_pass``: tiles passing pk.pp.tile_qc), TCGA parts
        (``patient_id``, ``sample_id``, ``sample_type``, ``slide_type``) when the id is a barcode, and the
        input table's columns; ``obsm["X_<key>"]``; ``uns["pathkit"]`` (provenance) and ``uns["cohort"]``
        (counts). Usable rows: ``obs.status != "failed"``.
    """
    import anndata as ad
    from tqdm.auto import tqdm

    from .._version import __version__
    from ..io.executors import get_executor
    from ..models.registry import get_spec
    from ..tcga import parse_barcodes

    get_spec(tile_model, kind="tile")  # an unknown model fails here, not once per slide
    table = _slides_table(slides, slide_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(out_dir)
    tile_kwargs = dict(tile_kwargs or {})
    embed_kwargs = dict(embed_kwargs or {})
    slide_kwargs = dict(slide_kwargs or {})
    for bad in ("tiles", "weights", "model", "slide"):
        if bad in embed_kwargs:
            raise TypeError(f"embed_kwargs must not contain {bad!r}: embed_cohort sets it")

    state = _load_state(out_dir)
    jobs, results = [], {}
    for _, row in table.iterrows():
        mpp = row.get("mpp") if "mpp" in table.columns else None
        mpp = None if mpp is None or (isinstance(mpp, float) and np.isnan(mpp)) else float(mpp)
        params = {"tile_model": tile_model, "weights": None if weights is None else str(weights), "mpp": mpp,
                  "tile_kwargs": tile_kwargs,
                  "embed_kwargs": {k: v for k, v in embed_kwargs.items() if k not in _NEUTRAL}}
        ph = _stable_hash(params)
        sph = _stable_hash({"slide_model": slide_model, "weights": None if slide_weights is None
                            else str(slide_weights), "kwargs": slide_kwargs}) if slide_model else ""
        sid = row["slide_id"]
        out_path = out_dir / f"{sid}.h5ad"
        exp = row.get("expected_sha256") if "expected_sha256" in table.columns else None
        exp = exp if isinstance(exp, str) and exp else None
        rec = state["slides"].get(sid)
        known_sha = known_stat = None
        src = Path(row["path"])
        try:
            cur = _stat(src)
        except OSError:
            cur = None
        if resume and rec and cur and rec.get("path") == str(src) and tuple(rec.get("stat") or ()) == cur:
            known_sha, known_stat = rec.get("sha256"), cur
            # fast resume: nothing changed since the state was written and the output is still there
            want_slide = (not slide_model) or (rec.get("slide_params", {}).get(_slide_key(slide_model, slide_kwargs)) == sph)
            if (rec.get("status") in ("ok", "skipped") and rec.get("params_hash") == ph and want_slide
                    and out_path.exists() and list(_stat(out_path)) == list(rec.get("out_stat") or [])
                    and (not exp or exp == known_sha)):
                emb = {}
                if slide_model:
                    key = _slide_key(slide_model, slide_kwargs)
                    se = _read_uns(out_path, "slide_embeddings") or {}
                    if key in se:
                        emb = {key: np.asarray(se[key], dtype=np.float32).tolist()}
                    else:
                        emb = None
                if emb is not None:
                    results[sid] = {"slide_id": sid, "path": str(src), "status": "skipped", "error": "",
                                    "n_tiles": int(rec.get("n_tiles", 0)), "tile_file": str(out_path),
                                    "sha256": known_sha, "stat": list(cur), "seconds": 0.0,
                                    "slide_embeddings": emb, "qc": rec.get("qc") or {}}
                    continue
        jobs.append(SlideJob(slide_id=sid, path=str(src), out_path=str(out_path), tile_model=tile_model,
                             weights=None if weights is None else str(weights), mpp=mpp, tile_kwargs=tile_kwargs,
                             embed_kwargs=embed_kwargs, slide_model=slide_model,
                             slide_weights=None if slide_weights is None else str(slide_weights),
                             slide_kwargs=slide_kwargs, params_hash=ph, slide_params_hash=sph,
                             expected_sha256=exp, known_sha256=known_sha, known_stat=known_stat, resume=resume))

    by_id = {j.slide_id: j for j in jobs}
    ex = get_executor(executor, client, resources=resources)
    bar = tqdm(total=len(table), unit="slide", desc="cohort", disable=not progress)
    bar.update(len(results))
    n_tiles = sum(r["n_tiles"] for r in results.values())
    n_failed = 0
    last_save = 0.0
    try:
        for res in ex.map(process_slide, jobs):
            sid = res["slide_id"]
            results[sid] = res
            n_tiles += int(res.get("n_tiles") or 0)
            n_failed += res["status"] == "failed"
            out_path = Path(res.get("tile_file") or out_dir / f"{sid}.h5ad")
            entry = {"path": res.get("path"), "stat": res.get("stat"), "sha256": res.get("sha256"),
                     "status": res["status"], "n_tiles": res.get("n_tiles", 0), "error": res.get("error", ""),
                     "qc": res.get("qc") or {}}
            if res["status"] != "failed":
                job = by_id[sid]
                entry.update(params_hash=job.params_hash, out_stat=list(_stat(out_path)))
                if slide_model:
                    entry["slide_params"] = {_slide_key(slide_model, slide_kwargs): job.slide_params_hash}
            state["slides"][sid] = entry
            bar.update(1)
            bar.set_postfix(tiles=n_tiles, failed=n_failed)
            if time.monotonic() - last_save > 1.0:
                _save_state(out_dir, state)
                last_save = time.monotonic()
    finally:
        bar.close()
        _save_state(out_dir, state)
        if ex is not executor:
            ex.close()

    # assemble: one row per input slide, input order
    obs = table.drop(columns=[c for c in ("expected_sha256",) if c in table.columns]).copy()
    cols = ["status", "error", "n_tiles", "tile_file", "seconds", "sha256"]
    for c in cols:
        obs[c] = [results[s].get(c, "") if c != "n_tiles" else int(results[s].get("n_tiles") or 0)
                  for s in obs["slide_id"]]
    obs["seconds"] = pd.to_numeric(obs["seconds"], errors="coerce")
    for c in QC_COLUMNS:
        obs[c] = [float((results[s].get("qc") or {}).get(c, np.nan)) for s in obs["slide_id"]]
    parts = parse_barcodes(obs["slide_id"], errors="coerce")
    if parts["error"].isna().any():
        for src, dst in (("patient", "patient_id"), ("sample", "sample_id"), ("sample_type", "sample_type"),
                         ("slide_type", "slide_type")):
            if dst not in obs.columns:
                obs[dst] = parts[src].values
    obs.index = pd.Index(obs["slide_id"].astype(str).values)
    for c in obs.columns:
        if obs[c].dtype == object:
            obs[c] = obs[c].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    cohort = ad.AnnData(obs=obs)
    if slide_model:
        key = _slide_key(slide_model, slide_kwargs)
        vecs = [results[s].get("slide_embeddings", {}).get(key) for s in obs["slide_id"]]
        width = next((np.asarray(v).size for v in vecs if v is not None), None)
        if width is not None:
            M = np.full((len(vecs), width), np.nan, dtype=np.float32)
            for i, v in enumerate(vecs):
                if v is not None:
                    M[i] = np.asarray(v, dtype=np.float32).ravel()
            cohort.obsm[f"X_{key}"] = M
    counts = obs["status"].value_counts().to_dict()
    cohort.uns["cohort"] = {"n_slides": len(obs), "n_ok": int(counts.get("ok", 0)),
                            "n_skipped": int(counts.get("skipped", 0)), "n_failed": int(counts.get("failed", 0)),
                            "n_tiles": int(obs["n_tiles"].sum()), "out_dir": str(out_dir)}
    cohort.uns["pathkit"] = h5ad_safe({
        "version": __version__, "function": "embed_cohort", "tile_model": tile_model,
        "weights": None if weights is None else str(weights), "slide_model": slide_model,
        "slide_weights": None if slide_weights is None else str(slide_weights), "tile_kwargs": tile_kwargs,
        "embed_kwargs": embed_kwargs, "slide_kwargs": slide_kwargs, "executor": ex.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if write:
        write_h5ad_atomic(cohort, out_dir / COHORT_FILE)
    failed = obs[obs["status"] == "failed"]
    if len(failed):
        shown = "; ".join(f"{s}: {e}" for s, e in zip(failed["slide_id"][:5], failed["error"][:5]))
        if len(failed) == len(obs):
            raise CohortError(f"embed_cohort: all {len(obs)} slide(s) failed; the first: {shown}"
                              f"{' ...' if len(failed) > 5 else ''}. Every error is in "
                              f"{out_dir / STATE_FILE}")
        warnings.warn(f"embed_cohort: {len(failed)} of {len(obs)} slide(s) failed ({shown}"
                      f"{' ...' if len(failed) > 5 else ''}); see obs['error']", UserWarning, stacklevel=2)
    return cohort
