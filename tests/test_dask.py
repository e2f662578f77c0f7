"""embed_cohort on a Dask LocalCluster with 2 worker processes: one task per slide, results equal to an
in-process run, a slide that fails (or a task the executor loses) recorded without stopping the cohort."""
from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pandas as pd
import pytest

import pathkit as pk

distributed = pytest.importorskip("distributed")


def _fake_tiles(job, tiles=None):
    """Stand-in for read -> tile -> embed (values from the file's bytes), recording the worker's pid."""
    import hashlib

    import anndata as ad

    data = open(job.path, "rb").read()
    if data.startswith(b"BAD"):
        raise ValueError(f"{job.path}: unreadable (fake)")
    time.sleep(0.3)  # long enough for both workers to get tasks
    seed = int(hashlib.sha256(data).hexdigest()[:8], 16)
    X = np.random.default_rng(seed).standard_normal((2 + seed % 4, 8)).astype(np.float32)
    a = ad.AnnData(X=X, obs=pd.DataFrame({"slide_id": job.slide_id}, index=[str(i) for i in range(len(X))]))
    a.obsm[job.feature_key] = X
    a.uns["worker_pid"] = os.getpid()
    return a


def _fake_embed_slide(tile_adata, model="mean", weights=None, use_rep=None, key_added="mean", **kw):
    v = np.asarray(tile_adata.obsm[use_rep] if use_rep else tile_adata.X).mean(axis=0)
    tile_adata.uns.setdefault("slide_embeddings", {})[key_added] = v
    return v


def _install_fakes():
    import pathkit.tl.cohort as c
    import pathkit.tl.slide_embed as se

    c._embed_slide_tiles = _fake_tiles
    se.embed_slide = _fake_embed_slide
    return os.getpid()


@pytest.fixture(scope="module")
def client():
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                               memory_limit="2GiB")
        cl = Client(cluster)
    yield cl
    cl.close()
    cluster.close()


@pytest.fixture
def slides(tmp_path):
    d = tmp_path / "slides"
    d.mkdir()
    out = []
    for i in range(6):
        p = d / f"s{i}.svs"
        p.write_bytes(b"BAD" if i == 4 else f"slide {i}".encode() * 64)
        out.append(p)
    return out


@pytest.mark.slow
def test_dask_two_workers_equals_in_process(client, slides, tmp_path, monkeypatch):
    import anndata as ad

    pids = set(client.run(_install_fakes).values())
    assert len(pids) == 2
    with pytest.warns(UserWarning, match="1 of 6"):
        dk = pk.tl.embed_cohort(slides, tmp_path / "dask", tile_model="vit_tiny_test", slide_model="mean",
                                client=client, progress=False)
    assert dk.uns["pathkit"]["executor"] == "dask"
    assert dk.obs["status"].tolist() == ["ok"] * 4 + ["failed", "ok"]
    assert "unreadable (fake)" in dk.obs.loc["s4", "error"]
    used = {int(ad.read_h5ad(tmp_path / "dask" / f"s{i}.h5ad").uns["worker_pid"]) for i in (0, 1, 2, 3, 5)}
    assert used == pids  # both workers did slides, none ran in this process

    monkeypatch.setattr(pk.tl.cohort, "_embed_slide_tiles", _fake_tiles)
    monkeypatch.setattr(pk.tl.slide_embed, "embed_slide", _fake_embed_slide)
    with pytest.warns(UserWarning, match="1 of 6"):
        ref = pk.tl.embed_cohort(slides, tmp_path / "local", tile_model="vit_tiny_test", slide_model="mean",
                                 progress=False)
    assert ref.obs["n_tiles"].tolist() == dk.obs["n_tiles"].tolist()
    np.testing.assert_array_equal(ref.obsm["X_mean_vit_tiny_test"], dk.obsm["X_mean_vit_tiny_test"])

    # resume through Dask: nothing is sent for done slides (the failed one is retried)
    with pytest.warns(UserWarning, match="1 of 6"):
        again = pk.tl.embed_cohort(slides, tmp_path / "dask", tile_model="vit_tiny_test", slide_model="mean",
                                   client=client, progress=False)
    assert again.obs["status"].tolist() == ["skipped"] * 4 + ["failed", "skipped"]


def _explode(job):
    raise RuntimeError(f"infrastructure trouble with {job}")


@pytest.mark.slow
def test_dask_executor_turns_task_errors_into_failed_results(client):
    from pathkit.io.executors import DaskExecutor

    ex = DaskExecutor(client, retries=0)
    out = sorted(ex.map(_explode, ["j1", "j2"]), key=lambda r: str(r["error"]))
    assert [r["status"] for r in out] == ["failed", "failed"]
    assert "RuntimeError: infrastructure trouble with j1 (executor)" == out[0]["error"]
