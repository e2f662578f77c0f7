"""Every MIL model as an estimator: planted bags from the real TCGA bag, fit on one cohort, save / load,
predict on a held-out cohort; regression; bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit.errors import TableError

ad = pytest.importorskip("anndata")
torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

MODELS = {  # small networks, few epochs: the planted signal is easy
    "abmil": {"hidden": 64, "attn_hidden": 32},
    "clam_sb": {"hidden": 64, "attn_hidden": 32, "k_sample": 4},
    "transmil": {"dim": 64, "heads": 4},
    "dsmil": {"q_dim": 32},
    "mean": {"hidden": 64},
    "max": {"hidden": 64},
}
TRAIN = {"epochs": 8, "patience": 3, "lr": 1e-3, "progress": False}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def planted(feats, n_bags, n_tiles, level, seed, n_planted=6, prefix="S"):
    """Bags resampled from the real bag (+ noise); bag b gets ``level(b)`` x a fixed direction added to
    ``n_planted`` tiles. Returns tiles (dict), a cohort AnnData (2 slides per patient) and the planted masks."""
    rng = np.random.default_rng(seed)
    d = feats.shape[1]
    direction = np.random.default_rng(99).normal(size=d)
    direction /= np.linalg.norm(direction)
    sd = feats.std(0)
    tiles, masks, rows = {}, {}, []
    for b in range(n_bags):
        nt = n_tiles(b) if callable(n_tiles) else n_tiles
        X = feats[rng.integers(0, len(feats), nt)] + rng.normal(size=(nt, d)) * 0.1 * sd
        mask = np.zeros(nt, bool)
        if level(b) > 0:
            mask[rng.choice(nt, min(n_planted, nt), replace=False)] = True
            X[mask] += level(b) * direction
        sid = f"{prefix}{seed}-{b:03d}"
        a = ad.AnnData(obs=pd.DataFrame({"slide_id": sid}, index=[str(i) for i in range(nt)]))
        a.obsm["X_uni"] = X.astype(np.float32)
        tiles[sid], masks[sid] = a, mask
        rows.append((sid, f"P{seed}-{b // 2:03d}", level(b)))
    obs = pd.DataFrame(rows, columns=["slide_id", "patient_id", "level"]).set_index("slide_id", drop=False)
    obs.index.name = None
    return tiles, ad.AnnData(obs=obs), masks


def _label(cohort):
    cohort.obs["msi"] = np.where(cohort.obs["level"] > 0, "MSI", "MSS")
    return cohort


@pytest.fixture(scope="module")
def cohorts(real_feats):
    pos = lambda b: 6.0 if (b // 2) % 2 else 0.0
    train = planted(real_feats, 40, 40, pos, seed=1)
    test = planted(real_feats, 24, 40, pos, seed=2)
    return (train[0], _label(train[1]), train[2]), (test[0], _label(test[1]), test[2])


@pytest.mark.parametrize("model", list(MODELS))
def test_each_model_learns_and_keeps_it_on_a_held_out_cohort(cohorts, model, tmp_path):
    from sklearn.metrics import roc_auc_score

    (tr_tiles, tr_cohort, _), (te_tiles, te_cohort, te_masks) = cohorts
    est = pk.tl.MIL(model, "binary", random_state=0, **TRAIN, **MODELS[model])
    est.fit(tr_tiles, tr_cohort, label="msi", use_rep="X_uni")
    auc_train = roc_auc_score(tr_cohort.obs["msi"] == "MSI",
                              est.predict(tr_tiles, tr_cohort.copy(), key_added="m")["prob_MSI"])
    assert auc_train >= 0.9, auc_train
    before = est.predict(te_tiles, te_cohort.copy())
    # external validation: save, load, predict on a cohort never seen
    loaded = pk.tl.MIL.load(est.save(tmp_path / model))
    assert (tmp_path / model / "model.safetensors").exists() and loaded.classes_ == ["MSI", "MSS"]
    table = loaded.predict(te_tiles, te_cohort, key_added=model)
    obs = te_cohort.obs
    np.testing.assert_allclose(table["prob_MSI"], before["prob_MSI"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(obs[f"{model}_prob_MSI"].to_numpy(), table.loc[obs["slide_id"], "prob_MSI"])
    auc = roc_auc_score(obs["msi"] == "MSI", obs[f"{model}_prob_MSI"])
    assert auc >= 0.9, (model, auc)
    assert (obs[f"{model}_pred"].astype(str) == obs["msi"]).mean() >= 0.8
    # every model writes per-tile importance; on positive slides the planted tiles rank above the rest
    ranks = []
    for sid, a in te_tiles.items():
        imp = a.obs[f"{model}_importance"].to_numpy()
        assert np.isfinite(imp).all() and len(imp) == a.n_obs
        np.testing.assert_array_equal(imp, loaded.importance_[sid])
        m = te_masks[sid]
        if m.any():
            ranks.append(roc_auc_score(m, imp))
    assert np.mean(ranks) >= 0.7, (model, np.mean(ranks))


def test_regression_recovers_a_planted_expression(real_feats):
    rng = np.random.default_rng(5)
    expr = rng.uniform(0, 1, 48)  # the "gene": expression proportional to the planted signal's strength
    tiles, cohort, _ = planted(real_feats, 48, 30, lambda b: 8.0 * expr[b], seed=3, n_planted=8)
    cohort.obs["GENE1"] = 2.0 + 3.0 * expr + 0.05 * rng.normal(size=48)
    res = pk.tl.cross_validate_mil(tiles, cohort, "abmil", label="GENE1", task="regression", folds=3,
                                   use_rep="X_uni", n_bootstrap=100, **dict(TRAIN, epochs=10, patience=4),
                                   **MODELS["abmil"])
    r = np.corrcoef(cohort.obs["abmil_pred"], cohort.obs["GENE1"])[0, 1]
    assert r >= 0.8, r
    assert res.summary.loc["pearson_r", "value"] == pytest.approx(r, abs=1e-6)  # float32 predictions
    lo, hi = res.summary.loc["pearson_r", ["ci_lower", "ci_upper"]]
    assert lo <= r <= hi
    # predictions are on the label's scale (the target is standardised inside)
    assert abs(cohort.obs["abmil_pred"].mean() - cohort.obs["GENE1"].mean()) < 0.5


def test_patient_bags_pool_a_patients_slides(cohorts):
    (tiles, cohort, _), _ = cohorts
    cohort = cohort.copy()
    res = pk.tl.cross_validate_mil(tiles, cohort, "abmil", label="msi", bag_by="patient", folds=4, use_rep="X_uni",
                                   n_bootstrap=50, **TRAIN, **MODELS["abmil"])
    obs = cohort.obs
    assert res.metrics.loc["pooled", "n"] == 20  # 40 slides, 20 patients: one bag each
    assert (obs.groupby("patient_id")["abmil_prob_MSI"].nunique() == 1).all()
    assert res.summary.loc["auroc", "value"] >= 0.9
    # a patient's attention is one softmax over all its tiles, split back to its slides
    for _, g in obs.groupby("patient_id"):
        total = sum(tiles[s].obs["abmil_importance"].sum() for s in g["slide_id"])
        assert total == pytest.approx(1.0, abs=1e-5)


def test_missing_labels_dropped_with_a_count(cohorts):
    (tiles, cohort, _), _ = cohorts
    cohort = cohort.copy()
    drop = cohort.obs["patient_id"].isin(["P1-000", "P1-003"])
    cohort.obs.loc[drop, "msi"] = None
    with pytest.warns(UserWarning, match=r"labels missing for 2 patients \(4 slides\)"):
        est = pk.tl.MIL("mean", "binary", **TRAIN, **MODELS["mean"]).fit(tiles, cohort, label="msi",
                                                                          use_rep="X_uni")
    # they are still predicted (no label needed for that)
    est.predict(tiles, cohort)
    assert cohort.obs.loc[drop, "mean_prob_MSI"].notna().all()


def test_a_patient_in_two_folds_is_refused(cohorts):
    (tiles, cohort, _), _ = cohorts
    pats = sorted(cohort.obs["patient_id"].unique())
    splits = [(pats[5:], pats[:5]), (pats[:4] + pats[10:], pats[4:10])]  # pats[4] held out twice
    with pytest.raises(TableError, match="held out in folds 0 and 1"), \
            pytest.warns(UserWarning, match="10 patients are in no held-out split"):
        pk.tl.cross_validate_mil(tiles, cohort.copy(), "mean", label="msi", splits=splits, use_rep="X_uni", **TRAIN)
    leak = [(pats[3:], pats[:5])]  # on both sides
    with pytest.raises(TableError, match="in both train and val"):
        pk.tl.cross_validate_mil(tiles, cohort.copy(), "mean", label="msi", splits=leak, use_rep="X_uni", **TRAIN)


@pytest.mark.parametrize("model", list(MODELS))
def test_bags_of_one_tile(real_feats, model):
    sizes = lambda b: 1 if b % 3 == 0 else 5
    tiles, cohort, _ = planted(real_feats, 12, sizes, lambda b: 6.0 if b % 2 else 0.0, seed=4, n_planted=1)
    _label(cohort)
    est = pk.tl.MIL(model, "binary", **dict(TRAIN, epochs=2), **MODELS[model])
    est.fit(tiles, cohort, label="msi", use_rep="X_uni")
    est.predict(tiles, cohort)
    one = [s for s, a in tiles.items() if a.n_obs == 1]
    assert len(one) == 4 and cohort.obs[f"{model}_prob_MSI"].notna().all()
    for s in one:
        assert np.isfinite(tiles[s].obs[f"{model}_importance"]).all()


def test_wrong_feature_width_at_predict(cohorts):
    (tiles, cohort, _), _ = cohorts
    est = pk.tl.MIL("mean", "binary", **dict(TRAIN, epochs=1), **MODELS["mean"])
    est.fit(tiles, cohort, label="msi", use_rep="X_uni")
    other = {}
    for sid, a in list(tiles.items())[:3]:
        b = a.copy()
        b.obsm["X_conch"] = b.obsm["X_uni"][:, :256]
        other[sid] = b
    with pytest.raises(TableError, match=r"obsm\['X_conch'\] has 256 features per tile, but the model was fit on 512"):
        est.predict(other, cohort.copy(), use_rep="X_conch")
    with pytest.raises(TableError, match=r"no obsm\['X_gigapath'\]"):
        est.predict(other, cohort.copy(), use_rep="X_gigapath")


def test_registry_is_data_and_unknown_names_are_refused():
    from pathkit.errors import ModelNotFoundError
    from pathkit.models.mil import MIL_MODELS, build_mil

    assert set(MODELS) <= set(MIL_MODELS)
    cls, defaults = MIL_MODELS["abmil"]
    m = build_mil("abmil", 32, 3)
    assert isinstance(m, cls) and m.head.out_features == 3 and m.fc[0].out_features == defaults["hidden"]
    with pytest.raises(ModelNotFoundError, match="unknown MIL model 'nope'"):
        pk.tl.MIL("nope")
    with pytest.raises(TypeError, match="no parameter"):
        pk.tl.MIL("abmil", q_dim=3)
