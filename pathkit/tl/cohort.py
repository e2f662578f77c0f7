"""Cohorts: many slides into one AnnData (one row per slide), resumable, behind an executor interface.

The work unit is :func:`process_slide` (one slide: read, tile, embed tiles, optionally embed the slide),
a pure function of a picklable :class:`SlideJob`. Its output, ``out_dir/<slide_id>.h5ad``, is written
atomically and records in ``uns["cohort_job"]`` the slide file's sha256 and a hash of every parameter that
changes the numbers (model, weights, tiling, dtype, mpp override). A slide whose file carries the same
record is not computed again. ``out_dir/cohort_state.json`` (atomic) caches each slide's sha256 with its
size, mtime, ctime, inode and a sampled hash (``pathkit._hashing``) so a resumed run does not re-hash
unchanged slides; a file rewritten with its size and mtime restored changes its ctime and is hashed again.
"""
from __future__ import annotations

import json
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .._hashing import sample_hash_path, sha256_path, stat_path
from .._io import h5ad_safe, write_h5ad_atomic
from .._warn import Relay, capture
from ..errors import ChecksumError, CohortError, TableError
from . import _cohort_record as _rec
from ._cohort_inputs import (
    STATE_FILE,
    OutDirLock,
    _abs_weights,
    _check_slide_model,
    _clean_stale_tmp,
    _load_state,
    _save_state,
    _slides_table,
    check_embed_kwargs,
)
from .embed import feature_key

COHORT_FILE = "cohort.h5ad"
# embed_tiles arguments that do not change the numbers (excluded from the parameter hash)
# (an engine's features equal torch's within its parity check, <= 1e-4: a run resumes across engines)
_NEUTRAL = {"batch_size", "num_workers", "device", "progress", "engine", "num_threads"}


@dataclass
class SlideJob:
    """Everything one slide's work unit needs (picklable: sent to Dask / process workers). Paths are
    absolute: a worker may run in another folder or on another host."""

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
    params_hash: str = ""                # the tile model's parameters (model, weights, dtype ...)
    resume: bool = True
    slide_params_hash: str = ""
    expected_sha256: str | None = None   # from a manifest: refuse a file that differs
    known_sha256: str | None = None      # from the state file, valid while stat + sampled hash are unchanged
    known_stat: tuple | None = None
    tiling_hash: str = ""                # mpp + tile_kwargs: which tiles
    legacy_hash: str = ""                # the single hash of files written before models sat side by side
    feature_key: str = ""                # obsm key of the tile model's features
    slide_key: str = ""                  # uns["slide_embeddings"] key of the slide model
    read_kwargs: dict = field(default_factory=dict)  # pk.read_slide's allow_* opt-ins


def _stat(path: Path) -> tuple:
    return stat_path(path)  # a DICOM series folder is one slide


def _sample(path: Path) -> str | None:
    try:
        return sample_hash_path(path)
    except OSError:
        return None




def _embed_slide_tiles(job: SlideJob, tiles=None):
    """read -> tile -> embed; the heavy part of a work unit. Returns the tiles AnnData with features. With
    `tiles` (the slide's earlier tiles, holding other models' features), only the embedding is run."""
    from .. import pp
    from ..slide import read_slide
    from . import embed as _embed

    slide = read_slide(job.path, mpp=job.mpp, **job.read_kwargs)
    try:
        if tiles is None:
            tiles = pp.tile(slide, **job.tile_kwargs)
        if tiles.n_obs == 0:
            raise TableError(f"{job.path}: no tissue tiles (tile_kwargs={job.tile_kwargs}); lower min_tissue or "
                             "check the slide")
        kw = dict(job.embed_kwargs)
        kw.setdefault("progress", False)
        _embed.embed_tiles(tiles, slide, job.tile_model, weights=job.weights, key_added=job.feature_key, **kw)
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


