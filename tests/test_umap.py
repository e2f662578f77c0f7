"""pk.tl.umap: Leiden recovers known clusters; batch key; slide-level cohorts; input errors."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pathkit as pk

pytest.importorskip("igraph")


def three_clusters(n_per=80, dim=64, seed=0):
    import anndata as ad

    rng = np.random.default_rng(seed)
    centers = rng.normal(0, 8, size=(3, dim))
    truth = np.repeat(np.arange(3), n_per)
    X = (centers[truth] + rng.normal(0, 1, size=(len(truth), dim))).astype(np.float32)
    a = ad.AnnData(X)
    a.obs_names = [str(i) for i in range(len(truth))]
    a.obs["slide_id"] = np.where(np.arange(len(truth)) % 2 == 0, "slideA", "slideB")
    return a, truth


@pytest.fixture(scope="module")
def clustered():
    a, truth = three_clusters()
    pk.tl.umap(a, batch_key="slide_id", random_state=0)
    return a, truth


@pytest.mark.slow  # the first UMAP of a process compiles umap-learn's numba kernels (15-40 s here)
def test_leiden_finds_the_three_clusters(clustered):
    from sklearn.metrics import adjusted_rand_score

    a, truth = clustered
    assert a.obs["leiden"].nunique() == 3
    assert adjusted_rand_score(truth, a.obs["leiden"]) == pytest.approx(1.0)
    assert a.obsm["X_umap"].shape == (a.n_obs, 2)
    # the UMAP separates the clusters: every point is nearer its own cluster's centroid than any other's
    u = a.obsm["X_umap"]
    cents = np.stack([u[truth == k].mean(0) for k in range(3)])
    nearest = np.argmin(((u[:, None] - cents[None]) ** 2).sum(-1), axis=1)
    assert (nearest == truth).all()
    # 64 dims > 50: PCA ran first, stored as X_pca
    assert a.obsm["X_pca"].shape == (a.n_obs, 50)
    p = a.uns["umap"]["params"]
    assert (p["use_rep"], p["n_pcs"], p["batch_key"], p["random_state"]) == ("X", 50, "slide_id", 0)


def test_batch_key_is_categorical_and_plots_per_batch(clustered):
    a, _ = clustered
    assert isinstance(a.obs["slide_id"].dtype, pd.CategoricalDtype)
    fig = pk.pl.umap(a, color="slide_id", thumbnails=False)
    assert [t.name for t in fig.data] == ["slideA", "slideB"]
    assert [len(t.x) for t in fig.data] == [120, 120]


def test_same_seed_same_result():
    a, _ = three_clusters(n_per=30, dim=16, seed=3)
    b = a.copy()
    pk.tl.umap(a, random_state=7)
    pk.tl.umap(b, random_state=7)
    np.testing.assert_allclose(a.obsm["X_umap"], b.obsm["X_umap"])
    assert (a.obs["leiden"] == b.obs["leiden"]).all()
    assert "X_pca" not in a.obsm  # 16 dims: used as they are


def test_cohort_level_use_rep_and_small_n():
    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    # 24 slides, two groups, slide embeddings in obsm (what embed_cohort writes); X is the clinical table
    rng = np.random.default_rng(1)
    truth = np.repeat([0, 1], 12)
    emb = (np.where(truth[:, None] == 0, 5.0, -5.0) + rng.normal(size=(24, 768))).astype(np.float32)
    c = ad.AnnData(obs=pd.DataFrame({"slide_id": [f"S{i}" for i in range(24)]},
                                    index=[f"S{i}" for i in range(24)]))
    c.obsm["X_gigapath_slide"] = emb
    with pytest.warns(UserWarning, match="n_neighbors"):
        pk.tl.umap(c, use_rep="X_gigapath_slide", n_neighbors=30, resolution=0.3)
    assert c.obsm["X_gigapath_slide_pca"].shape == (24, 23)   # PCs clipped to n_obs - 1
    assert c.uns["umap"]["params"]["n_neighbors"] == 23
    assert adjusted_rand_score(truth, c.obs["leiden"]) == pytest.approx(1.0)


def test_input_errors():
    a, _ = three_clusters(n_per=5, dim=4)
    with pytest.raises(KeyError, match="X_nothing"):
        pk.tl.umap(a, use_rep="X_nothing")
    with pytest.raises(KeyError, match="batch"):
        pk.tl.umap(a, batch_key="batch")
    with pytest.raises(ValueError, match="harmony"):
        pk.tl.umap(a, batch_correction="combat", batch_key="slide_id")
    a.X[2, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        pk.tl.umap(a)


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")  # uncorrected: slides drift apart
def test_harmony_removes_a_batch_shift():
    pytest.importorskip("harmonypy")
    import anndata as ad
    from sklearn.metrics import adjusted_rand_score

    # three tissue types seen on two slides whose staining shifts every feature by 3
    rng = np.random.default_rng(0)
    truth, batch = np.repeat(np.arange(3), 60), np.tile([0, 1], 90)
    X = rng.normal(0, 8, (3, 10))[truth] + rng.normal(0, 1, (180, 10)) + batch[:, None] * 3.0
    X = X.astype(np.float32)
    a = ad.AnnData(X)
    a.obs["slide_id"] = np.where(batch == 0, "A", "B")
    b = a.copy()
    pk.tl.umap(a, batch_key="slide_id", resolution=0.3)
    pk.tl.umap(b, batch_key="slide_id", batch_correction="harmony", resolution=0.3)
    assert a.obs["leiden"].nunique() == 6                     # uncorrected: each type splits by slide
    assert adjusted_rand_score(truth, b.obs["leiden"]) == pytest.approx(1.0)
    gap = np.linalg.norm(b.obsm["X_harmony"][batch == 0].mean(0) - b.obsm["X_harmony"][batch == 1].mean(0))
    assert gap < 0.5 * np.linalg.norm(X[batch == 0].mean(0) - X[batch == 1].mean(0))
    assert b.uns["umap"]["params"]["batch_correction"] == "harmony"


def test_real_tile_embeddings_cluster_into_spatially_coherent_regions(shared_data):
    """Real features of a whole TCGA COAD slide: Leiden clusters of histology embeddings form tissue regions,
    so neighbouring tiles share a cluster far more often than cluster sizes alone would give."""
    import anndata as ad
    import h5py

    path = shared_data / "embeddings" / "TCGA-AD-6964-01Z-00-DX1.features.h5"
    if not path.exists():
        pytest.skip(f"{path} not found")
    with h5py.File(path, "r") as f:
        feats, coords = f["feats"][:], f["coords"][:]       # coords are stored as (y, x)
    a = ad.AnnData(feats.astype(np.float32))
    a.obs["x"], a.obs["y"] = coords[:, 1], coords[:, 0]
    pk.tl.umap(a, random_state=0)
    labels = a.obs["leiden"].to_numpy()
    assert 3 <= a.obs["leiden"].nunique() <= 40
    assert a.uns["umap"]["params"]["n_pcs"] == 50               # 512-d features: PCA first
    xy = a.obs[["x", "y"]].to_numpy()
    step = np.diff(np.unique(xy[:, 0])).min()
    where = {tuple(p): i for i, p in enumerate(xy)}
    pairs = np.array([(i, where[(p[0] + dx, p[1] + dy)]) for i, p in enumerate(xy)
                      for dx, dy in ((step, 0), (0, step)) if (p[0] + dx, p[1] + dy) in where])
    same = (labels[pairs[:, 0]] == labels[pairs[:, 1]]).mean()
    chance = (a.obs["leiden"].value_counts(normalize=True) ** 2).sum()
    assert len(pairs) > 1000
    assert same > 3 * chance, (same, chance)


def test_contract_tile_anndata_use_rep_default_and_progress(capsys):
    """Tiles of the contract: X empty, features in obsm["X_<model>"] recorded in uns["models"]. use_rep=None
    finds that one embedding; a second one makes it ambiguous (an error naming both). The progress bar names
    the steps and ends at its total."""
    import anndata as ad

    from pathkit.tl._umap import numba_compiled

    a0, _ = three_clusters(n_per=20, dim=16, seed=5)
    a = ad.AnnData(obs=a0.obs.copy())                      # n_tiles x 0
    a.obsm["X_uni"] = a0.X
    a.uns["models"] = {"X_uni": {"name": "uni"}}
    pk.tl.umap(a, progress=True)
    assert a.uns["umap"]["params"]["use_rep"] == "X_uni"
    assert numba_compiled()
    err = capsys.readouterr().err
    assert "pk.tl.umap: neighbours" in err and "pk.tl.umap: Leiden: 2/3 steps" in err
    b = pk.tl.umap(a, use_rep="X_uni", copy=True, progress=False)
    np.testing.assert_allclose(b.obsm["X_umap"], a.obsm["X_umap"])
    a.obsm["X_virchow"] = a0.X[:, ::-1].copy()
    a.uns["models"]["X_virchow"] = {"name": "virchow"}
    with pytest.raises(KeyError, match="X_virchow"):
        pk.tl.umap(a)
