"""pk.tl.pathway_scores on the real COADREAD RNA with the 50 MSigDB hallmarks."""
from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from _planted import real_rna
from scipy import stats

import pathkit as pk
from pathkit.errors import TableError


@pytest.fixture(scope="module")
def rna_ad(shared_data):
    r = real_rna(shared_data).iloc[:80]
    a = ad.AnnData(r.to_numpy())
    a.obs_names, a.var_names = list(r.index), list(r.columns)
    return a


@pytest.fixture(scope="module")
def hallmarks(shared_data):
    return pd.read_csv(shared_data / "tcga" / "hallmarks_signatures.csv")


def test_score_genes_equals_scanpy_and_counts_genes(rna_ad, hallmarks):
    a = rna_ad.copy()
    sets = hallmarks[["HALLMARK_HYPOXIA", "HALLMARK_NOTCH_SIGNALING", "HALLMARK_GLYCOLYSIS"]]
    with pytest.warns(UserWarning, match=r"1 of 3 gene set\(s\) have fewer than 5.*NOTCH"):
        pk.tl.pathway_scores(a, sets)
    got = a.obsm["pathways_score_genes"]
    assert list(got.columns) == ["HALLMARK_HYPOXIA", "HALLMARK_GLYCOLYSIS"] and list(got.index) == list(a.obs_names)
    genes = set(a.var_names)
    info = a.uns["pathways_score_genes"]
    for name in sets.columns:  # measured genes counted independently
        assert info["n_genes"][name] == len(set(sets[name].dropna()) & genes)
    assert info["n_genes"]["HALLMARK_HYPOXIA"] == 50 and info["dropped"] == ["HALLMARK_NOTCH_SIGNALING"]
    ref = rna_ad.copy()
    hyp = [g for g in dict.fromkeys(sets["HALLMARK_HYPOXIA"].dropna()) if g in genes]
    sc.tl.score_genes(ref, hyp, ctrl_size=50, random_state=0)
    np.testing.assert_allclose(got["HALLMARK_HYPOXIA"], ref.obs["score"], rtol=1e-6)


def test_decoupler_ulm_is_the_t_value_of_membership(rna_ad, hallmarks):
    pytest.importorskip("decoupler")
    a = rna_ad.copy()
    sets = {"HYP": hallmarks["HALLMARK_HYPOXIA"].dropna().tolist(),
            "GLY": hallmarks["HALLMARK_GLYCOLYSIS"].dropna().tolist()}
    out = pk.tl.pathway_scores(a, sets, method="ulm", key_added="ulm", copy=True)
    assert "ulm" not in a.obsm and "ulm" in out.obsm  # copy=True leaves the input alone
    # ULM: per sample, regress expression on set membership (0/1) over all genes; score = slope's t
    member = np.isin(np.asarray(a.var_names), sets["HYP"]).astype(float)
    for i in (0, 17):
        res = stats.linregress(member, np.asarray(a.X[i]).ravel())
        assert out.obsm["ulm"].iloc[i]["HYP"] == pytest.approx(res.slope / res.stderr, rel=1e-5)


def test_pathway_scores_bad_inputs(rna_ad, hallmarks):
    a = rna_ad.copy()
    X = a.X.copy()
    X[2, 5] = np.nan
    a.X = X
    with pytest.raises(TableError, match=rf"NaN in 1 gene.*{a.var_names[5]}"):
        pk.tl.pathway_scores(a, hallmarks)
    with pytest.raises(TableError, match="no gene set has 5 or more"), pytest.warns(UserWarning, match="1 of 1"):
        pk.tl.pathway_scores(rna_ad.copy(), {"x": ["ENSG0001", "ENSG0002"]})
    with pytest.raises(ValueError, match="method must be"):
        pk.tl.pathway_scores(rna_ad.copy(), hallmarks, method="gsea_typo")
