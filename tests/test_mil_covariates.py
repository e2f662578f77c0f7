"""Late fusion of covariates in MIL (clinical columns, RNA features of the linked MuData) and the default
``use_rep``: a planted label that depends on a real gene AND the bag, so that fusion beats either alone;
save / load / predict round trip; every model and task; bad covariates at predict."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit.errors import TableError

ad = pytest.importorskip("anndata")
torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.usefixtures("one_torch_thread"),
              pytest.mark.filterwarnings("ignore:.*cohort slides have no tile features"),
              pytest.mark.filterwarnings("ignore:From 0.4 .update:FutureWarning")]

SMALL = {"abmil": {"hidden": 64, "attn_hidden": 32}, "clam_sb": {"hidden": 64, "attn_hidden": 32, "k_sample": 4},
         "transmil": {"dim": 64, "heads": 4}, "dsmil": {"q_dim": 32}, "mean": {"hidden": 64},
         "max": {"hidden": 64}}
GENE = "FMO2"  # a real COADREAD gene: its expression is half of the planted label


def bags_and_cohort(feats, rna, pats, seed, *, n_tiles=30):
    """Real TCGA patients and their real RNA; per patient one slide resampled from the real tile bag, with a
    fixed direction added to 6 tiles at strength 8 u (u ~ U(0, 1), the bag's part of the label). Label:
    positive when z(u) + z(GENE) + 0.3 noise > 0. Also a clinical ``stage`` (random, no effect) and ``age``
    (= the gene's z-score + noise: a clinical column carrying the same signal)."""
    rng = np.random.default_rng(seed)
    d = feats.shape[1]
    direction = np.random.default_rng(99).normal(size=d)
    direction /= np.linalg.norm(direction)
    sd = feats.std(0)
    u = rng.uniform(0, 1, len(pats))
    zg = ((rna.loc[pats, GENE] - rna[GENE].mean()) / rna[GENE].std()).to_numpy()
    zu = (u - 0.5) * np.sqrt(12)
    y = np.where(zu + zg + 0.3 * rng.normal(size=len(pats)) > 0, "pos", "neg")
    tiles, rows = {}, []
    for b, p in enumerate(pats):
        X = feats[rng.integers(0, len(feats), n_tiles)] + rng.normal(size=(n_tiles, d)) * 0.1 * sd
        X[rng.choice(n_tiles, 6, replace=False)] += 8.0 * u[b] * direction
        sid = f"{p}-01Z-00-DX1"
        a = ad.AnnData(obs=pd.DataFrame({"slide_id": sid}, index=[str(i) for i in range(n_tiles)]))
        a.obsm["X_uni"] = X.astype(np.float32)
        tiles[sid] = a
        rows.append((sid, y[b], rng.choice(["I", "II", "III"]), 60 + 10 * zg[b] + rng.normal()))
    obs = pd.DataFrame(rows, columns=["slide_id", "label", "stage", "age"]).set_index("slide_id", drop=False)
    obs.index.name = None
    mdata = pk.io.link(ad.AnnData(obs=obs), rna=rna.loc[pats], warn=False)
    return tiles, mdata, {"y": y == "pos", "gene": zg, "u": zu}


@pytest.fixture(scope="module")
def planted(real_tile_bag, rna):
    feats = real_tile_bag[0]
    pats = [p for p in rna.index if p.startswith("TCGA")]
    np.random.default_rng(0).shuffle(pats)
    return bags_and_cohort(feats, rna, pats[:80], 1), bags_and_cohort(feats, rna, pats[80:140], 2)


FIT = {"epochs": 20, "patience": 4, "lr": 2e-4, "progress": False, "random_state": 0}


def test_fusion_beats_the_bag_and_the_covariates_alone(planted, tmp_path):
    from sklearn.metrics import roc_auc_score

    (tr_tiles, tr_md, _), (te_tiles, te_md, truth) = planted
    bag_only = pk.tl.MIL("abmil", **FIT, **SMALL["abmil"]).fit(tr_tiles, tr_md, label="label")
    assert bag_only.use_rep_ == "X_uni"  # the default: the bags' single X_<model> key
    bag_only.predict(te_tiles, te_md, key_added="bag")
    fused = pk.tl.MIL("abmil", **FIT, **SMALL["abmil"])
    fused.fit(tr_tiles, tr_md, label="label", covariates=[GENE, "stage"])
    assert fused.covariates_.columns == [GENE, "stage=II", "stage=III"]
    before = fused.predict(te_tiles, te_md, key_added="fused")
    obs = te_md["slides"].obs
    auc_bag = roc_auc_score(truth["y"], obs["bag_prob_pos"])
    auc_gene = roc_auc_score(truth["y"], truth["gene"])  # the best ranking from the gene alone: itself
    auc_fused = roc_auc_score(truth["y"], obs["fused_prob_pos"])
    print(f"AUROC bag {auc_bag:.3f}, gene {auc_gene:.3f}, fused {auc_fused:.3f}")  # seeded: 0.873, 0.876, 0.967
    assert 0.8 <= auc_bag <= 0.92 and 0.8 <= auc_gene <= 0.92, (auc_bag, auc_gene)
    assert auc_fused >= 0.94 and auc_fused >= max(auc_bag, auc_gene) + 0.05, (auc_bag, auc_gene, auc_fused)
    # the gene carries weight, the random stage little
    w = fused.module_.covariates.weight.detach().numpy()
    assert abs(w[1, 0]) > 3 * max(abs(w[1, 1]), abs(w[1, 2])), w

    # save / load / predict: same predictions, the scaling and encoding in the JSON
    path = fused.save(tmp_path / "fused")
    cfg = json.loads((path / "config.json").read_text())["covariates"]
    assert cfg["names"] == [GENE, "stage"] and [s["kind"] for s in cfg["sources"]] == ["gene", "obs"]
    assert cfg["sources"][1]["categories"] == ["I", "II", "III"] and cfg["nan"] == "raise"
    train_gene = tr_md["rna"][:, GENE].X.ravel()
    assert cfg["mean"][0] == pytest.approx(train_gene.mean(), rel=1e-6)
    assert cfg["sd"][0] == pytest.approx(train_gene.std(), rel=1e-6)
    loaded = pk.tl.MIL.load(path)
    again = loaded.predict(te_tiles, te_md, key_added="loaded")
    np.testing.assert_allclose(again["prob_pos"], before["prob_pos"], rtol=1e-5, atol=1e-6)

    # a clinical column carrying the same signal works as well, from a plain AnnData cohort
    slides = te_md["slides"].copy()
    clin = pk.tl.MIL("abmil", **FIT, **SMALL["abmil"]).fit(tr_tiles, tr_md["slides"].copy(), label="label",
                                                         covariates="age")
    clin.predict(te_tiles, slides, key_added="clin")
    assert roc_auc_score(truth["y"], slides.obs["clin_prob_pos"]) >= 0.94


def test_bad_covariates_at_predict(planted):
    (tr_tiles, tr_md, _), (te_tiles, te_md, _) = planted
    est = pk.tl.MIL("mean", **dict(FIT, epochs=2), **SMALL["mean"])
    est.fit(tr_tiles, tr_md, label="label", covariates=[GENE, "stage"])
    with pytest.raises(TableError, match=r"covariate 'FMO2' \(a gene of the RNA when the model was fit\) is not in "
                                         r"this cohort.*need the MuData"):
        est.predict(te_tiles, te_md["slides"].copy())  # the slides alone: no RNA
    slides = te_md["slides"]
    no_stage = te_md.copy()
    del no_stage["slides"].obs["stage"]
    with pytest.raises(TableError, match=r"covariate 'stage' \(a column of the slides' obs when"):
        est.predict(te_tiles, no_stage)
    new_cat = te_md.copy()
    new_cat["slides"].obs["stage"] = slides.obs["stage"].astype(str).where(slides.obs["stage"] != "I", "IV")
    with pytest.raises(TableError, match=r"covariate 'stage' has value\(s\) \['IV'\] not seen"):
        est.predict(te_tiles, new_cat)
    nan = te_md.copy()
    nan["slides"].obs["stage"] = slides.obs["stage"].astype(object)
    nan["slides"].obs.iloc[:3, nan["slides"].obs.columns.get_loc("stage")] = None
    with pytest.raises(TableError, match=r"3 bag\(s\).*stage=II.*covariate_nan='mean'"):
        est.predict(te_tiles, nan)
    with pytest.raises(TableError, match="covariate 'grade' not found; available: slides obs columns"):
        pk.tl.MIL("mean", **dict(FIT, epochs=1)).fit(tr_tiles, tr_md, label="label", covariates=["grade"])
    # NaN policies: "drop" leaves those bags out (training and prediction), "mean" uses the training mean
    train_nan = tr_md.copy()
    train_nan["slides"].obs["age"] = tr_md["slides"].obs["age"].where(np.arange(tr_md["slides"].n_obs) >= 5)
    with pytest.warns(UserWarning, match=r"fit: 5 bag\(s\) without a value for covariate column\(s\) \['age'\]"):
        dropped = pk.tl.MIL("mean", **dict(FIT, epochs=1)).fit(tr_tiles, train_nan, label="label",
                                                                covariates="age", covariate_nan="drop")
    with pytest.warns(UserWarning, match=r"predict: 5 bag"):
        dropped.predict(tr_tiles, train_nan)
    assert train_nan["slides"].obs["mean_prob_pos"].isna().sum() == 5
    imputed = pk.tl.MIL("mean", **dict(FIT, epochs=1)).fit(tr_tiles, train_nan, label="label", covariates="age",
                                                            covariate_nan="mean")
    imputed.predict(tr_tiles, train_nan)
    assert train_nan["slides"].obs["mean_prob_pos"].notna().all()
    assert imputed.covariates_.mean[0] == pytest.approx(np.nanmean(train_nan["slides"].obs["age"]))


@pytest.mark.parametrize("model", list(SMALL))
def test_every_model_uses_the_covariates(real_tile_bag, rna, model):
    """Bags without signal, a label that is the covariate: only the fused term can rank held-out bags."""
    from sklearn.metrics import roc_auc_score

    feats = real_tile_bag[0]
    pats = [p for p in rna.index if p.startswith("TCGA")][:48]
    tiles, md, truth = bags_and_cohort(feats * 0 + feats.mean(0), rna, pats, 3, n_tiles=8)
    obs = md["slides"].obs
    obs["label"] = np.where(truth["gene"] > 0, "pos", "neg")
    tr, te = obs.index[:32], obs.index[32:]
    est = pk.tl.MIL(model, **dict(FIT, epochs=2), **SMALL[model])
    est.fit({s: tiles[s] for s in tr}, md, label="label", covariates=GENE)
    est.predict({s: tiles[s] for s in te}, md)
    assert roc_auc_score(obs.loc[te, "label"] == "pos", obs.loc[te, f"{model}_prob_pos"]) >= 0.95


@pytest.mark.parametrize("task", ["multiclass", "multilabel", "regression", "survival", "cox"])
def test_every_task_uses_the_covariates(real_tile_bag, task):
    from sklearn.metrics import roc_auc_score

    from pathkit.tl.survival import cindex

    rng = np.random.default_rng(7)
    n = 60
    feats = real_tile_bag[0]
    tiles = {}
    for b in range(n):
        a = ad.AnnData(obs=pd.DataFrame({"slide_id": f"S{b:02d}"}, index=[str(i) for i in range(6)]))
        a.obsm["X_uni"] = feats[rng.integers(0, len(feats), 6)]
        tiles[f"S{b:02d}"] = a
    c = rng.normal(size=n)
    obs = pd.DataFrame({"slide_id": list(tiles), "patient_id": [f"P{b:02d}" for b in range(n)], "c": c},
                       index=list(tiles))
    obs["cls"] = pd.cut(c, [-np.inf, -0.5, 0.5, np.inf], labels=["lo", "mid", "hi"]).astype(str)
    obs["l1"], obs["l2"] = (c > 0).astype(int), (c < -0.5).astype(int)
    obs["y"] = 3.0 + 2.0 * c
    obs["time"], obs["event"] = np.exp(-c + 0.1 * rng.normal(size=n)), 1
    cohort = ad.AnnData(obs=obs)
    kw = {"multiclass": {"label": "cls"}, "multilabel": {"label": ["l1", "l2"]}, "regression": {"label": "y"},
          "survival": {"time": "time", "event": "event"}, "cox": {"time": "time", "event": "event"}}[task]
    res = pk.tl.cross_validate_mil(tiles, cohort, "mean", task=task, folds=3, covariates="c", n_bootstrap=0,
                                   **kw, **dict(FIT, epochs=2), **SMALL["mean"])
    o = cohort.obs
    if task == "multiclass":
        assert res.summary.loc["auroc", "value"] >= 0.9
    elif task == "multilabel":
        assert roc_auc_score(o["l1"], o["mean_prob_l1"]) >= 0.95 and roc_auc_score(o["l2"], o["mean_prob_l2"]) >= 0.95
    elif task == "regression":
        assert np.corrcoef(o["mean_pred"], o["y"])[0, 1] >= 0.95
    else:
        assert cindex(o["time"], o["mean_risk"], o["event"]) >= 0.9
    # each fold standardised the covariate with its own training bags
    means = [e.covariates_.mean[0] for e in res.estimators]
    for k, e in enumerate(res.estimators):
        assert means[k] == pytest.approx(o.loc[o["mean_fold"] != k, "c"].mean())


def test_default_use_rep(real_tile_bag, tmp_path):
    feats = real_tile_bag[0][:40]
    a = ad.AnnData(obs=pd.DataFrame({"slide_id": ["S1"] * 20 + ["S2"] * 20}, index=[str(i) for i in range(40)]))
    a.obsm["X_uni"] = feats
    a.obsm["X_umap"] = feats[:, :2]
    from pathkit.tl._mil.bags import default_rep

    assert default_rep(a) == "X_uni" and default_rep({"S1": a}) == "X_uni"  # X_umap is not a feature key
    a.write_h5ad(tmp_path / "bags.h5ad")
    assert default_rep(tmp_path / "bags.h5ad") == "X_uni" and default_rep(tmp_path) == "X_uni"
    a.obsm["X_conch"] = feats[:, :256]
    with pytest.raises(TableError, match=r"which tile features\?.*pass use_rep= one of \['X_uni', 'X_conch'\]"):
        pk.tl.MIL("mean").fit(a, pd.DataFrame({"slide_id": ["S1", "S2"], "patient_id": ["P1", "P2"],
                                                "label": ["a", "b"]}), label="label")
    b = ad.AnnData(X=feats, obs=a.obs.copy())
    assert default_rep(b) == "X"


def test_patient_bags_average_their_slides_covariates(real_tile_bag):
    rng = np.random.default_rng(8)
    feats = real_tile_bag[0]
    tiles, rows = {}, []
    for b in range(24):
        sid = f"S{b:02d}"
        a = ad.AnnData(obs=pd.DataFrame({"slide_id": sid}, index=[str(i) for i in range(5)]))
        a.obsm["X_uni"] = feats[rng.integers(0, len(feats), 5)]
        tiles[sid] = a
        rows.append({"slide_id": sid, "patient_id": f"P{b // 2:02d}", "c": float(b), "y": "ab"[(b // 2) % 2]})
    cohort = ad.AnnData(obs=pd.DataFrame(rows, index=list(tiles)))
    est = pk.tl.MIL("mean", bag_by="patient", **dict(FIT, epochs=1, val_fraction=0), **SMALL["mean"])
    est.fit(tiles, cohort, label="y", covariates="c")
    per_patient = cohort.obs.groupby("patient_id")["c"].mean()  # 0.5, 2.5, ...: each patient's two slides
    assert est.covariates_.mean[0] == pytest.approx(per_patient.mean())
    assert est.covariates_.sd[0] == pytest.approx(per_patient.std(ddof=0))