def _tile_features(job: SlideJob, sha: str, out: Path, res: dict):
    """The tiles AnnData holding ``obsm[job.feature_key]``: reused (checksum verified), added to the slide's
    earlier file (other models' features kept), or computed. Returns (adata or None when reused, record)."""
    import anndata as ad

    key = job.feature_key
    rec = _rec.read_record(out, key, job.legacy_hash, job.tiling_hash, job.params_hash) if out.exists() else None
    if rec is None and out.exists():
        why = _rec.unreadable(out)
        if why:  # e.g. cut short by a full disk: its content cannot be trusted, the slide is computed again
            warnings.warn(f"{out}: {why}; the slide is computed again and the file replaced", UserWarning,
                          stacklevel=2)
    same_tiles = bool(rec) and rec["slide_sha256"] == sha and rec.get("tiling_hash") == job.tiling_hash
    entry = rec["features"].get(key) if same_tiles else None
    if job.resume and entry and entry.get("params_hash") == job.params_hash:
        if _rec.features_intact(out, key, entry, rec.get("n_tiles")):
            res["status"] = "skipped"
            res["n_tiles"] = int(rec.get("n_tiles", 0))
            return None, rec
        res["note"] = f"{out.name}: obsm[{key!r}] differs from its recorded checksum; computed again"
    tiles = None
    if job.resume and same_tiles:
        tiles = ad.read_h5ad(out)  # add this model beside the others
        tiles.obsm.pop(key, None)
        for k in [k for k, v in rec["slide_params"].items() if v.get("feature_key") == key]:
            rec["slide_params"].pop(k)  # slide vectors made from the features replaced here
    elif job.resume and rec and rec["slide_sha256"] == sha:
        others = sorted(set(rec["features"]) - {key})
        if others:
            raise TableError(f"{out} holds {others} features of this slide cut with other tiling parameters "
                             f"(mpp / tile_kwargs); one out_dir holds one tiling. Use another out_dir, or pass "
                             "resume=False to replace them")
    if tiles is None:
        rec = {"slide_sha256": sha, "tiling_hash": job.tiling_hash, "features": {}, "slide_params": {}}
    adata = _embed_slide_tiles(job, tiles)
    if key not in adata.obsm:
        raise TableError(f"{job.path}: the tile step left no obsm[{key!r}]")
    X = adata.obsm[key]
    _rec.check_finite(X, f"{job.path}: tile model {job.tile_model!r}", f"weights={job.weights or 'the registry default'}")
    rec["n_tiles"] = int(adata.n_obs)
    rec["features"][key] = {"params_hash": job.params_hash, "sha256": _rec.feature_sha256(X)}
    adata.uns["cohort_job"] = _record_for_h5ad(rec)
    res["status"] = "ok"
    res["n_tiles"] = int(adata.n_obs)
    # written before the slide step: a slide model that fails keeps the tile features
    write_h5ad_atomic(adata, out)
    return adata, rec


def _record_for_h5ad(rec: dict) -> dict:
    return h5ad_safe(json.loads(json.dumps(rec, default=str)))


def process_slide(job: SlideJob) -> dict:
    """The work unit: one slide to ``job.out_path``; never raises (errors are returned).

    Returns a dict: slide_id, path, status ("ok" computed now / "skipped" reused from an earlier run /
    "failed"), error, n_tiles, tile_file, sha256, stat (size, mtime_ns, ctime_ns, inode), sample (sampled
    hash), seconds, slide_embeddings {key: list} when a slide model is set, and warnings: those the slide
    raised (``pathkit._warn.capture``), given again by the caller with the slide id.
    """
    with capture() as caught:
        res = _process_slide(job)
    res["warnings"] = list(caught)
    return res


