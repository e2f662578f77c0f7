"""Tiles centred on spots, pseudo-spots on a tile grid, the plotly overlay and SpatialData both ways, on a
synthetic slide of known geometry."""
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import pathkit as pk
from pathkit.errors import TableError

pytest.importorskip("spatialdata")


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    p = pk.datasets.synthetic_slide(tmp_path_factory.mktemp("sp") / "s.svs", width=2048, height=1536, mpp=0.5,
                                    blobs=[{"kind": "rect", "x0": 0, "y0": 0, "x1": 1024, "y1": 1536}])
    return pk.read_slide(p)


def _spots(slide, n=40, seed=0):
    rng = np.random.default_rng(seed)
    xy = rng.uniform(60, [2048 - 60, 1536 - 60], size=(n, 2))
    counts = rng.poisson(4, size=(n, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pk.io.SpotWarning)
        from pathkit.spatial._spots import spots_anndata

        return spots_anndata(counts, list("ABCDE"), [f"s{i}" for i in range(n)], xy, library_id="lib",
                             spot_diameter_um=55.0, mpp=None, slide=slide, source="synthetic")


def test_tile_spots_centred_and_embedded(slide):
    sp = _spots(slide)
    pk.pp.tile_spots(slide, sp, tile_px=64, mpp=0.5)
    size0 = 64
    centre = sp.obs[["x", "y"]].to_numpy(float) + size0 / 2
    assert np.abs(centre - sp.obsm["spatial"]).max() <= 0.5
    # tissue is the left half (x < 1024): the mask at each spot equals that truth away from the border
    truth = sp.obsm["spatial"][:, 0] < 1024
    far = np.abs(sp.obsm["spatial"][:, 0] - 1024) > 64
    assert (sp.obs["on_tissue"].to_numpy()[far] == truth[far]).all()
    assert sp.uns["spot_spec"]["qc"]["n_on_tissue"] == int(sp.obs["on_tissue"].sum())
    # the tile read for the first spot is the square around it
    x, y = int(sp.obs["x"].iloc[0]), int(sp.obs["y"].iloc[0])
    np.testing.assert_array_equal(slide.read_tile(x, y, tile_px=64, mpp=0.5),
                                  slide.read_region((x, y), 0, (64, 64)))
    pk.tl.embed_tiles(sp, slide, "vit_tiny_test", weights="random", device="cpu", dtype="float32",
                      progress=False)
    assert sp.obsm["X_vit_tiny_test"].shape[0] == sp.n_obs


def test_map_spots_sums_counts_per_tile(slide):
    sp = _spots(slide)
    tiles = pk.pp.tile(slide, tile_px=128, mpp=1.0, min_tissue=0.0)
    tiles.obsm["X_f"] = np.arange(tiles.n_obs, dtype=np.float32)[:, None]
    ps = pk.tl.map_spots(tiles, sp)
    size0 = tiles.uns["tile_spec"]["size_level0"]
    col = (sp.obsm["spatial"][:, 0] // size0).astype(int)
    row = (sp.obsm["spatial"][:, 1] // size0).astype(int)
    key = pd.Series(list(zip(col, row)), index=sp.obs_names)
    want = pd.DataFrame(sp.layers["counts"].toarray(), index=sp.obs_names).groupby(key.values).sum()
    got = pd.DataFrame(ps.layers["counts"].toarray(),
                       index=list(zip((ps.obs["x"] // size0).astype(int), (ps.obs["y"] // size0).astype(int))))
    pd.testing.assert_frame_equal(got.sort_index(), want.sort_index().set_axis(got.sort_index().index),
                                  check_dtype=False)
    assert ps.obs["n_spots"].sum() == sp.n_obs
    tile_of = sp.obs["tile"].to_numpy()
    np.testing.assert_array_equal(ps.obsm["X_f"][:, 0], ps.obs_names.astype(int))
    assert set(tile_of) == set(ps.obs_names)


def test_pl_spatial_measured_and_predicted(slide):
    sp = _spots(slide)
    sp.obsm["X_e"] = np.random.default_rng(0).normal(size=(sp.n_obs, 6))
    pk.tl.predict_expression(sp, "X_e", level="spot", genes=["A", "B"], n_pcs=4, n_permutations=0, folds=3)
    fig = pk.pl.spatial(sp, color="A", slide=slide)
    assert len(fig.data) == 2 and len(fig.layout.images) == 2
    np.testing.assert_allclose(fig.data[1].marker.color, sp[:, "A"].layers["predicted"].toarray().ravel(),
                               rtol=1e-6)
    np.testing.assert_allclose(fig.data[0].marker.color, np.log1p(sp[:, "A"].layers["counts"].toarray().ravel()))
    assert len(pk.pl.spatial(sp, color="total_counts").data) == 1
    with pytest.raises(TableError, match="NOPE"):
        pk.pl.spatial(sp, color="NOPE")


def _plain(v):
    """uns values as python objects (h5ad / zarr give lists back as arrays)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_plain(x) for x in np.asarray(v).tolist()] if np.ndim(v) else v.item()
    return v.item() if isinstance(v, np.generic) else v


def test_spatialdata_round_trip(slide, tmp_path):
    import spatialdata

    tiles = pk.pp.tile(slide, tile_px=64, mpp=1.0)
    tiles.obsm["X_f"] = np.random.default_rng(1).normal(size=(tiles.n_obs, 4)).astype(np.float32)
    sp = _spots(slide)
    sdata = pk.io.to_spatialdata({"tiles": tiles, "spots": sp}, slide)
    img = sdata.images["he"]
    assert np.array_equal(img["scale0"]["image"][:, 100:164, 900:1000].values,
                          slide.read_region((900, 100), 0, (100, 64)).transpose(2, 0, 1))
    assert img["scale1"]["image"].shape == (3, 768, 1024)
    coarse = pk.io.to_spatialdata(sp, slide, image_mpp=2.0).images["he"]
    from spatialdata.transformations import get_transformation

    assert coarse.shape == (3, 384, 512)  # small enough for one level: a plain image
    np.testing.assert_allclose(get_transformation(coarse, "global").to_affine_matrix(
        ("x", "y"), ("x", "y")), [[4, 0, 0], [0, 4, 0], [0, 0, 1]])
    sdata.write(tmp_path / "x.zarr")
    back = spatialdata.read_zarr(tmp_path / "x.zarr")
    circles = back.shapes["spots"]
    np.testing.assert_allclose(np.c_[circles.geometry.x, circles.geometry.y], sp.obsm["spatial"])
    assert np.allclose(circles["radius"], sp.uns["spatial"]["lib"]["scalefactors"]["spot_diameter_fullres"] / 2)
    squares = back.shapes["tiles"].geometry.bounds
    np.testing.assert_array_equal(squares["minx"], tiles.obs["x"])
    for name, orig in (("tiles", tiles), ("spots", sp)):
        got = pk.io.from_spatialdata(back, name)
        pd.testing.assert_frame_equal(got.obs, orig.obs)
        assert set(got.obsm) == set(orig.obsm) and set(got.uns) == set(orig.uns) and set(got.layers) == set(orig.layers)
        for k in orig.obsm:
            np.testing.assert_array_equal(got.obsm[k], orig.obsm[k])
        for k in ("tile_spec", "slide", "spot_spec"):
            assert _plain(got.uns.get(k)) == _plain(orig.uns.get(k))
        assert got.shape == orig.shape
        if orig.n_vars:
            assert (sparse.csr_matrix(got.X) != sparse.csr_matrix(orig.X)).nnz == 0
            assert (got.layers["counts"] != orig.layers["counts"]).nnz == 0


def test_from_spatialdata_reads_a_lazyslide_like_zarr(tmp_path):
    """wsidata's layout: tile squares in shapes "tiles" and a features table "<model>_tiles" annotating them."""
    import geopandas as gpd
    import shapely
    from spatialdata import SpatialData
    from spatialdata.models import ShapesModel, TableModel

    x = np.array([0, 224, 448, 0]) + 1000
    y = np.array([0, 0, 0, 224]) + 500
    gdf = gpd.GeoDataFrame({"tile_id": np.arange(4)}, geometry=shapely.box(x, y, x + 224, y + 224))
    shapes = ShapesModel.parse(gdf)
    # wsidata's TileSpec.to_dict(), kept in the SpatialData's attrs under the tiles' key (wsidata.io.add_tiles)
    spec = {"height": 112, "width": 112, "stride_height": 112, "stride_width": 112, "mpp": 0.5, "ops_level": 0,
            "ops_downsample": 2.0, "base_level": 0, "base_downsample": 2.0, "tissue_name": None}
    feats = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    order = [2, 0, 3, 1]
    t = ad.AnnData(X=feats[order], obs=pd.DataFrame({"tile_id": order, "library_id": "tiles"},
                                                    index=[str(i) for i in order]))
    t.obs["library_id"] = t.obs["library_id"].astype("category")
    table = TableModel.parse(t, region="tiles", region_key="library_id", instance_key="tile_id")
    SpatialData(shapes={"tiles": shapes}, tables={"uni_tiles": table},
                attrs={"tile_spec": {"tiles": spec}}).write(tmp_path / "w.zarr")
    tiles = pk.io.from_spatialdata(tmp_path / "w.zarr")
    np.testing.assert_array_equal(tiles.obs["x"], x)
    np.testing.assert_array_equal(tiles.obs["y"], y)
    np.testing.assert_array_equal(tiles.obsm["X_uni"], feats)
    ts = tiles.uns["tile_spec"]
    assert ts["tile_px"] == 112 and ts["mpp"] == 0.5 and ts["size_level0"] == 224 and ts["overlap"] == 0


def test_tile_spots_refuses_another_slide(slide, tmp_path):
    sp = _spots(slide)
    other = pk.read_slide(pk.datasets.synthetic_slide(tmp_path / "o.svs", width=2048, height=1536, mpp=0.5,
                                                      seed=3))
    with pytest.raises(TableError, match="not .*o.svs: pass the slide the spot pixels refer to"):
        pk.pp.tile_spots(other, sp)


def test_from_spatialdata_reads_the_zarr_wsidata_writes():
    """tests/fixtures/parity/wsidata/tiles_zarr (a zarr store) was written by wsidata 0.12 itself (make_wsidata_zarr.py): its
    TileSpec sits in the SpatialData's attrs, not on the shapes; tiles of 112 px at 1 um/px on a 0.5 um/px
    slide (224 level-0 px) with 12 px overlap."""
    import json
    from pathlib import Path

    here = Path(__file__).parent / "fixtures" / "parity" / "wsidata"
    want = json.loads((here / "expected.json").read_text())
    tiles = pk.io.from_spatialdata(here / "tiles_zarr")
    np.testing.assert_array_equal(tiles.obs["x"], want["x"])
    np.testing.assert_array_equal(tiles.obs["y"], want["y"])
    np.testing.assert_array_equal(tiles.obsm["X_uni"], np.asarray(want["features"], dtype=np.float32))
    ts = tiles.uns["tile_spec"]
    assert (ts["tile_px"], ts["mpp"], ts["size_level0"], ts["overlap"]) == (112, 1.0, 224.0, 12)
    assert (want["tile_px"], want["mpp"], want["base_width"], want["overlap"]) == (112, 1.0, 224, 12)
