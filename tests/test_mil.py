"""MIL cross-validation (ABMIL): planted-signal bags from a real TCGA bag, patient-level folds, survival heads,
user splits, every bag source."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit.errors import TableError
from pathkit.tl._mil.bags import BagSet
from pathkit.tl._mil.tasks import cox_nll as _cox_nll
from pathkit.tl._mil.tasks import nll_surv as _nll_surv
from pathkit.tl.splits import patient_folds

ad = pytest.importorskip("anndata")
torch = pytest.importorskip("torch")
h5py = pytest.importorskip("h5py")

# small network and few epochs: the planted signal is easy; keeps the file well under a minute
FAST = {"use_rep": "X_uni", "hidden": 64, "attn_hidden": 32, "epochs": 8, "patience": 3, "n_bootstrap": 200, "progress": False, "lr": 1e-3}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _bags(feats, n_bags, n_tiles, shift, seed=0, n_planted=6, directions=1):
    """Bags resampled from the real bag (+ noise); ``shift(b)`` -> (direction index or None, magnitude)."""
    rng = np.random.default_rng(seed)
    d = feats.shape[1]
    dirs = rng.normal(size=(directions, d))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    sd = feats.std(0)
    tiles, planted = {}, {}
    for b in range(n_bags):
        X = feats[rng.integers(0, len(feats), n_tiles)] + rng.normal(size=(n_tiles, d)) * 0.1 * sd
        mask = np.zeros(n_tiles, bool)
        which, mag = shift(b)
        if which is not None and mag > 0:
            mask[rng.choice(n_tiles, n_planted, replace=False)] = True
            X[mask] += mag * dirs[which]
        sid = f"TCGA-XX-{b:04d}-01Z-00-DX1"
        a = ad.AnnData(obs=pd.DataFrame({"slide_id": sid}, index=[str(i) for i in range(n_tiles)]))
        a.obsm["X_uni"] = X.astype(np.float32)  # features under the encoder's key; X stays empty
        tiles[sid] = a
        planted[sid] = mask
    return tiles, planted


def _cohort(rows, columns):
    df = pd.DataFrame(rows, columns=columns)
    df.index = df["slide_id"].astype(str)
    return ad.AnnData(obs=df)


def _topk_recall(tiles, planted):
    rec = []
    for sid, mask in planted.items():
        if mask.any():
            att = tiles[sid].obs["abmil_importance"].to_numpy()
            top = np.argsort(-att)[: mask.sum()]
            rec.append(mask[top].mean())
    return float(np.mean(rec))


@pytest.fixture(scope="module")
def binary_run(real_feats):
    # 60 slides from 20 patients (3 slides each); label is per patient
    tiles, planted = _bags(real_feats, 60, 60, lambda b: (0, 6.0) if (b // 3) % 2 else (None, 0))
    rows = [(sid, f"TCGA-XX-P{b // 3:03d}", "MSI" if (b // 3) % 2 else "MSS") for b, sid in enumerate(tiles)]
    cohort = _cohort(rows, ["slide_id", "patient_id", "msi"])
    res = pk.tl.cross_validate_mil(tiles, cohort, "abmil", label="msi", task="binary", folds=5, **FAST)
    return tiles, planted, cohort, res


def test_binary_planted_signal_auroc_and_attention(binary_run):
    tiles, planted, cohort, res = binary_run
    obs = cohort.obs
    assert res.summary.loc["auroc", "value"] >= 0.95
    assert (res.metrics.loc[list(range(5)), "auroc"] >= 0.9).all()
    lo, hi = res.summary.loc["auroc", ["ci_lower", "ci_upper"]]
    assert lo <= res.summary.loc["auroc", "value"] <= hi
    assert _topk_recall(tiles, planted) >= 0.8
    # out-of-fold probabilities written to the cohort, and they sum to 1
    np.testing.assert_allclose(obs["abmil_prob_MSI"] + obs["abmil_prob_MSS"], 1.0, atol=1e-5)
    assert (obs["abmil_pred"].astype(str) == obs["msi"]).mean() >= 0.9
    assert set(obs["abmil_fold"]) == set(range(5))
    for sid, a in tiles.items():
        np.testing.assert_allclose(a.obs["abmil_importance"].sum(), 1.0, atol=1e-5)
        np.testing.assert_allclose(a.obs["abmil_importance"].to_numpy(), res.importance[sid])
    assert res.metrics.loc["pooled", "n"] == 60
    assert len(res.estimators) == 5 and set(res.history["fold"]) == set(range(5))


def test_no_patient_in_two_folds(binary_run):
    _, _, cohort, _res = binary_run
    per_patient = cohort.obs.groupby("patient_id")["abmil_fold"].nunique()
    assert (per_patient == 1).all()
    # the fold builder itself, on uneven groups
    groups = np.repeat(np.arange(23), np.arange(23) % 4 + 1)
    y = groups % 2
    seen = {}
    for k, (tr, te) in enumerate(patient_folds(groups, y, folds=5, seed=3)):
        assert not set(groups[tr]) & set(groups[te])
        for g in set(groups[te]):
            assert g not in seen
            seen[g] = k
    assert len(seen) == 23


def test_user_splits_honoured_and_lazy_h5ad_equals_in_memory(real_feats, tmp_path):
    tiles, _ = _bags(real_feats, 24, 30, lambda b: (0, 6.0) if b % 2 else (None, 0), seed=1)
    rows = [(sid, f"P{b // 2:02d}", b % 2) for b, sid in enumerate(tiles)]
    cohort = _cohort(rows, ["slide_id", "patient_id", "y"])
    pats = sorted(cohort.obs["patient_id"].unique())
    folder = tmp_path / "splits_3fold"
    folder.mkdir()
    assignment = {p: i % 3 for i, p in enumerate(pats)}
    for k in range(3):
        te = [p for p in pats if assignment[p] == k]
        tr = [p for p in pats if assignment[p] != k] + ["TCGA-NOT-INCOHORT"]
        pd.DataFrame({"train": pd.Series(tr), "val": pd.Series(te)}).to_csv(folder / f"splits_{k}.csv")
    kw = dict(FAST, epochs=2, n_bootstrap=0)
    with pytest.warns(UserWarning, match="no usable slide"):
        res = pk.tl.cross_validate_mil(tiles, cohort, label="y", splits=folder, **kw)
    got = cohort.obs.set_index("patient_id")["abmil_fold"].groupby(level=0).first()
    assert got.to_dict() == assignment

    # one on-disk AnnData with obs["slide_id"], read backed: same predictions as the in-memory dict
    big = ad.concat(list(tiles.values()), index_unique="-")
    path = tmp_path / "tiles.h5ad"
    big.write_h5ad(path)
    cohort2 = _cohort(rows, ["slide_id", "patient_id", "y"])
    with pytest.warns(UserWarning, match="no usable slide"):
        res2 = pk.tl.cross_validate_mil(str(path), cohort2, label="y", splits=folder, **kw)
    np.testing.assert_allclose(cohort2.obs["abmil_prob_1"], cohort.obs["abmil_prob_1"], rtol=1e-4, atol=1e-6)
    for sid in tiles:
        np.testing.assert_allclose(res2.importance[sid], res.importance[sid], rtol=1e-4, atol=1e-7)
    # slide ids stored as plain strings rather than a categorical: same bags
    path_str = tmp_path / "tiles_str.h5ad"
    big.write_h5ad(path_str, convert_strings_to_categoricals=False)
    lazy = BagSet(path_str, "X_uni")
    assert sorted(lazy.ids()) == sorted(tiles)
    for sid in list(tiles)[:3]:
        np.testing.assert_array_equal(lazy[sid], tiles[sid].obsm["X_uni"])
    lazy.close()

    # a folder of per-slide .h5ad files (embed_cohort's layout), each read when needed
    slide_dir = tmp_path / "slides"
    slide_dir.mkdir()
    for sid, a in tiles.items():
        a.write_h5ad(slide_dir / f"{sid}.h5ad")
    cohort4 = _cohort(rows, ["slide_id", "patient_id", "y"])
    with pytest.warns(UserWarning, match="no usable slide"):
        res4 = pk.tl.cross_validate_mil(slide_dir, cohort4, label="y", splits=folder, **kw)
    np.testing.assert_allclose(cohort4.obs["abmil_prob_1"], cohort.obs["abmil_prob_1"], rtol=1e-4, atol=1e-6)
    assert set(res4.importance) == set(tiles)

    # the combined in-memory AnnData gets attention written to its obs
    cohort3 = _cohort(rows, ["slide_id", "patient_id", "y"])
    with pytest.warns(UserWarning, match="no usable slide"):
        pk.tl.cross_validate_mil(big, cohort3, label="y", splits=folder, **kw)
    first = next(iter(tiles))
    np.testing.assert_allclose(big.obs.loc[big.obs["slide_id"] == first, "abmil_importance"].to_numpy(),
                               res.importance[first], rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def survival_bags(real_feats):
    rng = np.random.default_rng(7)
    n = 64
    r = rng.uniform(0, 1, n)
    tiles, _planted = _bags(real_feats, n, 40, lambda b: (0, 7.0 * r[b]), seed=2, n_planted=10)
    t_event = 60.0 * np.exp(-3.0 * r + 0.3 * rng.normal(size=n))
    t_cens = rng.uniform(5, 60, n)
    time = np.minimum(t_event, t_cens)
    event = (t_event <= t_cens).astype(int)
    rows = [(sid, f"P{b:03d}", time[b], event[b]) for b, sid in enumerate(tiles)]
    return tiles, rows, r


@pytest.mark.parametrize("task", ["survival", "cox"])
def test_survival_heads_learn_planted_risk(survival_bags, task, tmp_path):
    tiles, rows, r = survival_bags
    cohort = _cohort(rows, ["slide_id", "patient_id", "months", "dead"])
    truth = pk.tl.cindex(cohort.obs["months"], r, cohort.obs["dead"])
    kw = dict(FAST, epochs=12, patience=4)
    res = pk.tl.cross_validate_mil(tiles, cohort, task=task, time="months", event="dead", folds=4, **kw)
    c = res.summary.loc["c_index", "value"]
    assert truth > 0.85  # what the planted risk itself scores
    assert c >= 0.75 and c >= truth - 0.15, (c, truth)
    assert abs(c - pk.tl.cindex(cohort.obs["months"], cohort.obs["abmil_risk"], cohort.obs["dead"])) < 1e-12
    # the learnt risk tracks the planted one
    assert np.corrcoef(cohort.obs["abmil_risk"], r)[0, 1] > 0.5
    if task == "survival":
        assert len(res.bins) == 4 and all(len(e) == 5 for e in res.bins.values())
    # a fold's estimator predicts the same risk after save / load (bins and all)
    est = res.estimators[0]
    loaded = pk.tl.MIL.load(est.save(tmp_path / task))
    if task == "survival":
        np.testing.assert_array_equal(loaded.bins_, est.bins_)
    r1 = est.predict(tiles, cohort.copy(), key_added="again")["risk"]
    r2 = loaded.predict(tiles, cohort.copy(), key_added="again")["risk"]
    np.testing.assert_allclose(r2, r1, rtol=1e-5, atol=1e-6)
    held = cohort.obs["abmil_fold"] == 0  # on its own held-out fold it reproduces the out-of-fold risk
    np.testing.assert_allclose(r1.loc[cohort.obs.index[held]], cohort.obs.loc[held, "abmil_risk"], rtol=1e-5,
                               atol=1e-6)


def test_multiclass_and_multilabel(real_feats):
    tiles, _ = _bags(real_feats, 36, 40, lambda b: (b % 3, 6.0), seed=3, directions=3)
    rows = [(sid, f"P{b:02d}", ["a", "b", "c"][b % 3], int(b % 3 == 1), int(b % 3 != 0))
            for b, sid in enumerate(tiles)]
    cohort = _cohort(rows, ["slide_id", "patient_id", "cls", "is_b", "not_a"])
    res = pk.tl.cross_validate_mil(tiles, cohort, label="cls", task="multiclass", folds=3, **FAST)
    assert res.summary.loc["auroc", "value"] >= 0.9
    assert res.classes == ["a", "b", "c"]
    P = cohort.obs[["abmil_prob_a", "abmil_prob_b", "abmil_prob_c"]].to_numpy()
    np.testing.assert_allclose(P.sum(1), 1.0, atol=1e-5)
    res = pk.tl.cross_validate_mil(tiles, cohort, label=["is_b", "not_a"], task="multilabel", folds=3, **FAST)
    assert res.summary.loc["auroc", "value"] >= 0.9
    assert cohort.obs["abmil_pred_is_b"].dtype == "boolean"


def test_nll_surv_matches_hand_computation():
    logits = torch.tensor([[0.2, -1.0, 0.5, 0.0], [1.0, 0.3, -0.2, 0.1]])
    h = 1 / (1 + np.exp(-logits.numpy()))
    S = np.cumprod(1 - h, axis=1)
    # subject 0: event in bin 2 -> -log(S[1] * h[2]); subject 1: censored in bin 1 -> -log(S[1])
    unc = -np.log(S[0, 1] * h[0, 2])
    cen = -np.log(S[1, 1])
    alpha = 0.15
    expected = ((1 - alpha) * unc + alpha * unc + (1 - alpha) * cen) / 2
    got = _nll_surv(logits, torch.tensor([2, 1]), torch.tensor([0, 1]), alpha)
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_cox_loss_matches_partial_likelihood():
    risk = np.array([0.5, -0.2, 1.0, 0.0, 0.3])
    time = np.array([5.0, 3.0, 8.0, 1.0, 6.0])
    event = np.array([1, 0, 1, 1, 0])
    ll = 0.0
    for i in np.flatnonzero(event):
        ll += risk[i] - np.log(np.exp(risk[time >= time[i]]).sum())
    got = _cox_nll(torch.tensor(risk), torch.tensor(time), torch.tensor(event, dtype=torch.float32))
    assert float(got) == pytest.approx(-ll / event.sum(), rel=1e-6)
    assert _cox_nll(torch.tensor(risk), torch.tensor(time), torch.zeros(5)) is None


def test_clear_errors(real_feats):
    tiles, _ = _bags(real_feats, 6, 10, lambda b: (None, 0))
    cohort = _cohort([(sid, b % 2) for b, sid in enumerate(tiles)], ["slide_id", "y"])
    with pytest.raises(TableError, match="patient_id"):
        pk.tl.cross_validate_mil(tiles, cohort, label="y", **FAST)
    cohort.obs["patient_id"] = [f"P{i}" for i in range(6)]
    with pytest.raises(TableError, match="'nope'"):
        pk.tl.cross_validate_mil(tiles, cohort, label="nope", **FAST)
    with pytest.raises(TableError, match="time= and event="):
        pk.tl.cross_validate_mil(tiles, cohort, task="cox", **FAST)
    other = _cohort([("unrelated-slide", "P1", 1)], ["slide_id", "patient_id", "y"])
    with pytest.raises(TableError, match="no cohort slide id matches"):
        pk.tl.cross_validate_mil(tiles, other, label="y", **FAST)


def test_metrics_are_sklearns_on_the_written_predictions(binary_run):
    """The pooled metrics are sklearn's on the out-of-fold predictions written to the cohort (the hand-written
    AUROC / AUPRC / balanced accuracy are gone)."""
    from sklearn.metrics import average_precision_score, balanced_accuracy_score, roc_auc_score

    _, _, cohort, res = binary_run
    obs = cohort.obs
    y = (obs["msi"] == "MSI").astype(int)
    s = obs["abmil_prob_MSI"]
    assert res.summary.loc["auroc", "value"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert res.summary.loc["auprc", "value"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert res.summary.loc["balanced_accuracy", "value"] == pytest.approx(
        balanced_accuracy_score(obs["msi"], obs["abmil_pred"].astype(str)), abs=1e-12)
    for k in range(5):
        held = obs["abmil_fold"] == k
        assert res.metrics.loc[k, "auroc"] == pytest.approx(roc_auc_score(y[held], s[held]), abs=1e-12)
    folds = res.metrics.drop(index="pooled")["auroc"].astype(float)
    assert res.summary.loc["auroc", "fold_mean"] == pytest.approx(folds.mean(), abs=1e-12)
    assert res.summary.loc["auroc", "fold_sd"] == pytest.approx(folds.std(ddof=1), abs=1e-12)