def _process_slide(job: SlideJob) -> dict:
    t0 = time.perf_counter()
    res = {"slide_id": job.slide_id, "path": job.path, "status": "failed", "error": "", "n_tiles": 0,
           "tile_file": job.out_path, "sha256": "", "stat": None, "seconds": 0.0, "slide_embeddings": {},
           "qc": {}}
    stage = "tiles"
    try:
        src, out = Path(job.path), Path(job.out_path)
        if not (src.is_file() or src.is_dir()):
            raise FileNotFoundError(f"slide file not found: {src}")
        stat = _stat(src)
        sample = sample_hash_path(src)
        if job.known_sha256 and job.known_stat and tuple(job.known_stat) == stat:
            sha = job.known_sha256
        else:
            sha = sha256_path(src)
        res.update(sha256=sha, stat=list(stat), sample=sample)
        if job.expected_sha256 and sha != job.expected_sha256.lower():
            raise ChecksumError(f"{src}: sha256 {sha} differs from the manifest's {job.expected_sha256}; "
                                "re-download it (pathkit fetch) or fix the manifest")
        adata, rec = _tile_features(job, sha, out, res)
        stage = "slide"
        if job.slide_model:
            key = job.slide_key
            sp = rec["slide_params"]
            emb = None
            if job.resume and (sp.get(key) or {}).get("hash") == job.slide_params_hash:
                emb = (_rec.read_uns(out, "slide_embeddings") or {}).get(key)
            if emb is None:
                import anndata as ad

                from . import slide_embed as _se

                if adata is None:
                    adata = ad.read_h5ad(out)
                kw = {"use_rep": job.feature_key, **job.slide_kwargs, "key_added": key}
                _se.embed_slide(adata, model=job.slide_model, weights=job.slide_weights, **kw)
                emb = adata.uns["slide_embeddings"][key]
                _rec.check_finite(np.asarray(emb).reshape(1, -1), f"{job.path}: slide model {job.slide_model!r}",
                                  f"slide_weights={job.slide_weights or 'the registry default'}")
                sp[key] = {"hash": job.slide_params_hash, "feature_key": job.feature_key}
                adata.uns["cohort_job"] = _record_for_h5ad(rec)
                write_h5ad_atomic(adata, out)
                if res["status"] == "skipped":
                    res["status"] = "ok"
            res["slide_embeddings"] = {key: np.asarray(emb, dtype=np.float32).tolist()}
        qc = adata.uns.get("qc") if adata is not None else _rec.read_uns(out, "qc")
        res["qc"] = _qc_summary(qc)
    except Exception as exc:
        kept = " (the tile features are kept in the slide's h5ad)" if stage == "slide" else ""
        res.update(status="failed", error=f"{type(exc).__name__}: {exc}{kept}")
        res["traceback"] = traceback.format_exc(limit=5)
    res["seconds"] = round(time.perf_counter() - t0, 3)
    return res


