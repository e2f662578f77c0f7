"""Spot-level expression prediction (HEST protocol, spatial block CV): equal to the same sklearn pipeline run
by hand, a planted gene recovered, a shuffled one not, folds that are spatial blocks or whole sections."""
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import pathkit as pk


def _spots(n_side=16, dim=48, seed=0, sections=1):
    """Spots on a grid with random embeddings; gene P planted (log-linear in the embedding), gene S is P's
    counts shuffled across spots, the rest noise."""
    rng = np.random.default_rng(seed)
    g = np.stack(np.meshgrid(np.arange(n_side), np.arange(n_side)), -1).reshape(-1, 2).astype(float)
    xy = np.concatenate([g * 100 + s * 5000 for s in range(sections)])
    n = len(xy)
    E = rng.normal(size=(n, dim))
    w = rng.normal(size=dim) / np.sqrt(dim)
    planted = rng.poisson(np.exp(1.5 + 0.9 * E @ w))
    noise = rng.poisson(3, size=(n, 8))
    counts = np.c_[planted, rng.permutation(planted), noise]
    genes = ["P", "S"] + [f"N{i}" for i in range(8)]
    a = ad.AnnData(X=sparse.csr_matrix(counts.astype(np.float32)), var=pd.DataFrame(index=genes),
                   obs=pd.DataFrame({"section": np.repeat([f"s{i}" for i in range(sections)], n_side ** 2)},
                                    index=[f"spot{i}" for i in range(n)]))
    a.layers["counts"] = a.X.copy()
    a.obsm["spatial"] = xy
    a.obsm["X_emb"] = E.astype(np.float32)
    return a


def test_equal_to_the_sklearn_pipeline_by_hand():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a = _spots()
    genes = list(a.var_names)
    res = pk.tl.predict_expression(a, "X_emb", level="spot", genes=genes, n_pcs=20, n_permutations=0)
    fold = a.obs["predicted_fold"].to_numpy()
    Y = np.log1p(a.layers["counts"].toarray().astype(np.float64))
    E = a.obsm["X_emb"].astype(np.float64)
    pred = np.empty_like(Y)
    for k in np.unique(fold):
        tr, te = fold != k, fold == k
        pipe = make_pipeline(StandardScaler(), PCA(20, svd_solver="full"), Ridge(alpha=100 / (20 * len(genes))))
        pred[te] = pipe.fit(E[tr], Y[tr]).predict(E[te])
    np.testing.assert_allclose(a.layers["predicted"].toarray(), pred, atol=1e-6)
    r = [np.corrcoef(pred[:, j], Y[:, j])[0, 1] for j in range(len(genes))]
    np.testing.assert_allclose(res.set_index("gene").loc[genes, "r"].to_numpy(), r, atol=1e-6)
    mean_pred = np.empty_like(Y)
    for k in np.unique(fold):
        mean_pred[fold == k] = Y[fold != k].mean(0)
    mse = ((mean_pred - Y) ** 2).mean(0)
    np.testing.assert_allclose(res.set_index("gene").loc[genes, "mean_mse"].to_numpy(), mse, atol=1e-9)


def test_planted_gene_recovered_shuffled_not():
    a = _spots()
    res = pk.tl.predict_expression(a, "X_emb", level="spot", genes=["P", "S"], n_pcs=32, n_permutations=99,
                                   random_state=0).set_index("gene")
    assert res.loc["P", "r"] > 0.6 and res.loc["P", "pvalue"] <= 0.01
    assert res.loc["P", "r2"] > 0.3 > res.loc["P", "mean_r2"]
    assert res.loc["S", "r"] < res.loc["S", "null_q95"] and res.loc["S", "pvalue"] > 0.05
    assert res.attrs["scheme"] == "spatial-blocks"


def test_folds_are_spatial_blocks_or_sections():
    from scipy.spatial import cKDTree

    a = _spots()
    pk.tl.predict_expression(a, "X_emb", level="spot", genes=["P"], n_pcs=8, n_permutations=0, folds=4)
    fold = a.obs["predicted_fold"].to_numpy()
    assert sorted(np.unique(fold)) == [0, 1, 2, 3]
    _, nn = cKDTree(a.obsm["spatial"]).query(a.obsm["spatial"], k=5)
    same = (fold[nn[:, 1:]] == fold[:, None]).mean()
    assert same > 0.8  # random folds give about 1/4
    b = _spots(n_side=10, sections=3)
    res = pk.tl.predict_expression(b, "X_emb", level="spot", genes=["P"], n_pcs=8, n_permutations=0,
                                   section_key="section")
    assert res.attrs["scheme"] == "leave-one-section-out"
    np.testing.assert_array_equal(b.obs["predicted_fold"].to_numpy(), np.repeat([0, 1, 2], 100))


def test_hvg_default_and_errors():
    a = _spots()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pk.tl.predict_expression(a, "X_emb", level="spot", n_top_genes=3, n_pcs=8, n_permutations=0)
    assert len(res) == 3 and set(a.uns["predicted_expression"]["genes"]) == set(res["gene"])
    with pytest.raises(KeyError, match="NOPE"):
        pk.tl.predict_expression(a, "X_emb", level="spot", genes=["NOPE"], n_permutations=0)
    with pytest.raises(pk.errors.TableError, match="use_rep='X_uni'"):
        pk.tl.predict_expression(a, "X_uni", level="spot", n_permutations=0)
    with pytest.raises(ValueError, match="level"):
        pk.tl.predict_expression(a, "X_emb", level="tile")


def test_predict_to_whole_slide_tiles():
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    a = _spots()
    tiles = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(30)]))
    tiles.obsm["X_emb"] = np.random.default_rng(5).normal(size=(30, a.obsm["X_emb"].shape[1])).astype(np.float32)
    pk.tl.predict_expression(a, "X_emb", level="spot", genes=["P", "N0"], n_pcs=16, n_permutations=0,
                             predict_to=tiles)
    Y = np.log1p(a[:, ["P", "N0"]].layers["counts"].toarray().astype(np.float64))
    pipe = make_pipeline(StandardScaler(), PCA(16, svd_solver="full"), Ridge(alpha=100 / (16 * 2)))
    want = pipe.fit(a.obsm["X_emb"].astype(np.float64), Y).predict(tiles.obsm["X_emb"].astype(np.float64))
    np.testing.assert_allclose(tiles.obsm["predicted_expression"].to_numpy(), want, atol=1e-8)
    assert list(tiles.obsm["predicted_expression"].columns) == ["P", "N0"]
