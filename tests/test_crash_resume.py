"""Crash safety: a cohort run killed with SIGKILL at random points (seeded trials, plus kills placed inside
the atomic writes) and then resumed gives exactly the outputs of an uninterrupted run: no lost, duplicated,
half-written or stale slide files."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import time
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit.tl import cohort as cohort_mod

pytestmark = pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs fork + SIGKILL")
N_SLIDES = 5
N_TRIALS = 10


def _fake_tiles(job, tiles=None):
    data = open(job.path, "rb").read()
    seed = int(hashlib.sha256(data).hexdigest()[:8], 16)
    time.sleep(0.02 + (seed % 5) * 0.01)  # work that takes time, so kills land inside it
    X = np.random.default_rng(seed).standard_normal((5 + seed % 7, 16)).astype(np.float32)
    a = ad.AnnData(X=X, obs=pd.DataFrame({"slide_id": job.slide_id}, index=[str(i) for i in range(len(X))]))
    a.obsm[job.feature_key] = X
    return a


def _fake_embed_slide(tile_adata, model="mean", weights=None, use_rep=None, key_added="mean", **kw):
    v = np.asarray(tile_adata.obsm[use_rep] if use_rep else tile_adata.X).mean(axis=0)
    tile_adata.uns.setdefault("slide_embeddings", {})[key_added] = v
    return v


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setattr(cohort_mod, "_embed_slide_tiles", _fake_tiles)
    monkeypatch.setattr(pk.tl.slide_embed, "embed_slide", _fake_embed_slide)
    d = tmp_path / "slides"
    d.mkdir()
    slides = []
    for i in range(N_SLIDES):
        p = d / f"s{i}.svs"
        p.write_bytes(f"slide number {i}".encode() * 200)
        slides.append(p)
    return slides


def _run(slides, out):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.tl.embed_cohort(slides, out, tile_model="vit_tiny_test", slide_model="mean", progress=False)


def _run_in_child(slides, out, before=None) -> int:
    """Fork; the child runs the cohort (after `before()`), the parent gets its pid."""
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        code = 0
        try:
            if before is not None:
                before()
            _run(slides, out)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    return pid


def _assert_same(ref_dir, out_dir, ref):
    expected = {f"s{i}.h5ad" for i in range(N_SLIDES)} | {cohort_mod.COHORT_FILE, cohort_mod.STATE_FILE}
    assert {p.name for p in out_dir.iterdir()} == expected  # no stale tmp file, nothing missing
    for i in range(N_SLIDES):
        a, b = ad.read_h5ad(ref_dir / f"s{i}.h5ad"), ad.read_h5ad(out_dir / f"s{i}.h5ad")
        np.testing.assert_array_equal(a.X, b.X)
        pd.testing.assert_frame_equal(a.obs, b.obs)
        assert a.uns["cohort_job"]["features"] == b.uns["cohort_job"]["features"]
        np.testing.assert_array_equal(a.uns["slide_embeddings"]["mean_vit_tiny_test"], b.uns["slide_embeddings"]["mean_vit_tiny_test"])
    c = ad.read_h5ad(out_dir / cohort_mod.COHORT_FILE)
    assert c.obs["status"].isin(["ok", "skipped"]).all()
    assert c.obs["n_tiles"].tolist() == ref.obs["n_tiles"].tolist()
    np.testing.assert_array_equal(c.obsm["X_mean_vit_tiny_test"], ref.obsm["X_mean_vit_tiny_test"])
    st = json.loads((out_dir / cohort_mod.STATE_FILE).read_text())
    assert {s["status"] for s in st["slides"].values()} <= {"ok", "skipped"} and len(st["slides"]) == N_SLIDES


@pytest.mark.slow
def test_sigkill_at_random_points_then_resume(setup, tmp_path):
    slides = setup
    ref = _run(slides, tmp_path / "ref")
    # the kill times are drawn over the duration of a whole run in a child process (measured, not assumed)
    t0 = time.perf_counter()
    os.waitpid(_run_in_child(slides, tmp_path / "timing"), 0)
    span = time.perf_counter() - t0
    rng = np.random.default_rng(2024)
    killed_early = 0
    done_at_kill = []
    for trial in range(N_TRIALS):
        out = tmp_path / f"trial{trial}"
        pid = _run_in_child(slides, out)
        time.sleep(float(rng.uniform(0.0, 1.1 * span)))
        try:
            os.kill(pid, signal.SIGKILL)
            killed_early += 1
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
        done_at_kill.append(len(list(out.glob("s*.h5ad"))) if out.exists() else 0)
        if trial % 3 == 0:  # kill the resumed run too, once in a while
            pid = _run_in_child(slides, out)
            time.sleep(float(rng.uniform(0.0, 0.5 * span)))
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
        res = _run(slides, out)
        assert res.obs["status"].isin(["ok", "skipped"]).all()
        _assert_same(tmp_path / "ref", out, ref)
    assert killed_early >= N_TRIALS // 2
    # the kills landed at different stages: before any slide, between slides, after all of them
    assert len(set(done_at_kill)) >= 2 and any(0 < k < N_SLIDES for k in done_at_kill), done_at_kill
    print("span", span, "slides done at each kill", done_at_kill)


@pytest.mark.parametrize("where", ["slide_file", "state_file", "cohort_file"])
def test_sigkill_inside_atomic_writes(setup, tmp_path, where):
    """The worst moment: the temporary file is complete but not yet renamed."""
    slides = setup
    ref = _run(slides, tmp_path / "ref")
    out = tmp_path / "out"

    def arm():
        real_replace = os.replace
        count = {"n": 0}

        def replace(src, dst):
            name = os.path.basename(str(dst))
            hit = {"slide_file": name.startswith("s") and name.endswith(".h5ad"),
                   "state_file": name == cohort_mod.STATE_FILE,
                   "cohort_file": name == cohort_mod.COHORT_FILE}[where]
            if hit:
                count["n"] += 1
                if count["n"] == (3 if where == "slide_file" else 1):
                    os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)

        os.replace = replace  # in the child process only (atomic writes go through pathkit._io)

    pid = _run_in_child(slides, out, before=arm)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert any(p.name.endswith(".tmp") for p in out.iterdir())  # the kill left a temporary file behind
    _run(slides, out)
    _assert_same(tmp_path / "ref", out, ref)
