"""pk.tl.probe / compare_encoders / predict_expression on planted labels built from real tiles and real RNA."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from _planted import planted_cohort

import pathkit as pk
from pathkit.errors import TableError
from pathkit.tl._probe import patient_folds


@pytest.fixture(scope="module")
def labelled(shared_data, clustered_bag, rna):
    """100 real patients with a planted binary label (their slides' tissue mix follows it), 20 with 2 slides;
    ``noisy`` flips the label of exactly 20 patients, so the best reachable accuracy is 0.8."""
    pats = rna.index[:100]
    rng = np.random.default_rng(3)
    lab = pd.Series(rng.permutation(np.repeat([0, 1], 50)), index=pats)
    md, _tiles, _share = planted_cohort(shared_data, lab.astype(float), bag=clustered_bag, seed=2)
    s = md["slides"]
    s.obs["label"] = s.obs["patient_id"].map(lab.map({0: "MSS", 1: "MSI"}))
    flip = pd.Series(False, index=pats)
    flip.iloc[rng.choice(100, 20, replace=False)] = True
    noisy = lab.where(~flip, 1 - lab)
    s.obs["noisy"] = s.obs["patient_id"].map(noisy.map({0: "MSS", 1: "MSI"}))
    s.obsm["X_noise"] = rng.normal(size=s.obsm["X_mean"].shape)
    return md


def _metric(t, name):
    return t.set_index("metric").loc[name]


def test_linear_probe_reaches_known_accuracy(labelled):
    md = labelled.copy()
    t = pk.tl.probe(md, "label", use_rep="X_mean", n_boot=100)
    acc = _metric(t, "accuracy")
    assert acc["value"] >= 0.95 and _metric(t, "auroc")["value"] >= 0.98
    assert acc["ci_low"] <= acc["value"] <= acc["ci_high"] and t["n"].iloc[0] == 120 and t["n_patients"].iloc[0] == 100
    pred = md["slides"].obs["probe_label_linear"]
    assert (pred.astype(str) == md["slides"].obs["label"]).mean() == pytest.approx(acc["value"])
    # 20 of 100 patients carry a flipped label: the probe learns the true mix, so it scores about 0.8
    n = pk.tl.probe(md, "noisy", use_rep="X_mean", n_boot=100)
    assert 0.72 <= _metric(n, "accuracy")["value"] <= 0.88
    agree = (md["slides"].obs["probe_noisy_linear"].astype(str) == md["slides"].obs["label"]).mean()
    assert agree >= 0.9
    # random features: chance
    r = pk.tl.probe(md, "label", use_rep="X_noise", n_boot=100, C=0.01)
    assert 0.3 <= _metric(r, "auroc")["value"] <= 0.7


def test_knn_and_fewshot(labelled):
    md = labelled.copy()
    k = pk.tl.probe(md, "label", use_rep="X_mean", method="knn", n_neighbors=10, n_boot=100)
    assert _metric(k, "accuracy")["value"] >= 0.95
    f = pk.tl.probe(md, "label", use_rep="X_mean", method="fewshot", k_shot=4, n_draws=5)
    fa = _metric(f, "balanced_accuracy")
    assert fa["value"] >= 0.9 and fa["ci_low"] <= fa["value"] <= fa["ci_high"]
    with pytest.raises(ValueError, match="needs a class label"):
        md["slides"].obs["cont"] = np.linspace(0, 1, md["slides"].n_obs)
        pk.tl.probe(md, "cont", use_rep="X_mean", method="fewshot")


def test_folds_are_patient_level_and_bad_labels(labelled):
    md = labelled.copy()
    s = md["slides"]
    f = patient_folds(s.obs["label"].to_numpy(), s.obs["patient_id"].to_numpy(), 5, classification=True)
    per_patient = pd.Series(f).groupby(s.obs["patient_id"].to_numpy()).nunique()
    assert per_patient.max() == 1 and len(np.unique(f)) == 5  # 20 patients with two slides: never split
    s.obs.loc[s.obs_names[:7], "label"] = np.nan
    with pytest.warns(UserWarning, match=r"7 of 120 slide\(s\) without a label 'label'"):
        t = pk.tl.probe(md, "label", use_rep="X_mean", n_boot=50, C=0.01)
    assert t["n"].iloc[0] == 113 and s.obs["probe_label_linear"].iloc[:7].isna().all()
    s.obs["fold"] = f
    two = s.obs_names[s.obs["patient_id"].duplicated(keep=False)][:2]  # the two slides of one patient
    s.obs.loc[two[1], "fold"] = (s.obs.loc[two[0], "fold"] + 1) % 5
    with pytest.raises(TableError, match=r"1 patient\(s\) are in more than one fold"):
        pk.tl.probe(md, "noisy", use_rep="X_mean", folds="fold")
    with pytest.raises(TableError, match="X_uni"):
        pk.tl.probe(md, "noisy", use_rep="X_uni")
    s.obs["one"] = "MSS"
    with pytest.raises(TableError, match="single class"):
        pk.tl.probe(md, "one", use_rep="X_mean")


def test_compare_encoders_table_and_figure(labelled):
    md = labelled.copy()
    table, fig = pk.tl.compare_encoders(md, "label", ["X_mean", "X_noise"], n_boot=50, C=0.01)
    au = table[table["metric"] == "auroc"].set_index("use_rep")["value"]
    assert au["X_mean"] >= 0.98 and au["X_noise"] <= 0.7
    assert list(fig.data[0].x) == ["X_mean", "X_noise"]
    np.testing.assert_allclose(fig.data[0].y, au.loc[["X_mean", "X_noise"]].to_numpy())
    assert {"probe_label_linear_X_mean", "probe_label_linear_X_noise"} <= set(md["slides"].obs.columns)


def test_ridge_recovers_planted_expression(shared_data, clustered_bag, rna):
    pats = rna.index[100:220]
    md, _, _ = planted_cohort(shared_data, rna.loc[pats, "EGFR"], bag=clustered_bag, seed=4)
    with pytest.warns(UserWarning, match="constant across"):
        res = pk.tl.predict_expression(md, "X_mean", n_permutations=19)
    eg = res.set_index("gene").loc["EGFR"]
    assert eg["r"] >= 0.8 and eg["pvalue"] == pytest.approx(1 / 20) and eg["null_q95"] < 0.4
    assert res.iloc[0]["gene"] == "EGFR" and eg["n"] == 120
    # out-of-fold predictions in a layer; r recomputed from it
    layer = md["rna"].layers["predicted"][:, md["rna"].var_names.get_loc("EGFR")]
    assert np.corrcoef(layer, md["rna"][:, "EGFR"].X.ravel())[0, 1] == pytest.approx(eg["r"])
    # a regression probe on the slides (patient-level folds) reaches the same
    md["slides"].obs["egfr"] = md["slides"].obs["patient_id"].map(rna.loc[pats, "EGFR"]).astype(float)
    t = pk.tl.probe(md, "egfr", use_rep="X_mean", n_boot=50, C=0.01)
    assert _metric(t, "pearson_r")["value"] >= 0.8


def test_ridge_maps_equal_sklearn():
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pathkit.tl._expression import _cv_predict, _fold_maps

    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 60)), rng.normal(size=(40, 3))
    X[:, 5] = 1.0  # a constant feature
    fold = np.arange(40) % 4
    got = _cv_predict(_fold_maps(X, fold, 3.0), Y)
    for k in range(4):
        est = make_pipeline(StandardScaler(), Ridge(alpha=3.0)).fit(X[fold != k], Y[fold != k])
        np.testing.assert_allclose(got[fold == k], est.predict(X[fold == k]), atol=1e-10)


def test_predict_expression_bad_rna(labelled):
    md = labelled.copy()
    X = md["rna"].X.copy()
    X[0, md["rna"].var_names.get_loc("TP53")] = np.nan
    md["rna"].X = X
    with pytest.raises(TableError, match=r"NaN for 1 gene.*TP53"):
        pk.tl.predict_expression(md, "X_mean", genes=["TP53", "EGFR"], n_permutations=0)
    res = pk.tl.predict_expression(md, "X_mean", genes=["EGFR"], n_permutations=0)
    assert res["pvalue"].isna().all() and np.isfinite(res["r"]).all()
    with pytest.raises(TableError, match="X_uni"):
        pk.tl.predict_expression(md, "X_uni")
