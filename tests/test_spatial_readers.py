"""Spatial transcriptomics readers on real data (her2st C2, a Space Ranger 1.0 Visium subset, a DeepSpot
Xenium h5ad) against independent truths read here with the csv / h5py modules, and bad inputs."""
import csv
import gzip
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit.errors import TableError

pytest.importorskip("spatialdata_io")

HER2ST_MPP = 0.7  # README: about 0.70 um/px (the 200-um ST pitch is 289-292 px in the JPEG)


@pytest.fixture(scope="module")
def her2st(shared_data):
    return shared_data / "spatial" / "her2st"


@pytest.fixture(scope="module")
def her2st_spots(her2st):
    return pk.io.read_st(her2st / "C2.tsv.gz", her2st / "C2_selection.tsv", mpp=HER2ST_MPP)


def test_read_st_counts_equal_the_tsv(her2st, her2st_spots):
    with gzip.open(her2st / "C2.tsv.gz", "rt") as fh:
        rows = list(csv.reader(fh, delimiter="\t"))
    genes = rows[0][1:]
    totals = {r[0]: sum(int(v) for v in r[1:]) for r in rows[1:]}
    nnz = {r[0]: sum(v != "0" for v in r[1:]) for r in rows[1:]}
    sp = her2st_spots
    assert sp.shape == (187, 15706) == (len(totals), len(genes))
    assert list(sp.var_names) == genes
    assert sp.obs["total_counts"].to_dict() == {k: float(v) for k, v in totals.items()}
    assert sp.obs["n_genes_by_counts"].to_dict() == nnz
    assert float(sp.layers["counts"].sum()) == sum(totals.values())
    assert (sp.X != sp.layers["counts"]).nnz == 0 and sp.X is not sp.layers["counts"]
    j = genes.index("ERBB2")
    assert sp[rows[1][0], "ERBB2"].X.toarray().item() == int(rows[1][1 + j])


def test_read_st_positions_and_uns(her2st, her2st_spots):
    sel = pd.read_csv(her2st / "C2_selection.tsv", sep="\t")
    sel.index = [f"{x}x{y}" for x, y in zip(sel["x"], sel["y"])]
    sp = her2st_spots
    np.testing.assert_array_equal(sp.obsm["spatial"], sel.loc[sp.obs_names, ["pixel_x", "pixel_y"]].to_numpy())
    assert sp.obsm["spatial"].dtype == np.float64
    sf = sp.uns["spatial"]["C2"]["scalefactors"]
    assert sf["spot_diameter_fullres"] == pytest.approx(100 / HER2ST_MPP)
    spec = sp.uns["spot_spec"]
    assert spec["spot_diameter_um"] == 100 and spec["mpp"] == HER2ST_MPP and spec["library_id"] == "C2"
    assert spec["report"]["n_spots_without_counts"] == 0 and spec["report"]["n_counts_without_spots"] == 0


@pytest.fixture(scope="module")
def visium(shared_data):
    with pytest.warns(pk.io.SpotWarning, match="4135 spot"):
        return pk.io.read_visium(shared_data / "spatial" / "visium_heart_subset")


def test_read_visium_barcodes_at_tissue_positions(shared_data, visium):
    outs = shared_data / "spatial" / "visium_heart_subset"
    with h5py.File(outs / "filtered_feature_bc_matrix.h5") as f:
        barcodes = [b.decode() for b in f["matrix/barcodes"][:]]
        total = f["matrix/data"][:].sum()
    with open(outs / "spatial" / "tissue_positions_list.csv") as fh:
        pos = {r[0]: (int(r[1]), float(r[5]), float(r[4])) for r in csv.reader(fh)}
    v = visium
    assert v.shape == (100, 100) and sorted(v.obs_names) == sorted(barcodes)
    want = np.array([pos[b][1:] for b in v.obs_names])
    np.testing.assert_array_equal(v.obsm["spatial"], want)
    assert float(v.layers["counts"].sum()) == total
    on = sum(p[0] for p in pos.values())
    assert v.uns["spot_spec"]["report"]["n_spots_without_counts"] == on - 100
    sf = v.uns["spatial"]["visium_heart_subset"]["scalefactors"]
    assert sf["tissue_hires_scalef"] == pytest.approx(0.150015)
    assert v.uns["spot_spec"]["mpp"] == pytest.approx(55 / sf["spot_diameter_fullres"])
    assert v.uns["spatial"]["visium_heart_subset"]["images"]["lowres"].shape == (600, 600, 3)


