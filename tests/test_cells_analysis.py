"""Cells (issue 23) downstream: per-tile and per-slide composition, QuPath round trip, plot, squidpy graph."""
from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit.cells import cell_polygons, synthetic_nuclei, write_rgb_slide

MPP = 0.5


@pytest.fixture(scope="module")
def typed(tmp_path_factory):
    """Segmented generated nuclei with a known 'type': left half 'lymphocyte', right half 'tumour'."""
    rgb, truth = synthetic_nuclei(512, 512, MPP, n=40, touching_pairs=4, border_cells=4, random_state=11)
    slide = pk.read_slide(write_rgb_slide(tmp_path_factory.mktemp("typed") / "typed.tif", rgb, MPP))
    tiles = pk.pp.tile(slide, tile_px=256, mpp=MPP, min_tissue=0.0, qc=False)
    cells = pk.tl.segment_cells(tiles, slide, model="watershed", progress=False)
    cells.obs["cell_type"] = pd.Categorical(np.where(cells.obs["x"] < 256, "lymphocyte", "tumour"),
                                            categories=["lymphocyte", "tumour"])
    return slide, tiles, cells, truth


def test_cell_composition_into_cohort(typed):
    slide, _, cells, truth = typed
    cohort = ad.AnnData(obs=pd.DataFrame(index=["other_slide", slide.slide_id]))
    table = pk.tl.cell_composition(cells, cohort=cohort)
    n_left = int((truth["x"] < 256).sum())
    row = table.loc[slide.slide_id]
    assert row["n_cells"] == len(truth)
    assert row["share_lymphocyte"] == pytest.approx(n_left / len(truth))
    area_mm2 = (512 * MPP / 1000) ** 2  # four 256-px tiles cover the image
    assert row["cells_per_mm2"] == pytest.approx(len(truth) / area_mm2)
    assert row["area_um2_mean"] == pytest.approx(truth["area_um2"].mean(), rel=0.05)
    assert np.isnan(cohort.obs.loc["other_slide", "cells_n_cells"])
    assert cohort.obs.loc[slide.slide_id, "cells_share_tumour"] == pytest.approx(1 - n_left / len(truth))
    assert list(cohort.obsm["cells_composition"].columns) == list(table.columns)
    with pytest.raises(pk.errors.TableError, match="not rows of the cohort"):
        pk.tl.cell_composition({"nope": cells}, cohort=cohort)


def test_qupath_round_trip(typed, tmp_path):
    slide, _, cells, _ = typed
    path = pk.io.write_geojson(cells, tmp_path / "cells.geojson")
    doc = json.loads(path.read_text())
    assert len(doc["features"]) == cells.n_obs
    props = doc["features"][0]["properties"]
    assert props["objectType"] == "detection"
    assert props["classification"]["name"] in ("lymphocyte", "tumour")
    assert set(props["measurements"]) >= {"area_um2", "perimeter_um", "solidity"}
    back = pk.io.read_qupath_cells(path, slide)
    assert back.n_obs == cells.n_obs
    # the outline's centroid is within a fraction of a pixel of the mask centroid
    assert np.abs(back.obsm["spatial"] - cells.obsm["spatial"]).max() < 0.5
    assert back.obs["cell_type"].astype(str).tolist() == cells.obs["cell_type"].astype(str).tolist()
    np.testing.assert_allclose(back.obs["area_um2"], cells.obs["area_um2"])
    assert all(a.equals_exact(b, 1e-6) for a, b in zip(cell_polygons(back), cell_polygons(cells)))
    with pytest.raises(pk.errors.TableError, match="no detection"):
        pk.io.write_geojson(pk.pp.find_tissue(slide), tmp_path / "tissue.geojson")
        pk.io.read_qupath_cells(tmp_path / "tissue.geojson")


def test_pl_cells_outlines_then_thinned(typed):
    slide, _, cells, _ = typed
    fig = pk.pl.cells(cells, slide=slide)
    names = [t.name for t in fig.data]
    assert names[0] == "slide" and {"lymphocyte", "tumour"} <= set(names)
    lines = [t for t in fig.data if getattr(t, "mode", None) == "lines"]
    assert sum(np.sum(np.array(t.x, dtype=object) == None) for t in lines) == cells.n_obs
    thin = pk.pl.cells(cells, color="area_um2", max_points=10, max_outlines=5)
    pts = [t for t in thin.data if getattr(t, "mode", None) == "markers"]
    assert sum(len(t.x) for t in pts) == 10 and "10 of" in thin.layout.title.text
    with pytest.raises(KeyError, match="not a column"):
        pk.pl.cells(cells, color="nope")


@pytest.mark.slow  # importing squidpy and compiling its numba kernels: about 20 s
def test_squidpy_cell_graph(typed):
    sq = pytest.importorskip("squidpy")
    _, _, cells, _ = typed
    c = cells.copy()
    sq.gr.spatial_neighbors(c, coord_type="generic", delaunay=True)
    adj = c.obsp["spatial_connectivities"]
    assert adj.shape == (c.n_obs, c.n_obs) and adj.nnz >= 2 * (c.n_obs - 3)  # a planar triangulation
    sq.gr.nhood_enrichment(c, cluster_key="cell_type", seed=0, n_perms=50, show_progress_bar=False)
    z = c.uns["cell_type_nhood_enrichment"]["zscore"]
    # types split left/right: each type neighbours itself more than chance, the other less
    assert z[0, 0] > 2 and z[1, 1] > 2 and z[0, 1] < -2
