"""pk.tl.tile_composition + pk.tl.associate: planted signals in real tiles and real RNA are found, q-values
control the false discovery rate over repeated nulls, statistics equal scipy / statsmodels."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from _planted import planted_cohort
from scipy import stats

import pathkit as pk
from pathkit.errors import TableError

HALLMARKS = "hallmarks_signatures.csv"


@pytest.fixture(scope="module")
def egfr_cohort(shared_data, clustered_bag, rna):
    """120 real patients; the share of cluster-A tiles on their slides follows their real EGFR expression."""
    pats = rna.index[:120]
    md, tiles, share = planted_cohort(shared_data, rna.loc[pats, "EGFR"], bag=clustered_bag)
    return md, tiles, share


def test_tile_composition_counts(egfr_cohort):
    md, tiles, share = egfr_cohort
    md = md.copy()
    props = pk.tl.tile_composition(tiles, "leiden", cohort=md)
    comp = md["slides"].obsm["composition_leiden"]
    assert list(comp.columns) == ["A", "B"] and list(comp.index) == list(md["slides"].obs_names)
    np.testing.assert_allclose(comp["A"].to_numpy(), share)  # the planted share, counted independently
    np.testing.assert_allclose(comp.sum(axis=1), 1.0)
    t = tiles[5]
    assert props.loc[t.obs["slide_id"].iloc[0], "B"] == pytest.approx((t.obs["leiden"] == "B").mean())
    assert md["slides"].uns["composition_leiden"]["n_tiles"][t.obs["slide_id"].iloc[0]] == t.n_obs
    # pooled tiles (one AnnData) give the same table
    import anndata as ad

    pooled = ad.concat(tiles, index_unique="-")
    pd.testing.assert_frame_equal(pk.tl.tile_composition(pooled).loc[props.index], props, check_like=True)
    with pytest.raises(TableError, match="no column 'qc'"):
        pk.tl.tile_composition(tiles, "qc")


def test_planted_gene_found(egfr_cohort):
    md, tiles, _ = egfr_cohort
    md = md.copy()
    pk.tl.tile_composition(tiles, cohort=md)
    with pytest.warns(UserWarning, match="3 constant target"):  # real genes constant in these 120 patients
        res = pk.tl.associate(md, "composition_leiden", "genes")
    assert list(res.columns) == ["feature", "target", "statistic", "pvalue", "qvalue", "n"]
    top = res[res["feature"] == "A"].iloc[0]
    assert top["target"] == "EGFR" and top["qvalue"] < 1e-10 and top["statistic"] > 0.9
    assert top["n"] == 120  # 140 slides, patients with two slides averaged: each patient counts once
    assert md.uns["associations"] is res
    # linear model on embedding PCs: the planted axis is PC1 and its strongest gene is EGFR
    lin = pk.tl.associate(md, "X_mean", "EGFR", n_pcs=3, method="linear", key_added=None)
    assert lin.iloc[0]["feature"] == "X_mean_PC1" and lin.iloc[0]["qvalue"] < 1e-10
    assert set(lin.columns) >= {"r", "coef"} and abs(lin.iloc[0]["r"]) > 0.9


def test_planted_pathway_found(shared_data, clustered_bag, rna):
    import anndata as ad

    pats = rna.index[120:240]
    scored = ad.AnnData(rna.loc[pats].to_numpy())
    scored.obs_names, scored.var_names = list(pats), list(rna.columns)
    sets = pd.read_csv(shared_data / "tcga" / HALLMARKS).iloc[:, :12]  # hypoxia, notch (4 genes measured), ...
    with pytest.warns(UserWarning, match="1 of 12 gene set"):
        pk.tl.pathway_scores(scored, sets)
    hyp = scored.obsm["pathways_score_genes"]["HALLMARK_HYPOXIA"]
    md, tiles, _ = planted_cohort(shared_data, hyp, bag=clustered_bag, seed=1)
    with pytest.warns(UserWarning):
        pk.tl.pathway_scores(md, sets)
    pk.tl.tile_composition(tiles, cohort=md)
    res = pk.tl.associate(md, "composition_leiden", "pathways_score_genes", fdr="feature")
    top = res[res["feature"] == "A"].iloc[0]
    assert top["target"] == "HALLMARK_HYPOXIA" and top["qvalue"] < 0.05 and top["statistic"] > 0.9
    assert res["target"].nunique() == 11


def test_statistics_equal_scipy_and_statsmodels(egfr_cohort):
    sm = pytest.importorskip("statsmodels.api")
    from statsmodels.stats.multitest import multipletests

    md, _tiles, _ = egfr_cohort
    md = md.copy()
    rng = np.random.default_rng(0)
    slides = md["slides"]
    slides.obs["risk"] = rng.normal(size=slides.n_obs)
    md["rna"].obs["age"] = rng.normal(60, 10, md["rna"].n_obs)
    md["rna"].obs["site"] = pd.Categorical(rng.choice(["a", "b", "c"], md["rna"].n_obs))
    genes = ["EGFR", "TP53", "LDHA", "ALDOA"]
    sp = pk.tl.associate(md, "risk", genes, key_added=None).set_index("target")
    risk = slides.obs.groupby("patient_id", observed=True)["risk"].mean().loc[md["rna"].obs_names]
    for g in genes:
        rho, p = stats.spearmanr(risk, md["rna"][:, g].X.ravel())
        assert sp.loc[g, "statistic"] == pytest.approx(rho, abs=1e-12)
        assert sp.loc[g, "pvalue"] == pytest.approx(p, rel=1e-9)
    bh = multipletests(sp["pvalue"], method="fdr_bh")[1]
    np.testing.assert_allclose(sp["qvalue"], bh, rtol=1e-12)
    lin = pk.tl.associate(md, "risk", genes, method="linear", covariates=["age", "site"],
                          key_added=None).set_index("target")
    design = pd.get_dummies(md["rna"].obs[["age", "site"]], drop_first=True, dtype=float)
    design.insert(0, "risk", risk.to_numpy())
    design = sm.add_constant(design)
    for g in genes:
        fit = sm.OLS(md["rna"][:, g].X.ravel(), design).fit()
        assert lin.loc[g, "statistic"] == pytest.approx(fit.tvalues["risk"], rel=1e-9)
        assert lin.loc[g, "pvalue"] == pytest.approx(fit.pvalues["risk"], rel=1e-7)
        assert lin.loc[g, "coef"] == pytest.approx(fit.params["risk"], rel=1e-9)


def test_fdr_at_or_below_nominal_over_repeated_nulls(shared_data, rna):
    """Real genes (correlated as they are) against 20 null features + 1 planted feature, 100 repetitions:
    the mean proportion of false discoveries among discoveries stays at or below 5 %."""
    import anndata as ad
    import mudata

    pats = rna.index[:200]
    X = rna.loc[pats]
    X = X.loc[:, X.nunique() > 1]
    X = X[["EGFR"] + [g for g in X.columns[:399] if g != "EGFR"]]  # 400 real genes
    r_ad = ad.AnnData(X.to_numpy())
    r_ad.obs_names, r_ad.var_names = list(pats), list(X.columns)
    r_ad.uns["link"] = {"slides_key": "patient_id"}
    slides = ad.AnnData(obs=pd.DataFrame({"patient_id": list(pats)}, index=[f"{p}-DX1" for p in pats]))
    with mudata.set_options(pull_on_update=False):
        md = mudata.MuData({"slides": slides, "rna": r_ad})
    rng = np.random.default_rng(0)
    egfr = X["EGFR"].to_numpy()
    reps, cols, blocks = 100, [], []
    for k in range(reps):  # every repetition in one vectorised call; BH within each repetition
        F = rng.normal(size=(len(pats), 21))
        F[:, 0] = (egfr - egfr.mean()) / egfr.std() + rng.normal(scale=1.0, size=len(pats))
        blocks.append(F)
        cols += [f"{k}:planted"] + [f"{k}:null{i}" for i in range(20)]
    feats = pd.DataFrame(np.hstack(blocks), index=slides.obs_names, columns=cols)
    res = pk.tl.associate(md, feats, key_added=None)
    assert len(res) == reps * 21 * X.shape[1]
    res["rep"] = res["feature"].map({c: c.split(":")[0] for c in cols})
    fdp, found = [], 0
    for _, r in res.groupby("rep"):
        q = stats.false_discovery_control(r["pvalue"].to_numpy(), method="bh")
        hit = r[q < 0.05]
        false = int((~hit["feature"].str.endswith("planted")).sum())
        fdp.append(false / max(len(hit), 1))
        found += bool((hit["feature"].str.endswith("planted") & (hit["target"] == "EGFR")).any())
    assert found == reps  # the planted gene is found every time
    assert np.mean(fdp) <= 0.05, np.mean(fdp)
    # the same q-values as associate's own, which it computes over its whole table
    one = res[res["rep"] == "0"]
    np.testing.assert_allclose(
        pk.tl.associate(md, feats[[c for c in cols if c.startswith("0:")]], key_added=None)
        .set_index(["feature", "target"]).loc[list(zip(one["feature"], one["target"])), "qvalue"],
        stats.false_discovery_control(one["pvalue"].to_numpy(), method="bh"), rtol=1e-10)


def test_bad_rna_inputs_are_named(egfr_cohort):
    md, tiles, _ = egfr_cohort
    md = md.copy()
    pk.tl.tile_composition(tiles, cohort=md)
    X = md["rna"].X.copy()
    X[3, md["rna"].var_names.get_loc("TP53")] = np.nan
    md["rna"].X = X
    with pytest.raises(TableError, match=r"NaN in 1 column.*TP53.*nan_policy='omit'"):
        pk.tl.associate(md, "composition_leiden", ["TP53", "EGFR"])
    with pytest.warns(UserWarning, match=r"dropped 1 target\(s\) with NaN"):
        res = pk.tl.associate(md, "composition_leiden", ["TP53", "EGFR"], nan_policy="omit")
    assert set(res["target"]) == {"EGFR"}
    with pytest.warns(UserWarning, match=r"1 constant target\(s\) dropped.*VAMP7"):
        pk.tl.associate(md, "composition_leiden", ["VAMP7", "EGFR"])
    with pytest.raises(TableError, match="not an obsm key"):
        pk.tl.associate(md, "X_missing")
    md["slides"].obs["patient_id"] = "nobody"
    with pytest.raises(TableError, match="only 0 patients"):
        pk.tl.associate(md, "composition_leiden", "EGFR")


def test_volcano_and_heatmap(egfr_cohort):
    md, tiles, _ = egfr_cohort
    md = md.copy()
    pk.tl.tile_composition(tiles, cohort=md)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = pk.tl.associate(md, "composition_leiden", "genes")
    fig = pk.pl.volcano(md)
    n_sig = int((res["qvalue"] < 0.05).sum())
    assert len(fig.data[1].x) == n_sig and len(fig.data[0].x) == len(res) - n_sig
    np.testing.assert_allclose(sorted(fig.data[1].y), sorted(-np.log10(res.loc[res["qvalue"] < 0.05, "pvalue"])))
    hm = pk.pl.association_heatmap(res, top=5)
    assert next(iter(hm.data[0].x)) == "EGFR" and list(hm.data[0].y) == ["A", "B"]
    z = np.asarray(hm.data[0].z)
    assert z[0, 0] == pytest.approx(res.query("feature == 'A' and target == 'EGFR'")["statistic"].iloc[0])
    assert hm.data[0].text[0][0] == "*"


def test_tile_composition_reads_a_cohorts_tile_files(egfr_cohort, tmp_path):
    """A cohort from embed_cohort names each slide's tiles in obs['tile_file']; a missing file gives NaN."""
    md, tiles, share = egfr_cohort
    slides = md["slides"][:3].copy()
    files = []
    for t in tiles[:2]:
        f = tmp_path / f"{t.obs['slide_id'].iloc[0]}.h5ad"
        t.write_h5ad(f)
        files.append(str(f))
    slides.obs["tile_file"] = files + [str(tmp_path / "gone.h5ad")]
    props = pk.tl.tile_composition(slides, "leiden")
    comp = slides.obsm["composition_leiden"]
    np.testing.assert_allclose(comp["A"].to_numpy()[:2], share[:2])
    assert comp.iloc[2].isna().all() and len(props) == 2