def draw_with_scanpy_and_squidpy(adata, gene):
    """sc.pl.spatial and squidpy.pl.spatial_scatter on the spots as they are (over their hires image)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import scanpy as sc
    import squidpy as sq

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc.pl.spatial(adata, color=[gene, "total_counts"], show=False)
        sq.pl.spatial_scatter(adata, color=gene)
        n_axes = len(plt.gcf().axes)
        plt.close("all")
    assert n_axes >= 1


def test_scanpy_and_squidpy_draw_visium_spots(visium):
    draw_with_scanpy_and_squidpy(visium, visium.var_names[0])


def test_read_spots_deepspot_h5ad(shared_data):
    import anndata as ad

    f = shared_data / "spatial" / "xenium_ncbi858" / "NCBI858.h5ad"
    raw = ad.read_h5ad(f)
    x = pk.io.read_spots(f, spot_diameter_um=20, mpp=1.0)
    assert x.shape == (200, 338)
    np.testing.assert_array_equal(x.obsm["spatial"], raw.obs[["x_pixel", "y_pixel"]].to_numpy())
    assert float(x.layers["counts"].sum()) == float(raw.X.sum())
    assert x.uns["spatial"]["NCBI858"]["scalefactors"]["spot_diameter_fullres"] == 20


def _write_10x_h5(path, counts, barcodes, genes):
    from scipy import sparse

    m = sparse.csc_matrix(counts.T)  # 10x stores genes x cells, CSC over cells
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["barcodes"] = np.array(barcodes, dtype="S")
        g["data"], g["indices"], g["indptr"] = m.data.astype(np.int32), m.indices, m.indptr
        g["shape"] = np.array(m.shape, dtype=np.int32)
        ft = g.create_group("features")
        ft["id"] = np.array([f"ENSG{i:05d}" for i in range(len(genes))], dtype="S")
        ft["name"] = np.array(genes, dtype="S")
        ft["feature_type"] = np.array(["Gene Expression"] * len(genes), dtype="S")
        ft["genome"] = np.array(["GRCh38"] * len(genes), dtype="S")
        ft["_all_tag_keys"] = np.array([b"genome"])


def test_read_xenium_synthetic_bundle(tmp_path):
    """A tiny Xenium-like folder (no real Xenium output is in the test data): centroids in um go through
    0.2125 um/px and the inverse of a known H&E alignment."""
    rng = np.random.default_rng(0)
    n, g = 30, 6
    counts = rng.poisson(2, size=(n, g))
    cells = [f"c{i}" for i in range(n)]
    _write_10x_h5(tmp_path / "cell_feature_matrix.h5", counts, cells, [f"G{j}" for j in range(g)])
    he_xy = rng.uniform(100, 900, size=(n, 2))
    A = np.array([[2.0, 0.1, 30.0], [-0.1, 2.0, 12.0], [0, 0, 1]])  # H&E px -> Xenium px
    xen = (A @ np.c_[he_xy, np.ones(n)].T).T[:, :2]
    pd.DataFrame({"cell_id": cells[:-1], "x_centroid": xen[:-1, 0] * 0.2125, "y_centroid": xen[:-1, 1] * 0.2125,
                  "cell_area": 50.0}).to_csv(tmp_path / "cells.csv.gz", index=False)
    np.savetxt(tmp_path / "he_imagealignment.csv", A, delimiter=",")
    slide_path = pk.datasets.synthetic_slide(tmp_path / "he.tif", width=1024, height=1024, mpp=0.5)
    with pytest.warns(pk.io.SpotWarning, match="1 count row"):
        x = pk.io.read_xenium(tmp_path, image=slide_path, alignment=tmp_path / "he_imagealignment.csv")
    assert x.shape == (n - 1, g)
    np.testing.assert_allclose(x.obsm["spatial"], he_xy[:-1], atol=1e-6)
    np.testing.assert_array_equal(x.layers["counts"].toarray(), counts[:-1])
    assert x.uns["spot_spec"]["report"]["counts_without_spots"] == ["c29"]
    with pytest.raises(TableError, match="alignment"), warnings.catch_warnings():
        warnings.simplefilter("ignore", pk.io.SpotWarning)
        pk.io.read_xenium(tmp_path, image=slide_path)


# ---------------------------------------------------------------- bad input
def _st_files(tmp_path, counts: pd.DataFrame, px: np.ndarray, names=None):
    names = list(counts.index) if names is None else names
    counts.to_csv(tmp_path / "c.tsv", sep="\t")
    xy = [n.split("x") for n in names]
    pd.DataFrame({"x": [int(a) for a, _ in xy], "y": [int(b) for _, b in xy], "pixel_x": px[:, 0],
                  "pixel_y": px[:, 1]}).to_csv(tmp_path / "s.tsv", sep="\t", index=False)
    return tmp_path / "c.tsv", tmp_path / "s.tsv"


def _counts(n=6, genes=("A", "B", "C")):
    rng = np.random.default_rng(1)
    return pd.DataFrame(rng.poisson(3, size=(n, len(genes))), index=[f"{i}x{i + 1}" for i in range(n)],
                        columns=list(genes))


def test_bad_inputs_are_named(tmp_path):
    px = np.full((6, 2), 100.0)
    c, s = _st_files(tmp_path, _counts(genes=("A", "B", "A")), px)
    with pytest.raises(TableError, match=r"1 gene name\(s\) occur more than once.*'A'"):
        pk.io.read_st(c, s, mpp=1.0)
    df = _counts().astype(float)
    df.iloc[0, 0] = 0.5
    c, s = _st_files(tmp_path, df, px)
    with pytest.raises(TableError, match=r"1 value\(s\) are not integers.*raw UMI"):
        pk.io.read_st(c, s, mpp=1.0)
    c, s = _st_files(tmp_path, _counts(), px, names=[f"{i}x{i + 50}" for i in range(6)])
    with pytest.raises(TableError, match="share no '<x>x<y>' id"):
        pk.io.read_st(c, s, mpp=1.0)
    names = [f"{i}x{i + 1}" for i in range(4)] + ["40x41", "41x42"]
    c, s = _st_files(tmp_path, _counts(), px, names=names)
    with pytest.warns(pk.io.SpotWarning, match=r"2 spot\(s\) have no counts.*2 count row\(s\) have no spot"):
        sp = pk.io.read_st(c, s, mpp=1.0)
    assert sp.n_obs == 4 and sp.uns["spot_spec"]["report"]["counts_without_spots"] == ["4x5", "5x6"]


def test_spots_outside_the_image_suggest_the_scale_factor(tmp_path):
    slide_path = pk.datasets.synthetic_slide(tmp_path / "s.tif", width=1024, height=768, mpp=0.5)
    # full-resolution pixels of an image 5x larger, as when the hires image is passed for the full one
    px = np.array([[4000.0, 3000.0], [4500, 3500], [200, 100], [300, 200], [4900, 3700], [100, 100]])
    c, s = _st_files(tmp_path, _counts(), px)
    with pytest.raises(TableError, match=r"3 of 6 spot\(s\) lie outside the 1024 x 768 px image.*scaling by about"):
        pk.io.read_st(c, s, image=slide_path)


# ---------------------------------------------------------------- her2st on its real H&E (a plain JPEG)
@pytest.fixture(scope="module")
def her2st_on_slide(her2st):
    slide = pk.read_slide(her2st / "5714_HE_BT_C2.jpg", mpp=HER2ST_MPP)
    sp = pk.io.read_st(her2st / "C2.tsv.gz", her2st / "C2_selection.tsv", image=slide)
    pk.pp.tile_spots(slide, sp, tile_px=224, mpp=0.5)
    return slide, sp


def test_her2st_spots_on_tissue_and_tiles_centred(her2st_on_slide):
    slide, sp = her2st_on_slide
    qc = sp.uns["spot_spec"]["qc"]
    assert qc["n_spots"] == 187 and qc["share_on_tissue"] >= 0.95
    size0 = sp.uns["tile_spec"]["size_level0"]
    assert size0 == pytest.approx(224 * 0.5 / HER2ST_MPP)
    centre = sp.obs[["x", "y"]].to_numpy(float) + size0 / 2
    assert np.abs(centre - sp.obsm["spatial"]).max() <= 0.5
    assert sp.uns["spot_spec"]["slide"]["sha256"] == slide.sha256()
    lib = sp.uns["spatial"]["C2"]
    assert max(lib["images"]["hires"].shape[:2]) == 2000
    assert lib["scalefactors"]["tissue_hires_scalef"] == pytest.approx(lib["images"]["hires"].shape[1] / 9274)


def test_scanpy_and_squidpy_draw_her2st_over_its_he(her2st_on_slide):
    draw_with_scanpy_and_squidpy(her2st_on_slide[1], "ERBB2")


def test_a_jpeg_without_mpp_is_refused(her2st):
    with pytest.raises(pk.errors.MppError, match="mpp"):
        pk.io.read_st(her2st / "C2.tsv.gz", her2st / "C2_selection.tsv", image=her2st / "5714_HE_BT_C2.jpg")