# ---------------------------------------------------------------------------------------------- public
def embed_cohort(slides, out_dir, tile_model: str = "gigapath_tile", slide_model: str | None = None,
                 weights=None, tile_kwargs: dict | None = None, embed_kwargs: dict | None = None,
                 slide_weights=None, slide_kwargs: dict | None = None, slide_dir=None, executor=None,
                 client=None, resources: dict | None = None, progress: bool = True, write: bool = True,
                 resume: bool = True, read_kwargs: dict | None = None, stain=None):
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
        Arguments of :func:`pathkit.tl.embed_tiles` (device, batch_size, num_workers, dtype, engine,
        num_threads).
    executor, client, resources
        Where slides run: None = in this process; a ``dask.distributed.Client`` (one task per slide,
        ``resources={"GPU": 1}`` to use GPU workers); or a :class:`pathkit.io.executors.Executor` /
        ``concurrent.futures`` executor.
    progress
        Progress bar counting slides (tiles in its postfix).
    write
        Also write ``out_dir/cohort.h5ad``.
    resume
        Reuse a slide's h5ad when it was made from the same file (sha256) with the same parameters and its
        features still have their recorded checksum (the default); False recomputes every slide.
    read_kwargs
        Opt-ins of :func:`pathkit.read_slide` for every slide: ``allow_non_brightfield``,
        ``allow_implausible_mpp``.
    stain
        Stain normalisation of every tile batch (:func:`pathkit.tl.embed_tiles` ``stain``): a normaliser of
        :func:`pathkit.pp.fit_stain` (one target for the cohort), or ``"macenko"`` / ``"reinhard"`` /
        ``"vahadane"`` (each slide its own target). Part of the parameters a resumed slide must match.

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
    from ..models.registry import get_spec

    tile_kwargs = dict(tile_kwargs or {})
    embed_kwargs = dict(embed_kwargs or {})
    if stain is not None:  # plain data: picklable for workers and part of the parameter hash
        from ..pp._stain import as_normalizer

        embed_kwargs["stain"] = stain if isinstance(stain, str) else as_normalizer(stain).to_dict()
    slide_kwargs = dict(slide_kwargs or {})
    for bad in ("tiles", "weights", "model", "slide", "key_added"):
        if bad in embed_kwargs:
            raise TypeError(f"embed_kwargs must not contain {bad!r}: embed_cohort sets it")
    check_embed_kwargs(embed_kwargs)
    unknown = set(read_kwargs or {}) - {"allow_non_brightfield", "allow_implausible_mpp"}
    if unknown:
        from ..errors import ParameterError

        raise ParameterError(f"read_kwargs {sorted(unknown)}: only allow_non_brightfield and allow_implausible_mpp "
                             "(the slide's mpp goes into an 'mpp' column of the slide table)")
    # everything a slide needs is checked here, before any slide is read: a typo must not cost a cohort's
    # tile embedding, and workers started in another folder (SLURM) must get absolute paths
    tile_model = get_spec(tile_model, kind="tile").name
    weights, slide_weights = _abs_weights(weights, "weights"), _abs_weights(slide_weights, "slide_weights")
    fkey = feature_key(tile_model)
    skey = _check_slide_model(slide_model, tile_model, slide_kwargs) if slide_model else ""
    table = _slides_table(slides, None if slide_dir is None else Path(slide_dir).expanduser().absolute())
    table["path"] = [str(Path(p).expanduser().absolute()) for p in table["path"]]
    out_dir = Path(out_dir).expanduser().absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise TableError(f"out_dir {out_dir} is a file, not a folder: pass a folder for the cohort's outputs")
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = OutDirLock(out_dir).acquire()
    try:
        return _run_cohort(table, out_dir, tile_model, fkey, skey, weights, slide_model, slide_weights, tile_kwargs,
                           embed_kwargs, slide_kwargs, executor, client, resources, progress, write, resume,
                           dict(read_kwargs or {}))
    finally:
        lock.release()






def _reusable(job: SlideJob, entry: dict, cur, out_path: Path):
    """The result of a slide that needs no work (its state entry, file and features unchanged), else None."""
    if not (entry.get("status") in ("ok", "skipped") and entry.get("params_hash") == job.params_hash
            and entry.get("tiling_hash") == job.tiling_hash and out_path.exists()
            and list(_stat(out_path)) == list(entry.get("out_stat") or [])
            and (not job.expected_sha256 or job.expected_sha256.lower() == job.known_sha256)):
        return None
    rec = _rec.read_record(out_path, job.feature_key, job.legacy_hash, job.tiling_hash, job.params_hash)
    fe = (rec or {}).get("features", {}).get(job.feature_key)
    if not (rec and rec["slide_sha256"] == job.known_sha256 and fe and fe.get("params_hash") == job.params_hash
            and _rec.features_intact(out_path, job.feature_key, fe, rec.get("n_tiles"))):
        return None
    emb = {}
    if job.slide_model:
        if (rec["slide_params"].get(job.slide_key) or {}).get("hash") != job.slide_params_hash:
            return None
        se = _rec.read_uns(out_path, "slide_embeddings") or {}
        if job.slide_key not in se:
            return None
        emb = {job.slide_key: np.asarray(se[job.slide_key], dtype=np.float32).tolist()}
    return {"slide_id": job.slide_id, "path": job.path, "status": "skipped", "error": "",
            "n_tiles": int(rec.get("n_tiles", 0)), "tile_file": str(out_path), "sha256": job.known_sha256,
            "stat": list(cur), "seconds": 0.0, "slide_embeddings": emb, "qc": entry.get("qc") or {}}


