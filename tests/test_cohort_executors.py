"""Cohorts on real (synthetic) slides with the DEFAULT arguments on every executor a user reaches for.

Dask's worker processes are daemonic and cannot start DataLoader workers; with the defaults a slide must
still be embedded there (readers in the worker process), not marked failed. Nothing here sets num_workers.
"""
from __future__ import annotations

import warnings
from concurrent.futures import ProcessPoolExecutor

import anndata as ad
import numpy as np
import pytest

import pathkit as pk
from pathkit.errors import CohortError

MODEL = "vit_tiny_test"


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("slides")
    return [pk.datasets.synthetic_slide(d / f"s{i}.svs", width=768, height=512, blobs="full", seed=i)
            for i in range(2)]


@pytest.fixture(scope="module")
def in_process(slides, tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        return pk.tl.embed_cohort(slides, tmp_path_factory.mktemp("local"), tile_model=MODEL, slide_model="mean",
                                  progress=False)


def _same(c, ref):
    assert c.obs["status"].tolist() == ["ok", "ok"], c.obs["error"].tolist()
    assert c.obs["n_tiles"].tolist() == ref.obs["n_tiles"].tolist() == [6, 6]
    np.testing.assert_allclose(c.obsm["X_mean_vit_tiny_test"], ref.obsm["X_mean_vit_tiny_test"], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_dask_local_cluster_with_defaults(slides, in_process, tmp_path):
    from distributed import Client, LocalCluster

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            c = pk.tl.embed_cohort(slides, tmp_path, tile_model=MODEL, slide_model="mean", client=client,
                                   progress=False)
    assert c.uns["pathkit"]["executor"] == "dask"
    _same(c, in_process)


@pytest.mark.slow
def test_process_pool_with_defaults(slides, in_process, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with ProcessPoolExecutor(2) as pool:
            c = pk.tl.embed_cohort(slides, tmp_path, tile_model=MODEL, slide_model="mean", executor=pool,
                                   progress=False)
    _same(c, in_process)


def test_daemonic_process_reads_in_process():
    from pathkit.tl import _tile_loader as tl

    assert not tl.in_daemon_process() and tl.default_num_workers() >= 1
    import multiprocessing as mp

    with mp.get_context("fork").Pool(1) as pool:  # Pool workers are daemonic, like Dask's
        assert pool.apply(tl.default_num_workers) == 0


def test_all_slides_failing_raises_with_the_first_errors(tmp_path):
    bad = [tmp_path / "a.svs", tmp_path / "b.svs"]
    for p in bad:
        p.write_text("not a slide")
    with pytest.raises(CohortError, match=r"all 2 slide\(s\) failed.*a: SlideReadError.*not a TIFF"):
        pk.tl.embed_cohort(bad, tmp_path / "out", tile_model=MODEL, progress=False)
    state = (tmp_path / "out" / "cohort_state.json").read_text()
    assert "not a TIFF" in state  # every error is kept for the user


def test_unknown_model_fails_before_any_slide(slides, tmp_path):
    from pathkit.errors import ModelNotFoundError

    with pytest.raises(ModelNotFoundError, match="no_such_model"):
        pk.tl.embed_cohort(slides, tmp_path, tile_model="no_such_model", progress=False)
    assert not (tmp_path / "s0.h5ad").exists()


def test_cohort_files_are_plain_anndata(in_process):
    out = in_process.uns["cohort"]["out_dir"]
    t = ad.read_h5ad(f"{out}/s0.h5ad")
    assert t.obsm[f"X_{MODEL}"].shape == (6, 192) and t.n_vars == 0
    np.testing.assert_allclose(t.uns["slide_embeddings"][f"mean_{MODEL}"], t.obsm[f"X_{MODEL}"].mean(0), rtol=1e-5,
                               atol=1e-6)


def test_cohort_obs_carries_each_slides_qc(in_process):
    """Tissue and pen area and the tiles passing QC, per slide, in the cohort table (from uns["qc"])."""
    out = in_process.uns["cohort"]["out_dir"]
    for sid in ("s0", "s1"):
        qc = ad.read_h5ad(f"{out}/{sid}.h5ad").uns["qc"]
        row = in_process.obs.loc[sid]
        assert row["tissue_area_mm2"] == pytest.approx(qc["tissue_area_mm2"]) and row["tissue_area_mm2"] > 0
        assert row["pen_area_mm2"] == pytest.approx(qc["pen_area_mm2"])
        assert row["n_qc_pass"] == qc["n_pass"] == 6
