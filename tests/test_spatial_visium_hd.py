"""Visium HD through pk.io.read_visium on a synthetic Space Ranger 3.x outs/ made at test time (no real HD
output is reachable here): bins at their tissue_positions.parquet pixels (read here with pyarrow), counts equal
to the HDF5 read with h5py, the bin grid's pitch equal to bin_size / microns_per_pixel, a painted bin found
on the tiled microscope image (a BigTIFF opened as the slide) and on Space Ranger's hires image."""
import h5py
import numpy as np
import pyarrow.parquet as pq
import pytest
from _visium_hd_outs import DROPPED, HIRES_SCALEF, MARK, MPP, make_visium_hd_outs

import pathkit as pk
from pathkit.errors import TableError

pytest.importorskip("spatialdata_io")


@pytest.fixture(scope="module")
def hd(tmp_path_factory):
    return make_visium_hd_outs(tmp_path_factory.mktemp("hd"))


@pytest.fixture(scope="module")
def bins8(hd):
    with pytest.warns(pk.io.SpotWarning, match="3 spot"):
        return pk.io.read_visium(hd["outs"], image=hd["btf"])


def _h5(path):
    """Barcodes, genes, UMIs and genes per barcode of a 10x HDF5, read with h5py and scipy."""
    from scipy import sparse

    with h5py.File(path) as f:
        m = f["matrix"]
        M = sparse.csc_matrix((m["data"][:], m["indices"][:], m["indptr"][:]), shape=tuple(m["shape"][:]))
        bc = [b.decode() for b in m["barcodes"][:]]
        genes = [g.decode() for g in m["features/name"][:]]
    return bc, genes, np.asarray(M.sum(0)).ravel(), np.diff(M.indptr)