def _run_cohort(table, out_dir, tile_model, fkey, skey, weights, slide_model, slide_weights, tile_kwargs,
                embed_kwargs, slide_kwargs, executor, client, resources, progress, write, resume, read_kwargs):
    import anndata as ad

    from .._progress import progress_bar
    from .._version import __version__
    from ..io.executors import get_executor
    from ..tcga import parse_barcodes

    _clean_stale_tmp(out_dir)
    state = _load_state(out_dir)
    jobs, results = [], {}
    w = None if weights is None else str(weights)
    model_params = {"tile_model": tile_model, "weights": w,
                    "embed_kwargs": {k: v for k, v in embed_kwargs.items() if k not in _NEUTRAL}}
    ph = _rec.stable_hash(model_params)
    for _, row in table.iterrows():
        mpp = row.get("mpp") if "mpp" in table.columns else None
        mpp = None if mpp is None or (isinstance(mpp, float) and np.isnan(mpp)) else float(mpp)
        th = _rec.stable_hash({"mpp": mpp, "tile_kwargs": tile_kwargs, **({"read": read_kwargs} if read_kwargs else {})})
        legacy = _rec.stable_hash({"tile_model": tile_model, "weights": w, "mpp": mpp, "tile_kwargs": tile_kwargs,
                                   "embed_kwargs": model_params["embed_kwargs"]})
        sph = _rec.stable_hash({"slide_model": slide_model, "weights": None if slide_weights is None
                                else str(slide_weights), "kwargs": slide_kwargs, "features": ph}) if slide_model else ""
        sid = row["slide_id"]
        out_path = out_dir / f"{sid}.h5ad"
        exp = row.get("expected_sha256") if "expected_sha256" in table.columns else None
        exp = exp if isinstance(exp, str) and exp else None
        entry = state["slides"].get(sid)
        src = Path(row["path"])
        try:
            cur = _stat(src)
        except OSError:
            cur = None
        job = SlideJob(slide_id=sid, path=str(src), out_path=str(out_path), tile_model=tile_model, weights=w,
                       mpp=mpp, tile_kwargs=tile_kwargs, embed_kwargs=embed_kwargs, slide_model=slide_model,
                       slide_weights=None if slide_weights is None else str(slide_weights),
                       slide_kwargs=slide_kwargs, params_hash=ph, slide_params_hash=sph, expected_sha256=exp,
                       resume=resume, tiling_hash=th, legacy_hash=legacy, feature_key=fkey, slide_key=skey,
                       read_kwargs=read_kwargs)
        if (resume and entry and cur and entry.get("path") == str(src)
                and tuple(entry.get("stat") or ()) == cur and entry.get("sample") == _sample(src)):
            # the slide file is unchanged since the state was written (size, mtime, ctime, inode and the
            # sampled blocks): its sha256 need not be computed again
            job.known_sha256, job.known_stat = entry.get("sha256"), cur
            done = _reusable(job, entry, cur, out_path)
            if done is not None:
                results[sid] = done
                continue
        jobs.append(job)

    by_id = {j.slide_id: j for j in jobs}
    ex = get_executor(executor, client, resources=resources)
    bar = progress_bar(total=len(table), unit="slide", desc="cohort", disable=not progress)
    bar.update(len(results))
    n_tiles = sum(r["n_tiles"] for r in results.values())
    n_failed = 0
    last_save = 0.0
    relay = Relay("slide")  # warnings raised in the workers (or in this process), with their slides' ids
    try:
        for res in ex.map(process_slide, jobs):
            sid = res["slide_id"]
            results[sid] = res
            relay.add(sid, res.get("warnings"))
            n_tiles += int(res.get("n_tiles") or 0)
            n_failed += res["status"] == "failed"
            out_path = Path(res.get("tile_file") or out_dir / f"{sid}.h5ad")
            entry = {"path": res.get("path"), "stat": res.get("stat"), "sha256": res.get("sha256"),
                     "sample": res.get("sample"), "status": res["status"], "n_tiles": res.get("n_tiles", 0),
                     "error": res.get("error", ""),
                     "qc": res.get("qc") or {}}
            if res["status"] != "failed":
                job = by_id[sid]
                entry.update(params_hash=job.params_hash, tiling_hash=job.tiling_hash, out_stat=list(_stat(out_path)))
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
    relay.close()

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
        key = skey
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
                      f"{' ...' if len(failed) > 5 else ''}); see obs['error']", UserWarning, stacklevel=3)
    return cohort
