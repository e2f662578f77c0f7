"""Issue 28, data mixed or lost: each test failed before its fix. Cohort runs use a deterministic stand-in
for read -> tile -> embed (values from the file's bytes and the tile model's name) except where the real
encoder matters (NaN weights)."""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit import _owner
from pathkit.errors import CohortError, ModelNotFoundError, TableError, WeightsError
from pathkit.io.executors import Executor, task_key
from pathkit.tl import cohort as cohort_mod


def fake_tiles(job, tiles=None):
    seed = int(hashlib.sha256(Path(job.path).read_bytes()).hexdigest()[:8], 16)
    n = 3 + seed % 5
    if tiles is None:
        obs = pd.DataFrame({"x": np.arange(n) * 256, "y": 0}, index=[str(i) for i in range(n)])
        tiles = ad.AnnData(obs=obs)
        tiles.uns["tile_spec"] = dict(job.tile_kwargs)
    mseed = int(hashlib.sha256(job.tile_model.encode()).hexdigest()[:8], 16)
    tiles.obsm[job.feature_key] = np.random.default_rng(seed ^ mseed).standard_normal((tiles.n_obs, 4)).astype(np.float32)
    return tiles


def fake_embed_slide(tile_adata, model="mean", weights=None, use_rep=None, key_added="mean", **kw):
    tile_adata.uns.setdefault("slide_embeddings", {})[key_added] = np.asarray(tile_adata.obsm[use_rep]).mean(axis=0)


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def counted(job, tiles=None):
        seen.append((job.slide_id, job.tile_model, tiles is not None))
        return fake_tiles(job, tiles)

    monkeypatch.setattr(cohort_mod, "_embed_slide_tiles", counted)
    monkeypatch.setattr(pk.tl.slide_embed, "embed_slide", fake_embed_slide)
    return seen


def _slides(d: Path, n=3, tag="slide"):
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        p = d / f"s{i}.svs"
        p.write_bytes(f"{tag} {i}".encode() * 100)
        out.append(p)
    return out


