"""pk.tl.embed_slide on a real tile-feature bag (TCGA-AD-6964, 777 tiles x 512-d, coords stored (y, x))."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import pathkit as pk
from pathkit.errors import GridError, WeightsError
from pathkit.models.registry import ModelSpec

BAG = "embeddings/TCGA-AD-6964-01Z-00-DX1.features.h5"
SLIDE_MPP = 0.25  # a 40x TCGA scan: its 256-px, 0.5-mpp tiles are 512 level-0 px apart in the bag

SMALL = ModelSpec(name="longnet_small_test", kind="slide", arch="pathkit:longnet",
                  kwargs={"in_chans": 512, "embed_dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 2,
                          "slide_ngrids": 1000, "tile_size": 256, "max_wsi_size": 262144}, embed_dim=64)


def _bag_adata(shared_data, n=None):
    import anndata as ad
    import h5py
    import pandas as pd

    with h5py.File(shared_data / BAG, "r") as f:
        X = f["feats"][:n].astype(np.float32)
        yx = f["coords"][:n].astype(np.int64)
    obs = pd.DataFrame({"slide_id": "TCGA-AD-6964-01Z-00-DX1", "x": yx[:, 1], "y": yx[:, 0]},
                       index=[str(i) for i in range(len(X))])
    a = ad.AnnData(obs=obs)
    a.obsm["X_bag"] = X
    a.obsm["spatial"] = np.stack([yx[:, 1], yx[:, 0]], axis=1).astype(np.float64)
    a.uns["tile_spec"] = {"tile_px": 256, "mpp": 0.5, "slide_mpp": SLIDE_MPP, "size_level0": 512.0,
                          "stride_level0": 512.0, "overlap": 0}
    a.uns["slide"] = {"slide_id": "TCGA-AD-6964-01Z-00-DX1", "mpp": SLIDE_MPP}
    a.uns["models"] = {"X_bag": {"name": "bag-512d"}}
    return a


@pytest.fixture(scope="module")
def bag(shared_data):
    return _bag_adata(shared_data)


@pytest.fixture(scope="module")
def small_net():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net, _ = pk.models.longnet.load_slide_encoder(SMALL, weights="random")
    return net


def _emb(a, model, key=None, **kw):
    """embed_slide writes into `a` and returns None; the test reads the vector back."""
    assert pk.tl.embed_slide(a, model, key_added=key, **kw) is None
    name = key or ("mean" if model == "mean" else getattr(model, "name", None))
    return a.uns["slide_embeddings"][name]


def _random(**kw):
    with pytest.warns(UserWarning, match="RANDOM"):
        return _emb(kw.pop("adata"), SMALL, kw.pop("key", None), weights="random", dtype="float32", **kw)


def test_grid_coords_sorted_by_hand(bag, small_net):
    a = bag.copy()
    vec = _random(adata=a)
    assert vec.shape == (64,) and vec.dtype == np.float32
    np.testing.assert_array_equal(a.uns["slide_embeddings"]["longnet_small_test"], vec)
    info = a.uns["slide_embeddings_info"]["longnet_small_test"]
    assert info["n_tiles"] == 777 and info["coords"] == "grid" and info["weights"] == "random"
    # by hand: level-0 px at 0.25 mpp -> 0.5-mpp px = x / 2; tiles are 512 level-0 px = one 256-px cell
    x, y = a.obs["x"].to_numpy(), a.obs["y"].to_numpy()
    cx, cy = x // 512, y // 512
    assert cx.max() < 1000 and cy.max() < 1000
    order = np.lexsort((cx, cy))  # row-major: y, then x
    np.testing.assert_array_equal(info["tile_order"], order)
    feats = torch.from_numpy(a.obsm["X_bag"][order])[None]
    coords = torch.from_numpy(np.stack([cx[order], cy[order]], 1) * 256.0)[None]
    with torch.inference_mode():
        want = small_net(feats, coords, pool="mean")[0].numpy()
    np.testing.assert_allclose(vec, want, atol=1e-6)


def test_shuffled_obs_same_embedding(bag):
    a = bag.copy()
    v1 = _random(adata=a)
    perm = np.random.default_rng(0).permutation(a.n_obs)
    b = bag[perm].copy()
    v2 = _random(adata=b)
    np.testing.assert_allclose(v1, v2, atol=1e-6)
    assert not np.array_equal(a.uns["slide_embeddings_info"]["longnet_small_test"]["tile_order"],
                              b.uns["slide_embeddings_info"]["longnet_small_test"]["tile_order"])


def test_all_layers_level0_and_cls(bag, small_net):
    a = bag.copy()
    last = _random(adata=a)
    allv = _random(adata=a, layers="all", key="small_all")
    assert allv.shape == (3, 64)
    assert np.abs(allv[-1] - last).max() > 1e-3  # no encoder layer norm in the all-layer outputs
    raw = _random(adata=a, coords="level0", key="small_level0")
    assert np.abs(raw - last).max() > 1e-4  # cells twice as far apart
    cls = _random(adata=a, pool="cls", key="small_cls")
    assert np.abs(cls - last).max() > 1e-3
    assert set(a.uns["slide_embeddings"]) == {"longnet_small_test", "small_all", "small_level0", "small_cls"}


def test_layer_default_from_the_entry_and_tile_coords(bag, small_net):
    """The entry's extra["layer"] is the default readout (gigapath_slide: 11, as the authors' fine-tuning and
    TRIDENT); layers=k equals row k of layers='all'; coords='tile' (TRIDENT's coords // patch_size_level0)
    equals 'grid' for 0.5-mpp 256-px tiles and keeps tiles adjacent when they are cut at 1 mpp."""
    from pathkit.models import get_spec

    gp = get_spec("gigapath_slide", kind="slide")
    assert gp.extra["layer"] == 11 and gp.extra["pool"] == "mean"
    a = bag.copy()
    one = ModelSpec(**{**SMALL.__dict__, "name": "small_layer1", "extra": {"layer": 1}})
    with pytest.warns(UserWarning, match="RANDOM"):
        pk.tl.embed_slide(a, one, weights="random", dtype="float32", key_added="d")
    with pytest.warns(UserWarning, match="RANDOM"):
        pk.tl.embed_slide(a, one, weights="random", dtype="float32", layers="all", key_added="all")
    allv = a.uns["slide_embeddings"]["all"]
    np.testing.assert_allclose(a.uns["slide_embeddings"]["d"], allv[1], atol=1e-6)
    assert a.uns["slide_embeddings_info"]["d"]["layers"] == 1
    tile = _random(adata=a, coords="tile", key="tile")
    np.testing.assert_allclose(tile, _random(adata=a, key="grid"), atol=1e-6)
    np.testing.assert_array_equal(a.uns["slide_embeddings_info"]["tile"]["tile_order"],
                                  a.uns["slide_embeddings_info"]["grid"]["tile_order"])
    # the same tiles described as cut at 1 mpp (1024 level-0 px): 'grid' puts them 2 cells apart, 'tile' not
    b = bag.copy()
    b.obs["x"], b.obs["y"] = b.obs["x"] * 2, b.obs["y"] * 2
    b.uns["tile_spec"] = {**b.uns["tile_spec"], "mpp": 1.0, "size_level0": 1024.0, "stride_level0": 1024.0}
    np.testing.assert_allclose(_random(adata=b, coords="tile", key="t1"), tile, atol=1e-6)
    assert np.abs(_random(adata=b, coords="grid", key="g1") - tile).max() > 1e-4
    with pytest.raises(ValueError, match="layers="):
        pk.tl.embed_slide(a, one, weights="random", layers="first")


def test_model_passed_as_module(bag, small_net):
    a = bag.copy()
    v = _emb(a, small_net, key="mine")
    np.testing.assert_allclose(v, _random(adata=bag.copy()), atol=1e-6)
    assert "mine" in a.uns["slide_embeddings"]
    v2 = _emb(a, small_net)  # a loaded module keeps its registry name as key
    assert next(small_net.parameters()).dtype == torch.float32  # the user's module is not cast
    assert "longnet_small_test" in a.uns["slide_embeddings"] and np.array_equal(v, v2)


def test_mean_model(bag):
    a = bag.copy()
    v = _emb(a, "mean")
    np.testing.assert_allclose(v, a.obsm["X_bag"].astype(np.float64).mean(0), rtol=0, atol=1e-6)
    b = pk.tl.embed_slide(a, "mean", use_rep="X_bag", key_added="m2", copy=True)
    np.testing.assert_array_equal(b.uns["slide_embeddings"]["m2"], v)
    assert "m2" not in a.uns["slide_embeddings"]
    with pytest.raises(KeyError, match="X_nope"):
        pk.tl.embed_slide(a, "mean", use_rep="X_nope")
    np.testing.assert_array_equal(a.uns["slide_embeddings"]["mean"], v)
    with pytest.raises(ValueError, match="layers"):
        pk.tl.embed_slide(a, "mean", layers="all")


@pytest.mark.filterwarnings("ignore:.*RANDOM")
def test_off_grid_error_names_max_and_fix(bag):
    a = bag.copy()
    a.obs["x"] = a.obs["x"] * 10  # up to 276480 px: cell 1080 at 256 px per cell
    with pytest.raises(GridError, match=r"1080.*coords='grid'"):
        pk.tl.embed_slide(a, SMALL, weights="random", coords="level0", dtype="float32")


@pytest.mark.filterwarnings("ignore:.*RANDOM")
def test_grid_needs_mpp(bag):
    a = bag.copy()
    a.uns["tile_spec"] = {}
    a.uns["slide"] = {"slide_id": "x"}
    with pytest.raises(GridError, match="mpp"):
        pk.tl.embed_slide(a, SMALL, weights="random")


def test_wrong_feature_dim_names_tile_model(bag):
    with pytest.raises(ValueError, match=r"1536.*512.*bag-512d"):
        pk.tl.embed_slide(bag.copy(), "gigapath_slide", use_rep="X_bag")


def test_features_of_another_tile_model_are_refused(bag):
    a = bag.copy()
    a.obsm["X_uni"] = np.zeros((a.n_obs, 1536), np.float32)
    a.uns["models"] = {"X_uni": {"name": "uni"}}
    with pytest.raises(ValueError, match="'uni' features.*'gigapath_tile'"):
        pk.tl.embed_slide(a, "gigapath_slide", use_rep="X_uni")
    with pytest.raises(KeyError, match="X_gigapath_tile"):
        pk.tl.embed_slide(a, "gigapath_slide")  # the default use_rep is the expected tile model's


def test_registry_weights_no_download(shared_data):
    import anndata as ad

    b = _bag_adata(shared_data, n=5)
    a = ad.AnnData(obs=b.obs, uns={**b.uns, "models": {}})
    a.obsm["X_gigapath_tile"] = np.zeros((5, 1536), dtype=np.float32)
    with pytest.raises(WeightsError, match="weights=PATH|huggingface-cli"):
        pk.tl.embed_slide(a, "gigapath_slide")  # offline in tests: a clear error, no download


def test_writes_h5ad(bag, tmp_path):
    import anndata as ad

    a = bag[:50].copy()
    v = _random(adata=a)
    _emb(a, "mean")
    a.write_h5ad(tmp_path / "s.h5ad")
    b = ad.read_h5ad(tmp_path / "s.h5ad")
    np.testing.assert_array_equal(b.uns["slide_embeddings"]["longnet_small_test"], v)
    assert b.uns["slide_embeddings_info"]["longnet_small_test"]["tile_order"].shape == (50,)


@pytest.mark.filterwarnings("ignore:.*RANDOM")
def test_duplicate_cells_warn(bag):
    a = bag[:20].copy()
    i = np.arange(20)
    a.obs["x"] = 9728 + i // 2 * 512 + i % 2 * 100  # overlapping pairs: 10 tiles share a cell
    a.obs["y"] = 9728
    with pytest.warns(UserWarning, match="10 tile"):
        pk.tl.embed_slide(a, SMALL, weights="random")


def test_feather_through_embed_slide(tmp_path):
    """A coordinate-free slide encoder (FEATHER, MIL-Lab ABMIL) from the registry: the vector equals the
    module applied to the features by hand, in any tile order, and only UNI features are accepted."""
    import anndata as ad
    import pandas as pd
    from safetensors.torch import save_file

    from pathkit.models.feather import load_slide_abmil

    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="RANDOM"):
        net, _ = load_slide_abmil("feather_uni", weights="random")
    w = tmp_path / "feather.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(w))
    X = np.random.default_rng(0).standard_normal((40, 1024)).astype(np.float32)
    a = ad.AnnData(obs=pd.DataFrame({"slide_id": "s"}, index=[str(i) for i in range(40)]))
    a.obsm["X_uni"] = X
    a.uns["models"] = {"X_uni": {"name": "uni"}}
    pk.tl.embed_slide(a, "feather_uni", weights=w, dtype="float32")
    with torch.inference_mode():
        want = net.eval()(torch.from_numpy(X)).numpy()
    got = a.uns["slide_embeddings"]["feather_uni"]
    assert got.shape == (512,)
    np.testing.assert_allclose(got, want, atol=1e-6)
    b = a[np.random.default_rng(1).permutation(40)].copy()
    pk.tl.embed_slide(b, "feather_uni", weights=w, dtype="float32")
    np.testing.assert_allclose(b.uns["slide_embeddings"]["feather_uni"], got, atol=1e-5)
    a.uns["models"] = {"X_uni": {"name": "conch_v15"}}
    with pytest.raises(ValueError, match="'conch_v15' features.*'uni'"):
        pk.tl.embed_slide(a, "feather_uni", weights=w)


@pytest.mark.filterwarnings("ignore:.*RANDOM")
def test_grid_coords_use_the_corner_like_trident(bag):
    """coords='grid' places a tile by its top-left corner (TRIDENT, the Prov-GigaPath maintainers): on a grid
    whose origin is off by half a tile, 'grid' equals TRIDENT's 'tile' and the raw 'level0' rule on a 0.5-mpp
    slide; the tile's centre moved every tile into the next cell (cos 0.99945 against the corner's vector)."""
    a = bag.copy()
    a.uns["tile_spec"] = {**a.uns["tile_spec"], "slide_mpp": 0.5, "size_level0": 256.0, "stride_level0": 256.0}
    a.uns["slide"] = {**a.uns["slide"], "mpp": 0.5}
    a.obs["x"] = a.obs["x"] // 2 + 128  # half a tile off the 256-px cells
    a.obs["y"] = a.obs["y"] // 2 + 128
    grid = _random(adata=a, coords="grid", key="g")
    np.testing.assert_allclose(grid, _random(adata=a, coords="tile", key="t"), atol=1e-6)
    np.testing.assert_allclose(grid, _random(adata=a, coords="level0", key="l"), atol=1e-6)
