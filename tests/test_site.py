"""Site effect, Harmony correction and site-preserved CV on planted embeddings; HED jitter against skimage."""
from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit.errors import TableError
from pathkit.tl.splits import site_fold_sets, site_folds

SITES = [f"A{c}" for c in "ABCDEFGHIJKL"]  # 12 tissue source sites


def planted(per_site=15, d=32, site_shift=3.0, label_shift=2.0, seed=0):
    """One slide per patient, `per_site` patients at each of 12 tissue source sites. Features: noise + a
    site-specific offset + a real binary label's offset (label independent of site). ``site_label`` is a label
    that is a function of the site only (first 6 sites vs last 6)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(SITES), d))
    centres *= site_shift / np.linalg.norm(centres, axis=1, keepdims=True)
    direction = rng.normal(size=d)
    direction *= label_shift / np.linalg.norm(direction)
    rows, X = [], []
    for i, s in enumerate(SITES):
        for j in range(per_site):
            y = int(rng.random() < 0.5)
            X.append(rng.normal(size=d) + centres[i] + y * direction)
            rows.append({"patient_id": f"TCGA-{s}-{1000 + j}", "label": str(y),
                         "site_label": "early" if i < len(SITES) // 2 else "late", "score": float(y + rng.normal())})
    obs = pd.DataFrame(rows)
    obs.index = (obs["patient_id"] + "-01Z-00-DX1").to_numpy()
    a = ad.AnnData(obs=obs)
    a.obsm["X_feat"] = np.asarray(X, np.float32)
    return a


def _auroc(a, label, rep, splits):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = pk.tl.probe(a, label, use_rep=rep, folds=3, splits=splits, n_boot=20, C=0.1)
    return float(t.set_index("metric").loc["auroc", "value"])


@pytest.fixture(scope="module")
def cohort():
    a = planted()
    pk.tl.harmonize(a, "X_feat")
    return a


def test_site_effect_detects_the_planted_site(cohort):
    t = pk.tl.site_effect(cohort, "X_feat").set_index("measure")
    assert t.loc["knn_accuracy", "chance"] == pytest.approx(1 / 12)
    assert t.loc["knn_accuracy", "value"] > 0.7 and t.loc["linear_accuracy", "value"] > 0.7
    assert t.loc["variance_share", "value"] > 0.25 and t.loc["silhouette", "value"] > 0.05
    assert cohort.uns["site_effect_X_feat"]["n_sites"] == 12
    # no site offset: accuracy near chance, variance share near its null (k-1)/(n-1) = 0.061
    null = planted(site_shift=0.0)
    n = pk.tl.site_effect(null, "X_feat").set_index("measure")
    assert n.loc["linear_accuracy", "value"] < 0.2 and n.loc["variance_share", "value"] < 0.12


def test_harmonize_removes_the_site_but_keeps_the_label(cohort):
    before = pk.tl.site_effect(cohort, "X_feat").set_index("measure")["value"]
    after = pk.tl.site_effect(cohort, "X_feat_harmony").set_index("measure")["value"]
    chance = 1 / 12
    for m in ("knn_balanced_accuracy", "linear_balanced_accuracy"):
        removed = 1 - (after[m] - chance) / (before[m] - chance)
        assert removed >= 0.8, f"{m}: {before[m]:.2f} -> {after[m]:.2f} ({removed:.0%} of the excess removed)"
    assert after["silhouette"] < 0.02
    auc_before = _auroc(cohort, "label", "X_feat", "patient")
    auc_after = _auroc(cohort, "label", "X_feat_harmony", "patient")
    assert auc_before > 0.8 and auc_after >= auc_before - 0.05, (auc_before, auc_after)
    assert cohort.obsm["X_feat_harmony"].shape == (cohort.n_obs, 32)


def test_site_preserved_cv_drops_a_site_only_label_to_chance(cohort):
    random_cv = _auroc(cohort, "site_label", "X_feat", "patient")
    site_cv = _auroc(cohort, "site_label", "X_feat", "site")
    assert random_cv > 0.75, random_cv
    assert abs(site_cv - 0.5) < 0.15, site_cv
    # the real label survives site-preserved CV
    assert _auroc(cohort, "label", "X_feat", "site") > 0.75


def test_site_folds_keep_sites_whole_and_balance_classes():
    rng = np.random.default_rng(1)
    sites = rng.choice(list("ABCDEFGHIJ"), size=400, p=np.r_[[0.25, 0.15], np.full(8, 0.075)])
    y = rng.integers(0, 2, 400)
    f = site_folds(sites, y, folds=3)
    assert pd.crosstab(sites, f).gt(0).sum(axis=1).max() == 1  # no site in two folds
    share = pd.crosstab(f, y, normalize="index")[1]
    assert share.max() - share.min() < 0.12
    assert pd.Series(f).value_counts().min() > 60
    sets = site_fold_sets([f"TCGA-{s}A-{i:04d}" for i, s in enumerate(sites)], y, folds=3)
    assert sorted(np.concatenate([te for _, te in sets]).tolist()) == list(range(400))
    with pytest.raises(TableError, match="site"):
        site_folds(["A", "A", "B"], folds=3)


def test_one_site_and_no_barcodes_are_clear_errors():
    a = planted(per_site=5)
    a.obs["one"] = "X"
    with pytest.raises(TableError, match="single site"):
        pk.tl.site_effect(a, "X_feat", key="one")
    b = ad.AnnData(obs=pd.DataFrame(index=[f"s{i}" for i in range(10)]))
    b.obsm["X_f"] = np.zeros((10, 3), np.float32)
    with pytest.raises(TableError, match="barcode"):
        pk.tl.site_effect(b, "X_f")


def test_associate_warns_on_site_confounding_and_adjusts(cohort):
    rna = ad.AnnData(np.zeros((cohort.n_obs, 1), np.float32),
                     obs=pd.DataFrame(index=cohort.obs["patient_id"].to_numpy()))
    rng = np.random.default_rng(0)
    site_code = cohort.obs["site_label"].eq("late").to_numpy(float)
    # a gene driven by site only, and a slide feature that is the site-only label
    rna.X[:, 0] = site_code + 0.3 * rng.normal(size=cohort.n_obs)
    rna.var_names = ["GENE_SITE"]
    slides = cohort.copy()
    slides.obs["site_feature"] = site_code + 0.1 * rng.normal(size=cohort.n_obs)
    with pytest.warns(UserWarning, match="confounded with the site"):
        raw = pk.tl.associate(slides, "site_feature", rna=rna, key_added=None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        adj = pk.tl.associate(slides, "site_feature", rna=rna, key_added=None, adjust_site=True)
    assert raw["pvalue"].iloc[0] < 1e-10
    assert adj["pvalue"].iloc[0] > 1e-3  # within site, the feature says nothing about the gene
    assert "tss" in slides.obs.columns


def test_site_effect_figure(cohort):
    pk.tl.site_effect(cohort, "X_feat")
    fig = pk.pl.site_effect(cohort, ["X_feat", "X_feat_harmony"])
    assert len(fig.data) == 2 * len(SITES)
    assert "kNN site acc" in fig.layout.annotations[0].text


def test_hed_jitter_equals_skimage(shared_data):
    from PIL import Image
    from skimage.color import hed2rgb, rgb2hed

    img = np.array(Image.open(shared_data / "stain" / "torchstain" / "target.png").convert("RGB"))
    jit = pk.pp.HEDJitter(sigma=0.2, bias=0.05, random_state=3)
    a, b = pk.pp.HEDJitter(sigma=0.2, bias=0.05, random_state=3).draw(2)
    out = jit.transform(np.stack([img, img]))
    for i in range(2):
        ref = np.round(np.clip(hed2rgb(rgb2hed(img) * a[i] + b[i]), 0, 1) * 255)
        assert np.abs(out[i].astype(float) - ref).max() <= 1
    assert np.abs(out[0].astype(int) - out[1]).mean() > 1  # each tile its own draw
    assert jit.to_dict()["method"] == "hed_jitter"


def test_cross_validate_mil_site_folds(real_feats):
    """splits='site' in cross_validate_mil: every tissue source site (barcode field 2) in exactly one fold."""
    rng = np.random.default_rng(0)
    tiles, rows = {}, []
    for b in range(18):
        sid = f"TCGA-S{b % 6}-{1000 + b}-01Z-00-DX1"
        idx = rng.choice(len(real_feats), 20, replace=False)
        a = ad.AnnData(obs=pd.DataFrame({"slide_id": sid}, index=[f"{sid}_{i}" for i in range(20)]))
        a.obsm["X_feat"] = real_feats[idx].astype(np.float32)
        tiles[sid] = a
        rows.append({"slide_id": sid, "patient_id": sid[:12], "y": b % 2})
    cohort = ad.AnnData(obs=pd.DataFrame(rows).set_index("slide_id", drop=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.tl.cross_validate_mil(tiles, cohort, label="y", splits="site", folds=3, epochs=1, n_bootstrap=0,
                                 progress=False, device="cpu")
    fold = cohort.obs["abmil_fold"].to_numpy()
    site = cohort.obs["patient_id"].str[5:7].to_numpy()
    assert (fold >= 0).all()
    assert pd.crosstab(site, fold).gt(0).sum(axis=1).max() == 1
