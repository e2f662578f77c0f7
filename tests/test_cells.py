"""Cells (issue 23): the watershed baseline against generated nuclei of known count, size and position."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

import pathkit as pk
from pathkit.cells import cell_polygons, haematoxylin, synthetic_nuclei, write_rgb_slide
from pathkit.errors import ModelNotFoundError, WeightsError

MPP = 0.5


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    rgb, truth = synthetic_nuclei(768, 768, MPP, n=70, touching_pairs=8, border_cells=8, tile_px=256,
                                  random_state=7)
    path = write_rgb_slide(tmp_path_factory.mktemp("cells") / "nuclei.tif", rgb, MPP)
    return pk.read_slide(path), truth


def _match(cells, truth):
    """For each true nucleus, the distance (um) to the nearest cell and that cell's index."""
    d, i = cKDTree(cells.obsm["spatial"]).query(truth[["x", "y"]].to_numpy())
    return d * MPP, i


@pytest.mark.parametrize("overlap", [0, 128])  # both grids cover the 768-px image
def test_generated_nuclei_count_area_position(generated, overlap):
    slide, truth = generated
    tiles = pk.pp.tile(slide, tile_px=256, mpp=MPP, min_tissue=0.0, overlap=overlap, qc=False)
    cells = pk.tl.segment_cells(tiles, slide, model="watershed", progress=False)
    assert abs(cells.n_obs - len(truth)) <= 0.05 * len(truth)
    dist_um, idx = _match(cells, truth)
    assert dist_um.max() <= 2.0
    assert len(set(idx)) == len(truth)  # touching pairs split: each nucleus its own cell
    rel = cells.obs["area_um2"].to_numpy()[idx] / truth["area_um2"].to_numpy() - 1
    assert np.abs(rel).max() <= 0.10
    # a nucleus cut by a tile edge is one cell: exactly one cell within 3 um of each border nucleus
    tree = cKDTree(cells.obsm["spatial"])
    border = truth[truth["kind"] == "border"][["x", "y"]].to_numpy()
    assert len(border) == 8
    assert [len(tree.query_ball_point(p, 3.0 / MPP)) for p in border] == [1] * len(border)
    # the per-tile counts add up and each cell names its owner tile
    assert tiles.obs["cells_count"].sum() == cells.n_obs
    size0 = tiles.uns["tile_spec"]["size_level0"]
    tx = tiles.obs["x"].to_numpy()[cells.obs["tile"].cat.codes.to_numpy()]
    assert np.all((cells.obs["x"] >= tx) & (cells.obs["x"] < tx + size0))
    expected = tiles.obs["cells_count"] / (size0 * MPP / 1000) ** 2
    np.testing.assert_allclose(tiles.obs["cells_per_mm2"], expected)


def test_polygons_match_masks_and_stream_to_parquet(generated, tmp_path):
    slide, _ = generated
    tiles = pk.pp.tile(slide, tile_px=384, mpp=MPP, min_tissue=0.0, qc=False)
    cells = pk.tl.segment_cells(tiles, slide, model="watershed", progress=False)
    polys = cell_polygons(cells)
    # contour polygons run through pixel edges' midpoints: a little smaller than the pixel count
    ratio = np.array([p.area for p in polys]) * MPP ** 2 / cells.obs["area_um2"].to_numpy()
    assert 0.8 < ratio.min() and ratio.max() <= 1.0
    assert all(p.contains(pk_point) for p, pk_point in zip(polys, _points(cells)))
    with pytest.warns(UserWarning, match="stream to"):
        spilled = pk.tl.segment_cells(tiles, slide, model="watershed", progress=False, max_cells_in_memory=10)
    assert "polygon_wkb" not in spilled.obs
    where = spilled.uns["cells"]["polygons"]
    assert where.endswith(".parquet")
    back = cell_polygons(spilled)
    assert len(back) == cells.n_obs
    assert [p.equals(q) for p, q in zip(back, polys)] == [True] * len(polys)
    out = tmp_path / "mine.parquet"
    chosen = pk.tl.segment_cells(tiles, slide, model="watershed", progress=False, polygons_path=out)
    assert out.is_file() and chosen.uns["cells"]["polygons"] == str(out)
    cells.write_h5ad(tmp_path / "cells.h5ad")  # h5ad-safe: hex WKB, categorical tile


def _points(cells):
    import shapely

    return shapely.points(cells.obsm["spatial"])


@pytest.mark.filterwarnings("ignore:glass. no tissue found")
def test_tile_without_tissue_has_no_cells(tmp_path):
    blank = np.full((512, 512, 3), 243, np.uint8)
    slide = pk.read_slide(write_rgb_slide(tmp_path / "glass.tif", blank, MPP))
    tiles = pk.pp.tile(slide, tile_px=256, mpp=MPP, min_tissue=0.0, qc=False)
    cells = pk.tl.segment_cells(tiles, slide, model="watershed", progress=False)
    assert cells.n_obs == 0 and tiles.obs["cells_count"].tolist() == [0, 0, 0, 0]
    assert cells.obsm["spatial"].shape == (0, 2)


def test_missing_weights_and_unknown_model(generated):
    slide, _ = generated
    tiles = pk.pp.tile(slide, tile_px=256, mpp=MPP, min_tissue=0.0, qc=False)
    with pytest.raises(WeightsError, match="watershed"):
        pk.tl.segment_cells(tiles, slide, progress=False)  # default instanseg: no weights offline
    with pytest.raises(ModelNotFoundError, match="known"):
        pk.tl.segment_cells(tiles, slide, model="stardist", progress=False)
    with pytest.raises(pk.errors.TableError, match="pk.pp.tile"):
        pk.tl.segment_cells(tiles.obs, slide, model="watershed")


def test_fluorescence_is_refused(shared_data):
    with pytest.warns(UserWarning, match="read anyway"):
        dapi = pk.read_slide(shared_data / "slides" / "Stritt_test3-DAPI.ndpi", allow_non_brightfield=True)
    tiles = pk.pp.tile(dapi, tile_px=256, mpp=0.5, min_tissue=0.0, qc=False)
    with pytest.raises(pk.errors.NotBrightfieldError, match="DAPI"):
        pk.tl.segment_cells(tiles[:2].copy(), dapi, model="watershed", progress=False)


def test_real_tma_core_nuclei(shared_data):
    """InstanSeg's real H&E TMA core: no annotations, so bounds a pathologist would accept for 0.5-um nuclei."""
    core = pk.read_slide(shared_data / "nuclei" / "instanseg" / "HE_example.tif")
    tiles = pk.pp.tile(core, tile_px=256, mpp=0.5, min_tissue=0.5, qc=False)
    cells = pk.tl.segment_cells(tiles[:4].copy(), core, model="watershed", progress=False)
    density = cells.n_obs / (4 * (256 * 0.5 / 1000) ** 2)
    assert 1000 < density < 20000  # nuclei per mm^2 of cellular tissue
    assert 5 < cells.obs["area_um2"].median() < 60
    assert (cells.obs["hematoxylin_od"] > 0.1).all()  # above the threshold by construction


def test_haematoxylin_equals_rgb2hed():
    from skimage.color import rgb2hed

    rgb = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    rgb[0, :3] = [[0, 0, 0], [255, 255, 255], [40, 20, 90]]
    ref = rgb2hed(rgb)[..., 0]
    np.testing.assert_allclose(haematoxylin(rgb), ref, atol=1e-6)