def _run(slides, out, **kw):
    kw.setdefault("tile_model", "vit_tiny_test")
    kw.setdefault("progress", False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.tl.embed_cohort(slides, out, **kw)


# ---------------------------------------------------------------------------- 1. Dask keys
def test_task_keys_name_the_file_and_the_out_dir(tmp_path):
    """Same slide id and parameters, other file or other out_dir: other Dask key (was one key for all)."""
    a, b = _slides(tmp_path / "a", 1, "A")[0], _slides(tmp_path / "b", 1, "B")[0]
    job = cohort_mod.SlideJob(slide_id="s0", path=str(a), out_path=str(tmp_path / "o1" / "s0.h5ad"),
                              tile_model="vit_tiny_test", params_hash="p" * 64)
    keys = {task_key(job)}
    for change in ({"path": str(b)}, {"out_path": str(tmp_path / "o2" / "s0.h5ad")}, {"params_hash": "q" * 64}):
        keys.add(task_key(cohort_mod.SlideJob(**{**job.__dict__, **change})))
    assert len(keys) == 4
    assert task_key(job) == task_key(cohort_mod.SlideJob(**job.__dict__))  # same work, same key
    a.write_bytes(b"other content, other size")
    assert task_key(job) not in keys  # the file changed under the same path


# ---------------------------------------------------------------------------- 2. models side by side
def test_two_tile_models_share_one_out_dir(tmp_path, calls):
    slides = _slides(tmp_path / "slides")
    out = tmp_path / "out"
    a = _run(slides, out, slide_model="mean")
    first = {s: ad.read_h5ad(out / f"{s}.h5ad").obsm["X_vit_tiny_test"].copy() for s in a.obs_names}
    b = _run(slides, out, tile_model="resnet50_trunc", slide_model="mean")
    assert b.obs["status"].eq("ok").all() and "X_mean_resnet50_trunc" in b.obsm
    for s in a.obs_names:
        t = ad.read_h5ad(out / f"{s}.h5ad")
        assert {"X_vit_tiny_test", "X_resnet50_trunc"} <= set(t.obsm)
        np.testing.assert_array_equal(t.obsm["X_vit_tiny_test"], first[s])  # the first model's features kept
        assert not np.allclose(t.obsm["X_vit_tiny_test"], t.obsm["X_resnet50_trunc"])
        assert set(t.uns["slide_embeddings"]) == {"mean_vit_tiny_test", "mean_resnet50_trunc"}
        np.testing.assert_allclose(b.obsm["X_mean_resnet50_trunc"][list(b.obs_names).index(s)],
                                   t.obsm["X_resnet50_trunc"].mean(axis=0), rtol=1e-6)
    # the second model only embedded the tiles already cut (tiles=...), and going back to the first is free
    assert all(given for _, m, given in calls if m == "resnet50_trunc")
    calls.clear()
    again = _run(slides, out, slide_model="mean")
    assert calls == [] and again.obs["status"].eq("skipped").all()
    np.testing.assert_array_equal(again.obsm["X_mean_vit_tiny_test"], a.obsm["X_mean_vit_tiny_test"])


def test_other_tiling_with_other_models_present_is_refused(tmp_path, calls):
    slides = _slides(tmp_path / "slides", 1)
    out = tmp_path / "out"
    _run(slides, out)
    _run(slides, out, tile_model="resnet50_trunc")
    with pytest.raises(CohortError, match="other tiling parameters"):
        _run(slides, out, tile_kwargs={"tile_px": 224})
    assert {"X_vit_tiny_test", "X_resnet50_trunc"} <= set(ad.read_h5ad(out / "s0.h5ad").obsm)  # nothing lost


def test_old_single_model_files_still_resume(tmp_path, calls):
    """A per-slide file of an older pathkit (one params_hash for model + tiling) is reused, not recomputed."""
    slides = _slides(tmp_path / "slides", 1)
    out = tmp_path / "out"
    _run(slides, out)
    p = out / "s0.h5ad"
    t = ad.read_h5ad(p)
    legacy = cohort_mod._rec.stable_hash({"tile_model": "vit_tiny_test", "weights": None, "mpp": None,
                                          "tile_kwargs": {}, "embed_kwargs": {}})
    t.uns["cohort_job"] = {"slide_sha256": t.uns["cohort_job"]["slide_sha256"], "params_hash": legacy, "n_tiles": t.n_obs,
                           "slide_params": {}}
    t.write_h5ad(p)
    (out / cohort_mod.STATE_FILE).unlink()
    calls.clear()
    c = _run(slides, out)
    assert calls == [] and c.obs["status"].tolist() == ["skipped"]


# ---------------------------------------------------------------------------- 3. relative paths
class _ElsewhereExecutor(Executor):
    """Runs each job from another working directory, as a Dask worker started elsewhere does."""

    name = "elsewhere"

    def __init__(self, where):
        self.where = where

    def map(self, fn, jobs):
        for job in jobs:
            here = os.getcwd()
            os.chdir(self.where)
            try:
                yield fn(job)
            finally:
                os.chdir(here)


def test_relative_paths_work_on_workers_started_elsewhere(tmp_path, calls, monkeypatch):
    _slides(tmp_path / "proj" / "slides")
    (tmp_path / "worker").mkdir()
    monkeypatch.chdir(tmp_path / "proj")
    c = _run("slides", "out", executor=_ElsewhereExecutor(tmp_path / "worker"))
    assert c.obs["status"].eq("ok").all(), c.obs["error"].tolist()
    assert sorted(f.name for f in (tmp_path / "proj" / "out").glob("s*.h5ad")) == ["s0.h5ad", "s1.h5ad", "s2.h5ad"]
    assert not list((tmp_path / "worker").iterdir())
    assert all(Path(p).is_absolute() for p in c.obs["path"])


# ---------------------------------------------------------------------------- 4. models checked first
def test_models_checked_before_any_slide(tmp_path, calls):
    slides = _slides(tmp_path / "slides", 2)
    with pytest.raises(ModelNotFoundError, match="Did you mean 'gigapath_slide'"):
        _run(slides, tmp_path / "o1", slide_model="gigapath_slid")
    with pytest.raises(ModelNotFoundError, match="takes 'gigapath_tile' tile features"):
        _run(slides, tmp_path / "o2", slide_model="gigapath_slide")
    with pytest.raises(WeightsError, match="no such file"):
        _run(slides, tmp_path / "o3", weights="nowhere/w.safetensors")
    assert calls == []


def test_a_failing_slide_model_keeps_the_tile_features(tmp_path, calls, monkeypatch):
    slides = _slides(tmp_path / "slides", 2)
    out = tmp_path / "out"

    def broken(tile_adata, **kw):
        raise RuntimeError("slide encoder exploded")

    monkeypatch.setattr(pk.tl.slide_embed, "embed_slide", broken)
    with pytest.raises(CohortError, match="tile features are kept"):
        _run(slides, out, slide_model="mean")
    assert all("X_vit_tiny_test" in ad.read_h5ad(out / f"s{i}.h5ad").obsm for i in range(2))
    monkeypatch.setattr(pk.tl.slide_embed, "embed_slide", fake_embed_slide)
    calls.clear()
    c = _run(slides, out, slide_model="mean")
    assert calls == [] and c.obs["status"].eq("ok").all()  # only the slide step ran again


# ---------------------------------------------------------------------------- 5. NaN features
@pytest.mark.slow  # a real (2-block) encoder on a small synthetic slide: ~20 s on a loaded 2-core CPU
def test_nan_weights_fail_the_slide(tmp_path):
    from safetensors.torch import save_file

    enc = pk.models.build_tile_encoder("vit_tiny_test", device="cpu")
    sd = {k: v.contiguous().clone() for k, v in enc.net.state_dict().items()}
    sd["blocks.0.mlp.fc1.weight"][0, 0] = float("nan")
    w = tmp_path / "nan.safetensors"
    save_file(sd, str(w))
    slide = pk.datasets.synthetic_slide(tmp_path / "s.svs", width=768, height=512, blobs="full", seed=1)
    with pytest.raises(CohortError) as e:
        _run([slide], tmp_path / "out", weights=w, embed_kwargs={"device": "cpu", "num_workers": 0})
    msg = str(e.value)
    assert "WeightsError" in msg and "NaN or inf" in msg and str(w) in msg
    assert not (tmp_path / "out" / "s.h5ad").exists()


# ---------------------------------------------------------------------------- 6. temp files of other hosts
def test_stale_temp_clean_up_never_touches_another_hosts_file(tmp_path):
    from pathkit.tl._cohort_inputs import _clean_stale_tmp

    me = _owner.host()
    dead = tmp_path / f".a.h5ad.pk-{me}-999999999-5.tmp"
    other = tmp_path / f".b.h5ad.pk-{me}x-999999999-5.tmp"          # another host, its pid means nothing here
    alive = tmp_path / f".c.h5ad.{_owner.tag()}.tmp"               # this very process
    reused = tmp_path / f".d.h5ad.pk-{me}-{os.getpid()}-1.tmp"     # this pid, but an older process
    legacy = tmp_path / ".e.h5ad.999999999.tmp"                    # old name without a host: only when old
    for f in (dead, other, alive, reused, legacy):
        f.write_bytes(b"half")
    assert _clean_stale_tmp(tmp_path) == 2
    assert not dead.exists() and not reused.exists() and other.exists() and alive.exists() and legacy.exists()
    os.utime(legacy, (1e9, 1e9))
    assert _clean_stale_tmp(tmp_path) == 1 and not legacy.exists()


# ---------------------------------------------------------------------------- 7. verified resume
def test_resume_recomputes_damaged_features(tmp_path, calls):
    slides = _slides(tmp_path / "slides", 2)
    out = tmp_path / "out"
    ref = _run(slides, out, slide_model="mean")
    good = ad.read_h5ad(out / "s1.h5ad").obsm["X_vit_tiny_test"].copy()
    st = os.stat(out / "s1.h5ad")
    with h5py.File(out / "s1.h5ad", "r+") as f:  # bit rot: same size, same mtime, other feature bytes
        f["obsm"]["X_vit_tiny_test"][0, 0] += 1.0
    os.utime(out / "s1.h5ad", ns=(st.st_atime_ns, st.st_mtime_ns))
    calls.clear()
    c = _run(slides, out, slide_model="mean")
    assert [s for s, _, _ in calls] == ["s1"]
    assert c.obs["status"].tolist() == ["skipped", "ok"]
    np.testing.assert_array_equal(ad.read_h5ad(out / "s1.h5ad").obsm["X_vit_tiny_test"], good)
    np.testing.assert_array_equal(c.obsm["X_mean_vit_tiny_test"], ref.obsm["X_mean_vit_tiny_test"])


def test_tiles_refuse_another_file_of_the_same_size(tmp_path):
    a = pk.datasets.synthetic_slide(tmp_path / "a.svs", width=768, height=512, blobs="full", seed=1)
    b = pk.datasets.synthetic_slide(tmp_path / "b.svs", width=768, height=512, blobs="full", seed=2)
    tiles = pk.pp.tile(pk.read_slide(a))
    with pytest.raises(TableError, match="same size, other content"):
        pk.tl.embed_tiles(tiles, pk.read_slide(b), "vit_tiny_test", weights="random", device="cpu", num_workers=0)


# ---------------------------------------------------------------------------- 19. out_dir lock
def test_out_dir_lock_names_its_holder(tmp_path, calls):
    slides = _slides(tmp_path / "slides", 1)
    out = tmp_path / "out"
    out.mkdir()
    lock = out / ".pathkit.lock"
    lock.write_text(json.dumps({"host": "node-17", "pid": 4242, "start": 1, "since": "2026-01-01T00:00:00"}))
    with pytest.raises(CohortError, match=r"pid 4242 on host 'node-17'.*delete .*\.pathkit\.lock"):
        _run(slides, out)
    assert lock.exists() and calls == []  # another host's lock is never broken
    lock.write_text(json.dumps({"host": _owner.host(), "pid": os.getpid(), "start": _owner.process_start(os.getpid())}))
    with pytest.raises(CohortError, match="this host"):
        _run(slides, out)
    lock.write_text(json.dumps({"host": _owner.host(), "pid": 999999999, "start": 3}))  # a dead run of this host
    c = _run(slides, out)
    assert c.obs["status"].tolist() == ["ok"] and not lock.exists()


# ---------------------------------------------------------------------------- 7. a slide edited in place
@pytest.mark.parametrize("trust", ["stat", "sample_only"])
def test_resume_sees_a_slide_rewritten_with_size_and_mtime_restored(tmp_path, calls, monkeypatch, trust):
    """Same size, same mtime (os.utime), other bytes: the slide is hashed and computed again (the state's
    size + mtime fast path reused the old features, marked "skipped"). ``sample_only``: a file system whose
    ctime cannot be trusted (the stat seen as size + mtime only): the sampled hash still sees the change."""
    from pathkit import _hashing

    if trust == "sample_only":
        real = _hashing.stat_path
        monkeypatch.setattr(cohort_mod, "stat_path", lambda p: real(p)[:2])
        monkeypatch.setattr(_hashing, "_SHA_CACHE", {})
    slides = _slides(tmp_path / "slides", 2)
    out = tmp_path / "out"
    _run(slides, out)
    before = ad.read_h5ad(out / "s1.h5ad").obsm["X_vit_tiny_test"]
    st = os.stat(slides[1])
    data = bytearray(slides[1].read_bytes())
    data[7] ^= 0x20  # a case flip in the head: the sampled blocks cover it
    slides[1].write_bytes(bytes(data))
    os.utime(slides[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(slides[1]).st_size, os.stat(slides[1]).st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    if trust == "sample_only":
        monkeypatch.setattr(_hashing, "_SHA_CACHE", {})  # a new process: nothing cached
    calls.clear()
    c = _run(slides, out)
    assert [s for s, _, _ in calls] == ["s1"]
    assert c.obs["status"].tolist() == ["skipped", "ok"]
    assert c.obs.loc["s1", "sha256"] == hashlib.sha256(bytes(data)).hexdigest()
    assert not np.array_equal(ad.read_h5ad(out / "s1.h5ad").obsm["X_vit_tiny_test"], before)
    calls.clear()
    assert _run(slides, out).obs["status"].tolist() == ["skipped", "skipped"] and calls == []


def test_sampled_hash_covers_head_tail_and_spaced_blocks(tmp_path):
    """What the sampled hash sees, and its documented limit: a change between the sampled blocks."""
    from pathkit._hashing import SAMPLE_BLOCK_BYTES as B
    from pathkit._hashing import SAMPLE_BLOCKS as N
    from pathkit._hashing import sample_hash_file

    size = 40 * B + 123
    data = bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8))
    p = tmp_path / "f.bin"
    p.write_bytes(data)
    h0 = sample_hash_file(p)
    step = (size - B) / (N + 1)

    def flipped(i):
        d = bytearray(data)
        d[i] ^= 1
        p.write_bytes(bytes(d))
        return sample_hash_file(p)

    for i in (0, size - 1, round(5 * step) + 10):  # head, tail, inside the 5th spaced block
        assert flipped(i) != h0, i
    gap = round(step) + B + 10  # between the first spaced block and the second: not read
    assert gap < round(2 * step)
    assert flipped(gap) == h0
    p.write_bytes(data + b"\0")
    assert sample_hash_file(p) != h0  # the size is hashed
