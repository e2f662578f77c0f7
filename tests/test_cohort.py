"""pk.tl.embed_cohort: per-slide atomic files, failures recorded, resume skips done slides, parameters
and file changes re-run, slide embeddings collected into obsm."""
from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit.errors import TableError
from pathkit.io.executors import InProcessExecutor, PoolExecutor, get_executor
from pathkit.tl import cohort as cohort_mod

TCGA = "TCGA-AD-6964-01Z-00-DX1.83AF88B9-C59B-48C6-A739-85ACB8F8ECA9"


def fake_tiles(job, tiles=None):
    """Deterministic stand-in for read -> tile -> embed: n tiles and values from the file's bytes."""
    data = open(job.path, "rb").read()
    if data.startswith(b"BAD"):
        raise ValueError(f"{job.path}: cannot read this slide (fake)")
    seed = int(hashlib.sha256(data).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    n = 3 + seed % 5
    X = rng.standard_normal((n, 4)).astype(np.float32) + job.tile_kwargs.get("shift", 0)
    obs = pd.DataFrame({"slide_id": job.slide_id, "x": np.arange(n) * 256, "y": 0},
                       index=[str(i) for i in range(n)])
    a = ad.AnnData(X=X, obs=obs)
    a.obsm[job.feature_key] = X
    a.uns["tile_spec"] = dict(job.tile_kwargs)
    return a


def fake_embed_slide(tile_adata, model="mean", weights=None, use_rep=None, key_added="mean", **kw):
    v = np.asarray(tile_adata.obsm[use_rep] if use_rep else tile_adata.X).mean(axis=0)
    tile_adata.uns.setdefault("slide_embeddings", {})[key_added] = v
    return v


@pytest.fixture
def calls(monkeypatch):
    seen = []

    def counted(job, tiles=None):
        seen.append(job.slide_id)
        return fake_tiles(job)

    monkeypatch.setattr(cohort_mod, "_embed_slide_tiles", counted)
    monkeypatch.setattr(pk.tl.slide_embed, "embed_slide", fake_embed_slide)
    return seen


@pytest.fixture
def slides(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    paths = []
    for i, name in enumerate(["a.svs", f"{TCGA}.svs", "c.tiff", "broken.svs"]):
        p = d / name
        p.write_bytes(b"BAD" if name == "broken.svs" else f"slide {i}".encode() * 100)
        paths.append(p)
    return paths


def _run(slides, out, **kw):
    kw.setdefault("tile_model", "vit_tiny_test")
    kw.setdefault("progress", False)
    with pytest.warns(UserWarning, match="1 of 4 slide"):
        return pk.tl.embed_cohort(slides, out, **kw)


def test_failures_recorded_and_resume_skips(slides, tmp_path, calls):
    out = tmp_path / "out"
    c = _run(slides, out, slide_model="mean")
    assert list(c.obs_names) == ["a", TCGA, "c", "broken"]
    assert c.obs["status"].tolist() == ["ok", "ok", "ok", "failed"]
    assert "ValueError" in c.obs.loc["broken", "error"] and "fake" in c.obs.loc["broken", "error"]
    assert c.obs.loc[TCGA, "patient_id"] == "TCGA-AD-6964" and c.obs.loc[TCGA, "slide_type"] == "DX"
    assert sorted(calls) == sorted(["a", "broken", "c", TCGA])
    # per-slide files: real tile AnnData with the job record
    for sid in ("a", TCGA, "c"):
        t = ad.read_h5ad(out / f"{sid}.h5ad")
        assert c.obs.loc[sid, "n_tiles"] == t.n_obs
        assert t.uns["cohort_job"]["slide_sha256"] == hashlib.sha256(open(c.obs.loc[sid, "path"], "rb")
                                                                       .read()).hexdigest()
        np.testing.assert_allclose(c.obsm["X_mean_vit_tiny_test"][list(c.obs_names).index(sid)], t.X.mean(axis=0), rtol=1e-6)
    assert np.isnan(c.obsm["X_mean_vit_tiny_test"][3]).all()
    assert not (out / "broken.h5ad").exists()
    assert c.uns["cohort"]["n_failed"] == 1 and c.uns["cohort"]["n_tiles"] == int(c.obs["n_tiles"].sum())
    assert ad.read_h5ad(out / "cohort.h5ad").obs["status"].tolist() == c.obs["status"].tolist()

    # resume: done slides are not computed again (only the failed one is retried)
    calls.clear()
    c2 = _run(slides, out, slide_model="mean")
    assert calls == ["broken"]
    assert c2.obs["status"].tolist() == ["skipped", "skipped", "skipped", "failed"]
    np.testing.assert_array_equal(c2.obsm["X_mean_vit_tiny_test"], c.obsm["X_mean_vit_tiny_test"])
    assert c2.obs["n_tiles"].tolist() == c.obs["n_tiles"].tolist()

    # without the state file the h5ad records still prove the slides are done (file hashed again)
    (out / cohort_mod.STATE_FILE).unlink()
    calls.clear()
    c3 = _run(slides, out, slide_model="mean")
    assert calls == ["broken"] and c3.obs["status"].tolist()[:3] == ["skipped"] * 3

    # a changed slide file is recomputed, the others are not
    slides[0].write_bytes(b"a new scan" * 50)
    calls.clear()
    c4 = _run(slides, out, slide_model="mean")
    assert sorted(calls) == ["a", "broken"]
    assert c4.obs.loc["a", "status"] == "ok"

    # changed parameters re-run every slide
    calls.clear()
    c5 = _run(slides, out, slide_model="mean", tile_kwargs={"shift": 10})
    assert sorted(calls) == sorted(["a", "broken", "c", TCGA])
    assert np.nanmean(c5.obsm["X_mean_vit_tiny_test"]) > 5
    # neutral parameters (batch size, device) do not
    calls.clear()
    _run(slides, out, slide_model="mean", tile_kwargs={"shift": 10}, embed_kwargs={"batch_size": 7})
    assert calls == ["broken"]


def test_inputs_dataframe_manifest_and_errors(slides, tmp_path, calls):
    df = pd.DataFrame({"path": [str(p) for p in slides], "slide_id": ["s1", "s2", "s3", "s4"],
                       "mpp": [0.25, None, 0.5, 0.5], "group": list("xyzw")})
    c = _run(df, tmp_path / "o1")
    assert list(c.obs_names) == ["s1", "s2", "s3", "s4"] and c.obs["group"].tolist() == list("xyzw")
    assert c.obs.loc["s1", "mpp"] == 0.25
    with pytest.raises(TableError, match="duplicate slide_id"):
        pk.tl.embed_cohort(df.assign(slide_id="same"), tmp_path / "o2", progress=False)
    # a manifest: files looked up in slide_dir, their sha256 checked before use
    man = pk.io.manifest_from_files(slides)
    man.loc[2, "sha256"] = "0" * 64
    with pytest.raises(TableError, match="pass slide_dir="):
        pk.tl.embed_cohort(man, tmp_path / "o3", progress=False)
    with pytest.warns(UserWarning, match="2 of 4"):
        c = pk.tl.embed_cohort(man, tmp_path / "o3", slide_dir=slides[0].parent, progress=False)
    assert c.obs.loc["c", "status"] == "failed" and "ChecksumError" in c.obs.loc["c", "error"]
    assert c.obs.loc["a", "status"] == "ok"
    # a folder of slides
    calls.clear()
    c = _run(slides[0].parent, tmp_path / "o4")
    assert sorted(c.obs_names) == sorted(["a", TCGA, "c", "broken"])


def test_executors_give_the_same_cohort(slides, tmp_path, calls):
    ref = _run(slides, tmp_path / "o1", slide_model="mean")
    with ThreadPoolExecutor(2) as pool:
        par = _run(slides, tmp_path / "o2", slide_model="mean", executor=pool)
    assert par.uns["pathkit"]["executor"] == "pool"
    pd.testing.assert_frame_equal(ref.obs.drop(columns=["seconds", "tile_file"]),
                                  par.obs.drop(columns=["seconds", "tile_file"]))
    np.testing.assert_array_equal(ref.obsm["X_mean_vit_tiny_test"], par.obsm["X_mean_vit_tiny_test"])
    assert isinstance(get_executor(), InProcessExecutor)
    assert isinstance(get_executor(ThreadPoolExecutor(1)), PoolExecutor)
    with pytest.raises(ValueError, match="needs client"):
        get_executor("dask")


def test_stale_tmp_files_of_dead_runs_removed(slides, tmp_path, calls):
    out = tmp_path / "out"
    out.mkdir()
    from pathkit import _owner

    dead = out / f".a.h5ad.pk-{_owner.host()}-999999999-1.tmp"  # no such pid on this host
    dead.write_bytes(b"half")
    _run(slides, out)
    assert not dead.exists()
    st = json.loads((out / cohort_mod.STATE_FILE).read_text())
    assert st["slides"]["a"]["status"] == "ok" and st["slides"]["broken"]["status"] == "failed"


@pytest.mark.slow
def test_real_slides_embed_and_fail_clearly(shared_data, tmp_path):
    """Real read -> tile -> embed with the 2-block test ViT: an SVS works, a DICOM without mpp, a text file
    renamed .svs and a zero-byte file fail with their reasons, and the run goes on."""
    fake = tmp_path / "notes.svs"
    fake.write_text("this is not a slide\n")
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    slides = [shared_data / "slides" / "CMU-1-Small-Region.svs", shared_data / "slides" / "pathml_small_dicom.dcm",
              fake, empty]
    kw = dict(tile_model="vit_tiny_test", embed_kwargs=dict(device="cpu", num_workers=0, batch_size=32),
              slide_model="mean", progress=False)
    with pytest.warns(UserWarning, match="3 of 4 slide"):
        c = pk.tl.embed_cohort(slides, tmp_path / "out", **kw)
    assert c.obs["status"].tolist() == ["ok", "failed", "failed", "failed"]
    assert "empty (0 bytes)" in c.obs.loc["empty", "error"]
    # DICOM is read since issue 24; this one has no PixelSpacing: it fails for its missing mpp
    assert "MppError" in c.obs.loc["pathml_small_dicom", "error"] and "mpp=" in c.obs.loc["pathml_small_dicom", "error"]
    assert "not a TIFF" in c.obs.loc["notes", "error"]
    t = ad.read_h5ad(tmp_path / "out" / "CMU-1-Small-Region.h5ad")
    with pk.read_slide(slides[0]) as s:
        n = len(pk.pp.tile(s))
        assert t.uns["slide"]["sha256"] == s.sha256() == t.uns["cohort_job"]["slide_sha256"]
    X = t.obsm["X_vit_tiny_test"]
    assert t.n_obs == n == c.obs.loc["CMU-1-Small-Region", "n_tiles"] and X.shape[1] == 192
    assert t.uns["models"]["X_vit_tiny_test"]["name"] == "vit_tiny_test"
    # the slide embedding (pk.tl.embed_slide, model "mean") is the mean tile feature, stored in the file too
    np.testing.assert_allclose(c.obsm["X_mean_vit_tiny_test"][0], X.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(t.uns["slide_embeddings"]["mean_vit_tiny_test"], X.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert np.isnan(c.obsm["X_mean_vit_tiny_test"][1:]).all()