def test_bins_at_their_parquet_pixels_and_counts_equal_the_h5(hd, bins8):
    folder = hd["outs"] / "binned_outputs" / "square_008um"
    pos = pq.read_table(folder / "spatial" / "tissue_positions.parquet").to_pandas().set_index("barcode")
    bc, genes, totals, ngenes = _h5(folder / "filtered_feature_bc_matrix.h5")
    s = bins8
    assert s.shape == (hd[8]["n_filtered"], 20) and list(s.obs_names) == bc and list(s.var_names) == genes
    np.testing.assert_array_equal(s.obsm["spatial"],
                                  pos.loc[bc, ["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy())
    np.testing.assert_array_equal(s.obs["total_counts"].to_numpy(), totals.astype(np.float64))
    np.testing.assert_array_equal(s.obs["n_genes_by_counts"].to_numpy(), ngenes)
    assert float(s.layers["counts"].sum()) == float(totals.sum())
    np.testing.assert_array_equal(s.obs[["array_row", "array_col"]].to_numpy(),
                                  pos.loc[bc, ["array_row", "array_col"]].to_numpy())
    # the barcode names its grid position: s_008um_<row>_<col>-1
    r, c = s.obs_names[0].removesuffix("-1").split("_")[2:]
    assert (int(r), int(c)) == tuple(s.obs[["array_row", "array_col"]].iloc[0])


def test_bin_pitch_is_bin_size_over_mpp(bins8):
    s = bins8
    rc = {(r, c): i for i, (r, c) in enumerate(s.obs[["array_row", "array_col"]].to_numpy())}
    steps = [np.linalg.norm(s.obsm["spatial"][rc[(r, c + 1)]] - s.obsm["spatial"][i])
             for (r, c), i in rc.items() if (r, c + 1) in rc]
    np.testing.assert_allclose(steps, 8 / MPP, rtol=1e-9)  # 8 um bins at 0.5 um/px: 16 px apart


def test_spot_spec_and_scanpy_layout(hd, bins8):
    spec = bins8.uns["spot_spec"]
    assert spec["spot_diameter_um"] == 8 and spec["bin_size_um"] == 8 and spec["spot_shape"] == "square"
    assert spec["assay"] == "visium_hd" and spec["mpp"] == MPP and spec["bin_sizes_available"] == [2, 8, 16]
    assert spec["report"]["n_spots_without_counts"] == 3
    assert sorted(spec["report"]["spots_without_counts"]) == sorted(DROPPED)
    assert spec["slide"]["dimensions"] == [1000, 800] and spec["slide"]["mpp"] == pytest.approx(MPP)
    sf = bins8.uns["spatial"]["outs"]["scalefactors"]
    assert sf["spot_diameter_fullres"] == 16 and sf["tissue_hires_scalef"] == HIRES_SCALEF
    assert bins8.uns["spatial"]["outs"]["images"]["hires"].shape == (320, 400, 3)


def test_painted_bin_on_the_slide_and_the_hires_image(hd, bins8):
    name = f"s_008um_{MARK[0]:05d}_{MARK[1]:05d}-1"
    x, y = bins8[name].obsm["spatial"][0]
    cx, cy = round(float(x)), round(float(y))
    slide = pk.read_slide(hd["btf"])
    patch = slide.read_region((cx - 5, cy - 5), 0, (11, 11))[..., :3]
    assert (patch == (255, 0, 0)).all()  # the bin's 16 x 16 px square, around its centre
    far = slide.read_region((cx + 12, cy - 2), 0, (4, 4))[..., :3]
    assert not (far == (255, 0, 0)).all(-1).any()  # the next bin is not painted
    hires = bins8.uns["spatial"]["outs"]["images"]["hires"]
    hx, hy = int(x * HIRES_SCALEF), int(y * HIRES_SCALEF)
    np.testing.assert_allclose(hires[hy, hx], (1.0, 0.0, 0.0), atol=0.02)
    # a tile centred on the bin is red in its middle
    t = pk.pp.tile_spots(slide, bins8[[name]].copy(), tile_px=32, mpp=MPP, copy=True)
    tile = slide.read_region((int(t.obs["x"].iloc[0]), int(t.obs["y"].iloc[0])), 0, (32, 32))[..., :3]
    assert (tile[11:21, 11:21] == (255, 0, 0)).all()


def test_other_bin_sizes_and_raw_counts(hd):
    b16 = pk.io.read_visium(hd["outs"], bin_size=16)
    assert b16.n_obs == hd[16]["n_filtered"] and b16.uns["spot_spec"]["spot_diameter_um"] == 16
    assert b16.uns["spatial"]["outs"]["scalefactors"]["spot_diameter_fullres"] == 32
    raw = pk.io.read_visium(hd["outs"], bin_size=16, counts_file="raw_feature_bc_matrix.h5")
    assert raw.n_obs == hd[16]["n_bins"]
    # the 16 um bins tile the same 2 um squares as the 8 um ones: same total over the raw matrices
    raw8 = pk.io.read_visium(hd["outs"], counts_file="raw_feature_bc_matrix.h5")
    assert float(raw8.layers["counts"].sum()) == float(raw.layers["counts"].sum())


def test_hd_bad_inputs(hd, tmp_path, shared_data):
    with pytest.raises(TableError, match=r"no bins of 5 um; this output has square bins of \[2, 8, 16\]"):
        pk.io.read_visium(hd["outs"], bin_size=5)
    with pytest.raises(TableError, match="bin_size=8 is for Visium HD"):
        pk.io.read_visium(shared_data / "spatial" / "visium_heart_subset", bin_size=8)
    with pytest.raises(TableError, match="counts_file="):
        pk.io.read_visium(hd["outs"], counts_file="matrix.h5")
    import shutil

    outs = tmp_path / "outs"
    shutil.copytree(hd["outs"], outs, ignore=shutil.ignore_patterns("square_002um"))
    spatial = outs / "binned_outputs" / "square_016um" / "spatial"
    pos = pq.read_table(spatial / "tissue_positions.parquet").to_pandas()
    kept, _, _, _ = _h5(spatial.parent / "filtered_feature_bc_matrix.h5")
    pos[pos["barcode"] != kept[0]].to_parquet(spatial / "tissue_positions.parquet", index=False)
    with pytest.raises(TableError, match=rf"1 of {len(kept)} bin\(s\) \(e.g. \['{kept[0]}'\]\) have no row in "
                                         "tissue_positions.parquet"):
        pk.io.read_visium(outs, bin_size=16)
    (spatial / "scalefactors_json.json").unlink()
    with pytest.raises(TableError, match="scalefactors_json.json is missing"):
        pk.io.read_visium(outs, bin_size=16)
    with pytest.raises(TableError, match=r"square bins of \[8, 16\]"):
        pk.io.read_visium(outs, bin_size=2)


def test_hd_bins_as_squares_in_spatialdata(bins8):
    pytest.importorskip("spatialdata")
    sd = pk.io.to_spatialdata(bins8, image=False)
    geom = sd.shapes["spots"].geometry
    b = geom.bounds
    np.testing.assert_allclose(b["maxx"] - b["minx"], 16.0)
    np.testing.assert_allclose(geom.centroid.x, bins8.obsm["spatial"][:, 0])
    back = pk.io.from_spatialdata(sd, "spots")
    np.testing.assert_array_equal(back.obsm["spatial"], bins8.obsm["spatial"])


def test_hd_bins_draw_in_scanpy_and_squidpy_and_write(bins8, tmp_path):
    import warnings

    import anndata as ad
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc
    import squidpy as sq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pl.spatial(bins8, color=["ERBB2", "total_counts"], show=False)
        sq.pl.spatial_scatter(bins8, color="ERBB2", shape="square")
        n_axes = len(plt.gcf().axes)
        plt.close("all")
    assert n_axes >= 1
    bins8.write_h5ad(tmp_path / "bins.h5ad")
    back = ad.read_h5ad(tmp_path / "bins.h5ad")
    np.testing.assert_array_equal(back.obsm["spatial"], bins8.obsm["spatial"])
    assert back.uns["spot_spec"]["spot_shape"] == "square"
