"""Survival tools against lifelines, against R `survival`'s published outputs, and on real TCGA COADREAD."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit.errors import TableError

lifelines = pytest.importorskip("lifelines")
from lifelines import CoxPHFitter, KaplanMeierFitter
from lifelines.datasets import load_gbsg2, load_lung, load_rossi, load_waltons
from lifelines.statistics import multivariate_logrank_test
from lifelines.utils import concordance_index

ROSSI_COVS = ["fin", "age", "race", "wexp", "mar", "paro", "prio"]


# ---------------------------------------------------------------------------------- R survival, published
def test_logrank_lung_by_sex_equals_r_survdiff():
    # R: survdiff(Surv(time, status) ~ sex, data = lung)
    #   sex=1 N=138 Observed=112 Expected=91.6; sex=2 N=90 Observed=53 Expected=73.4
    #   Chisq= 10.3 on 1 degrees of freedom, p= 0.001  (full precision: 91.5817, 73.4183, 10.3267, 0.00131116)
    res = pk.tl.logrank(load_lung(), "time", "status", "sex")
    assert res.dof == 1
    assert res.statistic == pytest.approx(10.3267, abs=5e-4)
    assert res.p_value == pytest.approx(0.00131116, rel=1e-4)
    assert res.table["n"].tolist() == [138, 90]
    assert res.table["observed"].tolist() == [112, 53]
    np.testing.assert_allclose(res.table["expected"], [91.5817, 73.4183], atol=5e-5)


def test_km_lung_medians_equal_r_survfit():
    # R: survfit(Surv(time, status) ~ 1, data = lung): n=228 events=165 median=310 0.95LCL=285 0.95UCL=363
    #    survfit(Surv(time, status) ~ sex, data = lung): sex=1 138 112 270 212 310; sex=2 90 53 426 348 550
    lung = load_lung()
    one = pk.tl.kaplan_meier(lung, "time", "status", conf_type="log")
    assert one.median["all"] == 310
    assert one.median_ci.loc["all"].tolist() == [285, 363]
    assert one.counts.loc["all"].tolist() == [228, 165]
    by = pk.tl.kaplan_meier(lung, "time", "status", "sex", conf_type="log")
    assert by.median.tolist() == [270, 426]
    assert by.median_ci.loc[1].tolist() == [212, 310]
    assert by.median_ci.loc[2].tolist() == [348, 550]


def test_cox_rossi_equals_r_coxph_published():
    # Fox & Weisberg, "Cox Proportional-Hazards Regression for Survival Data in R" (appendix to An R
    # Companion to Applied Regression): coxph(Surv(week, arrest) ~ fin + age + race + wexp + mar + paro +
    # prio, data = Rossi); Likelihood ratio test = 33.27 on 7 df, Concordance = 0.64
    r_coef = [-0.37942, -0.05744, 0.31390, -0.14980, -0.43370, -0.08487, 0.09150]
    r_se = [0.19138, 0.02200, 0.30799, 0.21222, 0.38187, 0.19576, 0.02865]
    r_p = [0.04742, 0.00903, 0.30812, 0.48029, 0.25606, 0.66461, 0.00140]
    res = pk.tl.cox(load_rossi(), "week", "arrest", ROSSI_COVS)
    assert list(res.params.index) == ROSSI_COVS
    np.testing.assert_allclose(res.params, r_coef, atol=1e-5)
    np.testing.assert_allclose(res.standard_errors, r_se, atol=1e-5)
    np.testing.assert_allclose(res.p_values, r_p, atol=1e-5)
    np.testing.assert_allclose(res.hazard_ratios, np.exp(res.params))
    # exp(coef) lower/upper .95 of fin: 0.4702, 0.9957
    assert res.confidence_intervals.loc["fin"].tolist() == pytest.approx([0.4702, 0.9957], abs=1e-4)
    assert res.lr_test["statistic"] == pytest.approx(33.27, abs=5e-3)
    assert res.lr_test["dof"] == 7
    assert res.concordance == pytest.approx(0.64, abs=5e-3)
    assert (res.n, res.n_events) == (432, 114)


# ---------------------------------------------------------------------------------- lifelines parity
def test_km_equals_lifelines_waltons():
    df = load_waltons()
    res = pk.tl.kaplan_meier(df, "T", "E", "group")
    assert list(res.fitters) == ["control", "miR-137"]
    for g in ["control", "miR-137"]:
        sub = df[df.group == g]
        kmf = KaplanMeierFitter().fit(sub["T"], sub["E"])
        cur = res.curves[res.curves.group == g]
        np.testing.assert_allclose(cur["time"], kmf.survival_function_.index)
        np.testing.assert_allclose(cur["survival"], kmf.survival_function_.iloc[:, 0])
        np.testing.assert_allclose(cur["ci_lower"], kmf.confidence_interval_.iloc[:, 0])
        np.testing.assert_allclose(cur["ci_upper"], kmf.confidence_interval_.iloc[:, 1])
        np.testing.assert_array_equal(cur["at_risk"], kmf.event_table["at_risk"])
        assert res.median[g] == kmf.median_survival_time_
    # the survival curve by hand at the first event time: 1 - d/n
    c0 = res.curves[(res.curves.group == "control") & (res.curves.events > 0)].iloc[0]
    assert c0["survival"] == pytest.approx(1 - c0["events"] / c0["at_risk"])
    np.testing.assert_allclose(res.survival_at([0.0]).to_numpy(), [[1.0, 1.0]])


def test_logrank_multigroup_equals_lifelines():
    df = load_gbsg2()
    res = pk.tl.logrank(df, "time", "cens", "tgrade")
    ref = multivariate_logrank_test(df["time"], df["tgrade"], df["cens"])
    assert res.dof == 2
    assert res.statistic == pytest.approx(ref.test_statistic, rel=1e-9)
    assert res.p_value == pytest.approx(ref.p_value, rel=1e-6)
    assert res.table["observed"].sum() == df["cens"].sum()
    assert res.table["expected"].sum() == pytest.approx(df["cens"].sum())


def test_cox_categorical_one_hot_and_penalised_equal_lifelines():
    df = load_gbsg2()
    res = pk.tl.cox(df, "time", "cens", ["tgrade", "age", "horTh"])
    assert res.references == {"tgrade": "I", "horTh": "no"}
    assert list(res.params.index) == ["tgrade[II]", "tgrade[III]", "age", "horTh[yes]"]
    X = pd.DataFrame({"time": df.time, "cens": df.cens, "g2": (df.tgrade == "II") * 1.0,
                      "g3": (df.tgrade == "III") * 1.0, "age": df.age * 1.0, "hor": (df.horTh == "yes") * 1.0})
    ref = CoxPHFitter().fit(X, "time", "cens")
    np.testing.assert_allclose(res.params, ref.params_, rtol=1e-6)
    np.testing.assert_allclose(res.standard_errors, ref.standard_errors_, rtol=1e-6)
    # another reference level flips the sign of the contrast
    res3 = pk.tl.cox(df, "time", "cens", ["tgrade"], reference={"tgrade": "III"})
    one = pk.tl.cox(df, "time", "cens", ["tgrade"])
    assert res3.params["tgrade[I]"] == pytest.approx(-one.params["tgrade[III]"], rel=1e-5)
    # penalised fit
    pen = pk.tl.cox(load_rossi(), "week", "arrest", ROSSI_COVS, penalizer=0.1, l1_ratio=0.5)
    refp = CoxPHFitter(penalizer=0.1, l1_ratio=0.5).fit(load_rossi(), "week", "arrest")
    np.testing.assert_allclose(pen.params, refp.params_[ROSSI_COVS], rtol=1e-5, atol=1e-8)
    assert np.abs(pen.params).sum() < np.abs(pk.tl.cox(load_rossi(), "week", "arrest", ROSSI_COVS).params).sum()
    # strata
    st = pk.tl.cox(load_rossi(), "week", "arrest", ["fin", "age", "prio"], strata="race")
    refs = CoxPHFitter().fit(load_rossi()[["week", "arrest", "fin", "age", "prio", "race"]], "week", "arrest",
                             strata=["race"])
    np.testing.assert_allclose(st.params, refs.params_, rtol=1e-6)


def test_cox_on_embeddings_from_obsm():
    ad = pytest.importorskip("anndata")
    from sklearn.decomposition import PCA

    rossi = load_rossi()
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(len(rossi), 20))
    emb[:, 0] += rossi["prio"].to_numpy() / 3  # a prognostic direction in the embedding
    adata = ad.AnnData(obs=rossi.reset_index(drop=True).astype(float).set_axis(
        [str(i) for i in range(len(rossi))]))
    adata.obsm["X_emb"] = emb
    sliced = pk.tl.cox(adata, "week", "arrest", "X_emb[:3]", penalizer=0.05)
    assert list(sliced.params.index) == ["X_emb_0", "X_emb_1", "X_emb_2"]
    X = pd.DataFrame(emb[:, :3], columns=["a", "b", "c"]).assign(week=rossi.week.values, arrest=rossi.arrest.values)
    ref = CoxPHFitter(penalizer=0.05).fit(X, "week", "arrest")
    np.testing.assert_allclose(sliced.params, ref.params_, rtol=1e-6)
    assert sliced.params["X_emb_0"] > 0.1  # picks up the planted prognostic direction
    pcs = pk.tl.cox(adata, "week", "arrest", ["X_emb", "age"], n_components=4, penalizer=0.05)
    assert list(pcs.params.index) == ["age", "X_emb_pc1", "X_emb_pc2", "X_emb_pc3", "X_emb_pc4"] or \
        list(pcs.params.index) == ["X_emb_pc1", "X_emb_pc2", "X_emb_pc3", "X_emb_pc4", "age"]
    P = PCA(n_components=4, random_state=0).fit_transform(emb)
    np.testing.assert_allclose(pcs.design[["X_emb_pc1", "X_emb_pc4"]].to_numpy(), P[:, [0, 3]], atol=1e-8)
    with pytest.raises(TableError, match="X_nope"):
        pk.tl.cox(adata, "week", "arrest", "X_nope[:3]")


# ---------------------------------------------------------------------------------- c-index, risk groups
def test_cindex_hand_computed_and_sign():
    t = np.array([1.0, 2.0, 3.0, 4.0])
    e = np.array([1, 1, 0, 1])
    # comparable pairs (earlier time had the event): (1,2) (1,3) (1,4) (2,3) (2,4) = 5
    risk = np.array([4.0, 1.0, 2.0, 3.0])  # concordant: (1,2) (1,3) (1,4); discordant: (2,3) (2,4)
    assert pk.tl.cindex(t, risk, e) == pytest.approx(3 / 5)
    assert pk.tl.cindex(t, -risk, e) == pytest.approx(2 / 5)
    assert pk.tl.cindex(t, 5 - t, e) == 1.0  # risk falling with survival time: perfect
    assert pk.tl.cindex(t, risk, e) == pytest.approx(concordance_index(t, -risk, e))
    df = pd.DataFrame({"t": t, "e": e, "r": risk})
    assert pk.tl.cindex("t", "r", "e", data=df) == pytest.approx(3 / 5)
    with pytest.raises(ValueError, match="without any observed event"):
        pk.tl.cindex(t, risk, np.zeros(4))


def test_risk_groups_methods():
    ad = pytest.importorskip("anndata")
    score = np.array([0.1, 0.5, 0.5, 0.9, 0.2, np.nan, 0.7])
    a = ad.AnnData(obs=pd.DataFrame({"s": score}, index=[f"s{i}" for i in range(7)]))
    g = pk.tl.risk_groups(a, "s")  # median of the 6 scores = 0.5; ties at the median go low
    assert g.tolist()[:5] == ["low", "low", "low", "high", "low"] and pd.isna(g.iloc[5])
    assert g.iloc[6] == "high"
    assert a.obs["risk_group"].cat.ordered and list(a.obs["risk_group"].cat.categories) == ["low", "high"]
    assert a.uns["risk_group"]["cutoffs"].tolist() == [0.5]
    t = pk.tl.risk_groups(a, "s", method="tertile", key_added="tert")
    assert t.value_counts().to_dict() == {"low": 2, "mid": 2, "high": 2}
    c = pk.tl.risk_groups(a.obs, "s", method=0.6, key_added="cut")
    assert (c == "high").sum() == 2 and "cut" in a.obs


# ---------------------------------------------------------------------------------- input checks
def test_missing_values_and_bad_events_are_clear():
    df = load_waltons().copy()
    df.loc[[0, 5, 9], "T"] = np.nan
    df.loc[[3], "group"] = None
    with pytest.raises(TableError, match=r"'T': 3 missing.*'group': 1 missing"):
        pk.tl.kaplan_meier(df, "T", "E", "group")
    with pytest.warns(UserWarning, match="dropped 4 of 163 rows"):
        res = pk.tl.kaplan_meier(df, "T", "E", "group", dropna=True)
    assert res.counts["n"].sum() == 159
    bad = load_lung().assign(status=lambda d: d.status + 1)  # R's 1/2 coding
    with pytest.raises(TableError, match="1 - censorship|0/1"):
        pk.tl.logrank(bad, "time", "status", "sex")
    with pytest.raises(TableError, match="'nope' not found"):
        pk.tl.kaplan_meier(df, "nope", "E")
    with pytest.raises(TableError, match="'wt.loss': 14 missing"):
        pk.tl.cox(load_lung(), "time", "status", ["age", "wt.loss"])
    with pytest.warns(UserWarning, match="dropped"):
        r = pk.tl.cox(load_lung(), "time", "status", ["age", "wt.loss"], dropna=True)
    assert r.n == 214


# ---------------------------------------------------------------------------------- real TCGA COADREAD
def _coadread_patients(shared_data) -> pd.DataFrame:
    d = shared_data / "tcga" / "coadread"
    slides = pd.read_csv(d / "slides_survival.csv", index_col=0)
    clin = pd.read_csv(d / "clinical.csv", index_col=0).drop_duplicates(["case_id", "stage"])
    assert not clin["case_id"].duplicated().any()  # duplicated rows agree on stage
    pat = slides.drop_duplicates("case_id").merge(clin[["case_id", "stage"]], on="case_id", how="left")
    pat["event"] = 1 - pat["censorship"]
    return pat


def test_tcga_coadread_km_logrank_by_stage(shared_data):
    pat = _coadread_patients(shared_data)
    assert len(pat) == 298
    staged = pat[pat["stage"].isin(["I", "II", "III", "IV"])]
    km = pk.tl.kaplan_meier(staged, "survival_months", "event", "stage")
    assert km.counts["n"].to_dict() == {"I": 7, "II": 46, "III": 204, "IV": 39}
    assert km.counts["events"].sum() == staged["event"].sum()
    # stage IV: the only stage whose median is reached, and clearly the worst survival at 3 years
    assert np.isfinite(km.median["IV"]) and 10 < km.median["IV"] < 60
    s3 = km.survival_at(36.0).iloc[0]
    assert s3["IV"] < 0.6 < min(s3["II"], s3["III"])
    lr = pk.tl.logrank(staged, "survival_months", "event", "stage")
    assert lr.dof == 3 and lr.p_value < 1e-4
    assert lr.table.loc["IV", "observed"] > 2 * lr.table.loc["IV", "expected"]
    ref = multivariate_logrank_test(staged["survival_months"], staged["stage"], staged["event"])
    assert lr.statistic == pytest.approx(ref.test_statistic, rel=1e-9)
    # unstaged / N/A patients: a clear error, or dropped with a report
    with pytest.raises(TableError, match="'stage': 1 missing"):
        pk.tl.logrank(pat, "survival_months", "event", "stage")
    cx = pk.tl.cox(staged, "survival_months", "event", ["stage", "age"])
    assert cx.references == {"stage": "I"} and cx.hazard_ratios["stage[IV]"] > 3


def test_linked_mudata_reads_the_slides(shared_data):
    """A MuData from pk.io.link (slides + RNA) works as `data`: survival columns come from its slides."""
    d = shared_data / "tcga" / "coadread"
    with pytest.warns(pk.io.LinkWarning):
        md = pk.io.link(d / "slides_survival.csv", rna=d / "rna_xena_log2.csv")
    got = pk.tl.logrank(md, "time_months", "event", "is_female")
    ref = multivariate_logrank_test(md["slides"].obs["time_months"], md["slides"].obs["is_female"],
                                    md["slides"].obs["event"])
    assert got.statistic == pytest.approx(ref.test_statistic, rel=1e-10)
    assert got.table["n"].sum() == md["slides"].n_obs == 301
