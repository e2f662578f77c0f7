import h5py
import numpy as np
import pytest

from pathkit.errors import TableError
from pathkit.io.bags import read_h5_bag

BAG = "embeddings/TCGA-AD-6964-01Z-00-DX1.features.h5"


def test_real_bag_keys_and_coordinate_order(shared_data):
    path = shared_data / BAG
    a = read_h5_bag(path, coords_order="yx")
    with h5py.File(path) as f:
        feats, coords = f["feats"][:], f["coords"][:]
    assert a.shape == (777, 512)
    np.testing.assert_array_equal(a.X, feats)
    # stored as (y, x): obs x is the second column on disk
    np.testing.assert_array_equal(a.obs["x"].to_numpy(), coords[:, 1])
    np.testing.assert_array_equal(a.obsm["spatial"], coords[:, ::-1])
    assert a.obs["slide_id"].unique().tolist() == ["TCGA-AD-6964-01Z-00-DX1"]


def test_bad_bag(tmp_path):
    p = tmp_path / "b.h5"
    with h5py.File(p, "w") as f:
        f["features"] = np.zeros((3, 4), np.float32)
        f["coords"] = np.zeros((2, 2))
    with pytest.raises(TableError, match="shape"):
        read_h5_bag(p)
    assert read_h5_bag(p, coords=None).shape == (3, 4)
    with pytest.raises(TableError, match="no features"):
        read_h5_bag(p, features="nope")


def test_slide_mpp_puts_bag_on_the_longnet_grid(shared_data):
    import pathkit as pk

    a = read_h5_bag(shared_data / BAG, coords_order="yx", tile_px=256, mpp=0.5, slide_mpp=0.25)
    assert a.uns["slide"]["mpp"] == 0.25 and a.uns["tile_spec"]["size_level0"] == 512.0
    pk.tl.embed_slide(a, model="mean", use_rep="X")
    v = a.uns["slide_embeddings"]["mean"]
    np.testing.assert_allclose(v, a.X.astype(np.float64).mean(0), rtol=1e-5, atol=1e-6)


def test_features_under_an_obsm_key(shared_data):
    path = shared_data / BAG
    a = read_h5_bag(path, coords_order="yx", key_added="X_uni")
    b = read_h5_bag(path, coords_order="yx")
    assert a.shape == (777, 0)
    np.testing.assert_array_equal(a.obsm["X_uni"], b.X)


def test_folder_of_h5_bags_is_a_bag_source(shared_data, tmp_path):
    """CLAM-style .h5 bags, one per slide, read lazily by the MIL bag reader (slide id from the file name)."""
    from pathkit.tl._mil.bags import BagSet

    with h5py.File(shared_data / BAG) as f:
        feats, coords = f["feats"][:], f["coords"][:]
    for k in range(3):
        with h5py.File(tmp_path / f"TCGA-XX-000{k}-01Z-00-DX1.features.h5", "w") as f:
            f["feats"] = feats[k * 100:(k + 1) * 100]
            f["coords"] = coords[k * 100:(k + 1) * 100]
    bags = BagSet(tmp_path, "X")
    assert sorted(bags.ids()) == [f"TCGA-XX-000{k}-01Z-00-DX1" for k in range(3)]
    np.testing.assert_array_equal(bags["TCGA-XX-0001-01Z-00-DX1"], feats[100:200])
    with pytest.raises(TableError, match="no features dataset 'nope'"):
        BagSet(tmp_path, "nope")["TCGA-XX-0001-01Z-00-DX1"]
