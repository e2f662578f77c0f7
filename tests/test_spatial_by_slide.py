"""From space to cohort: a spot model predicts every tile of whole slides, the per-slide mean is tested
against bulk RNA. Real tile features (the TCGA bag's two k-means clusters) and real COADREAD RNA: slides'
share of cluster-A tiles follows each patient's real EGFR; spots' gene G is planted higher on cluster-A tiles.
So the slides' predicted G must correlate with bulk EGFR, and not with EGFR shuffled across patients."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
from _planted import planted_cohort
from scipy import sparse

import pathkit as pk
from pathkit.errors import TableError

SPEC = {"tile_px": 224, "mpp": 0.5}


def _spots(bag, n=400, seed=1):
    feats, lab = bag
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(feats), n)
    is_a = lab[idx] == 0
    counts = np.c_[rng.poisson(np.exp(1.0 + 1.2 * is_a)), rng.poisson(4.0, n)].astype(np.float32)
    s = ad.AnnData(X=sparse.csr_matrix(counts), var=pd.DataFrame(index=["G", "N"]),
                   obs=pd.DataFrame(index=[f"spot{i}" for i in range(n)]))
    s.layers["counts"] = s.X.copy()
    s.obsm["X_real"] = feats[idx].astype(np.float32)
    s.obsm["spatial"] = rng.uniform(0, 5000, (n, 2))
    s.uns["spot_spec"] = {"library_id": "planted"}
    s.uns["tile_spec"] = dict(SPEC)
    return s


@pytest.fixture(scope="module")
def cohort(shared_data, clustered_bag, rna):
    pats = rna.index[:120]
    md, tiles, _ = planted_cohort(shared_data, rna.loc[pats, "EGFR"], bag=clustered_bag)
    for t in tiles:
        t.uns["tile_spec"] = dict(SPEC)
    rng = np.random.default_rng(7)
    md["rna"].obs["EGFR_shuffled"] = rng.permutation(md["rna"][:, "EGFR"].X.ravel())
    return md, tiles, _spots(clustered_bag)


def test_slide_means_equal_the_sklearn_pipeline_by_hand(cohort):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    md, tiles, spots = cohort
    md = md.copy()
    out = pk.tl.predicted_expression_by_slide(spots, tiles[:-1], "X_real", genes=["G", "N"], cohort=md)
    Y = np.log1p(spots.layers["counts"].toarray().astype(np.float64))
    pipe = make_pipeline(StandardScaler(), PCA(256, svd_solver="full"), Ridge(alpha=100.0 / (256 * 2)))
    pipe.fit(spots.obsm["X_real"].astype(np.float64), Y)
    got = md["slides"].obsm["predicted_expression"]
    assert list(got.columns) == ["G", "N"] and list(got.index) == list(md["slides"].obs_names)
    for t in tiles[:5]:
        sid = t.obs["slide_id"].iloc[0]
        want = pipe.predict(t.obsm["X_real"].astype(np.float64)).mean(0)
        np.testing.assert_allclose(got.loc[sid].to_numpy(), want, rtol=0, atol=1e-6)
        np.testing.assert_allclose(out.loc[sid].to_numpy(), want, rtol=0, atol=1e-6)
    last = tiles[-1].obs["slide_id"].iloc[0]
    assert got.loc[last].isna().all()  # a cohort slide without tiles stays NaN
    u = md["slides"].uns["predicted_expression"]
    assert u["genes"] == ["G", "N"] and u["n_tiles"][tiles[0].obs["slide_id"].iloc[0]] == tiles[0].n_obs
    assert u["scale"] == "log1p(counts)" and u["trained_on"] == ["planted"] and u["n_spots"] == 400


def test_predicted_gene_tracks_bulk_rna_and_its_shuffled_copy_does_not(cohort):
    md, tiles, spots = cohort
    md = md.copy()
    pk.tl.predicted_expression_by_slide(spots, tiles, "X_real", genes=["G"], cohort=md)
    res = pk.tl.associate(md, "predicted_expression", ["EGFR", "EGFR_shuffled"], key_added=None)
    hit = res[(res["feature"] == "G") & (res["target"] == "EGFR")].iloc[0]
    null = res[(res["feature"] == "G") & (res["target"] == "EGFR_shuffled")].iloc[0]
    assert hit["n"] == 120 and hit["statistic"] > 0.6 and hit["pvalue"] < 1e-10
    assert null["pvalue"] > 0.05 and abs(null["statistic"]) < 0.2


def test_cohort_tile_files_and_bad_inputs(cohort, tmp_path):
    _, tiles, spots = cohort
    few = tiles[:3]
    paths = []
    for t in few:
        p = tmp_path / f"{t.obs['slide_id'].iloc[0]}.h5ad"
        t.write_h5ad(p)
        paths.append(str(p))
    c = ad.AnnData(obs=pd.DataFrame({"slide_id": [t.obs["slide_id"].iloc[0] for t in few] + ["failed"],
                                     "tile_file": paths + [""]}, index=["a", "b", "c", "d"]))
    from_files = pk.tl.predicted_expression_by_slide(spots, c, "X_real", genes="G")
    in_memory = pk.tl.predicted_expression_by_slide(spots, {t.obs["slide_id"].iloc[0]: t for t in few}, "X_real",
                                                    genes="G")
    pd.testing.assert_frame_equal(from_files, in_memory)
    assert list(c.obsm["predicted_expression"].index) == ["a", "b", "c", "d"]
    assert np.isnan(c.obsm["predicted_expression"].loc["d", "G"])
    other = few[0].copy()
    other.uns["tile_spec"] = {"tile_px": 224, "mpp": 1.0}
    with pytest.raises(TableError, match="mpp=0.5 but the tiles 1.0"):
        pk.tl.predicted_expression_by_slide(spots, {"x": other}, "X_real", genes="G")
    with pytest.raises(TableError, match=r"obsm\['X_uni'\]"):
        pk.tl.predicted_expression_by_slide(spots, few, "X_uni", genes="G")
    with pytest.raises(KeyError, match="ERBB2"):
        pk.tl.predicted_expression_by_slide(spots, few, "X_real", genes=["ERBB2"])