def test_volcano_labels_do_not_overlap():
    """Issue 29: notebook 04's volcano stacked its top labels on one another (pathways co-vary, so the most
    significant tests sit close together). Each label box, at the figure's size and 9-px font, is free."""
    from pathkit.pl._associate import VOLCANO_PX, label_boxes

    rng = np.random.default_rng(0)
    n = 141
    stat = np.r_[0.55 + rng.normal(0, 0.02, 12), rng.normal(0, 0.15, n - 12)]     # a tight top cluster
    p = np.r_[10 ** -rng.uniform(9, 11, 12), rng.uniform(1e-3, 1, n - 12)]
    tab = pd.DataFrame({"feature": "A", "target": [f"HALLMARK_SET_{i}" for i in range(n)], "statistic": stat,
                        "pvalue": p, "qvalue": np.minimum(p * n, 1)})
    fig = pk.pl.volcano(tab, label_top=10)
    assert (fig.layout.width, fig.layout.height) == VOLCANO_PX
    ann = list(fig.layout.annotations)
    assert len(ann) == 10 and all(a.showarrow for a in ann)
    y = -np.log10(p)
    rows = [int(np.flatnonzero(np.isclose(stat, a.x) & np.isclose(y, a.y))[0]) for a in ann]
    boxes = label_boxes(stat, y, [a.text for a in ann], [(a.ax, a.ay) for a in ann], rows)
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)
