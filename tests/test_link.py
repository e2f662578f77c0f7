"""pk.link: clinical + RNA tables joined to a slide cohort, with a report that equals independent counts."""
from __future__ import annotations

import warnings

import anndata as ad
import h5py
import mudata as mu
import numpy as np
import pandas as pd
import pytest
import scanpy as sc

import pathkit as pk
from pathkit.errors import TableError
from pathkit.io import LinkWarning, rna_by_slide
from pathkit.io.survival_columns import normalise_survival

AD_SLIDE = "TCGA-AD-6964-01Z-00-DX1.83AF88B9-C59B-48C6-A739-85ACB8F8ECA9"


def _link(*a, **k):
    with pytest.warns(LinkWarning):
        return pk.link(*a, **k)


# ------------------------------------------------------------------------------------------ real tables
@pytest.fixture(scope="module")
def coadread(shared_data):
    d = shared_data / "tcga" / "coadread"
    return {"slides": d / "slides_survival.csv", "clinical": d / "clinical.csv", "rna": d / "rna_xena_log2.csv"}


@pytest.fixture(scope="module")
def linked(coadread):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        adata = pk.link(coadread["slides"], coadread["clinical"], coadread["rna"])
    msgs = [str(x.message) for x in w if issubclass(x.category, LinkWarning)]
    assert len(msgs) == 1 and "67 duplicate id(s)" in msgs[0] and "738 id(s) are not TCGA" in msgs[0]
    assert isinstance(adata, mu.MuData) and set(adata.mod) == {"slides", "rna"}
    return adata


def test_coadread_report_equals_pandas(coadread, linked):
    adata = linked["slides"]
    rep = adata.uns["link_report"]

    # independent computation with plain pandas
    s = pd.read_csv(coadread["slides"], index_col=0)
    c = pd.read_csv(coadread["clinical"], index_col=0)
    r = pd.read_csv(coadread["rna"], index_col=0)
    pats = set(s["case_id"])
    assert adata.n_obs == len(s) == 301  # every slide kept
    cr = rep["cohort"]
    assert cr["n_ids"] == s["case_id"].nunique() == 298
    assert cr["slides_per_id"]["n_ids_with_several_slides"] == int((s["case_id"].value_counts() > 1).sum())

    cl = rep["clinical"]
    cids = set(c["case_id"])
    assert cl["n_rows"] == len(c)
    assert cl["n_ids"] == c["case_id"].nunique()
    assert cl["n_not_tcga_ids"] == sum(not i.startswith("TCGA-") for i in cids)
    assert cl["n_not_tcga_ids"] > 0.4 * cl["n_ids"]  # the real mess: about half are not TCGA patients
    dup = c["case_id"][c["case_id"].duplicated()].unique()
    assert cl["n_duplicate_ids"] == len(dup)
    assert cl["n_duplicate_rows"] == int(c["case_id"].duplicated().sum())
    assert cl["n_exact_duplicate_ids"] == int(c[c["case_id"].isin(dup)].drop_duplicates()["case_id"]
                                             .value_counts().eq(1).sum())
    conflicting = sorted(c[c["case_id"].isin(dup)].drop_duplicates()["case_id"].value_counts()
                         .loc[lambda v: v > 1].index)
    assert sorted(cl["conflicting_duplicate_ids"]) == conflicting and cl["conflicting_duplicate_columns"] == ["subtype"]
    assert cl["n_matched_ids"] == len(pats & cids)
    assert cl["n_cohort_ids_unmatched"] == len(pats - cids)
    assert cl["n_table_ids_unmatched"] == len(cids - pats)
    assert cl["n_cohort_rows_matched"] == int(s["case_id"].isin(cids).sum())
    # clinical values arrive per slide: first occurrence for duplicated ids, "N/A" read as missing
    first = c.drop_duplicates("case_id").set_index("case_id")
    exp_stage = s["case_id"].map(first["stage"])
    got = adata.obs["stage"]
    assert (got.isna().values == exp_stage.isna().values).all()
    assert (got.dropna().values == exp_stage.dropna().values).all()
    assert adata.obs["grade"].isna().all()  # every TCGA row has grade N/A

    rr = rep["rna"]
    rids = set(r.index)
    assert rr["n_rows"] == len(r) and rr["n_ids"] == r.index.nunique() and rr["n_genes"] == r.shape[1]
    assert rr["n_duplicate_ids"] == int(r.index.duplicated().sum())
    assert rr["n_conflicting_duplicate_ids"] == rr["n_duplicate_ids"]  # the duplicated rows differ
    assert rr["n_matched_ids"] == len(pats & rids)
    assert sorted(rr["cohort_ids_unmatched"]) == sorted(pats - rids)
    assert rr["n_table_ids_unmatched"] == len(rids - pats)
    # RNA is its own modality: one row per matched patient, never copied per slide
    rmod = linked["rna"]
    assert rmod.shape == (len(pats & rids), r.shape[1]) and list(rmod.var_names) == list(r.columns)
    assert set(rmod.obs_names) == pats & rids and rmod.obs_names.is_unique
    assert rmod.uns["link"]["slides_key"] == "patient_id"
    assert rmod.obs["n_slides"].sum() == int(s["case_id"].isin(rids).sum())
    rfirst = r[~r.index.duplicated()]  # first row for a duplicated id
    np.testing.assert_allclose(rmod.X, rfirst.loc[rmod.obs_names].to_numpy())
    rna = rna_by_slide(linked)  # the per-slide view: each slide carries its patient's RNA
    assert isinstance(rna, pd.DataFrame) and list(rna.index) == list(adata.obs_names)
    assert rna.shape == (301, r.shape[1])
    missing = adata.obs["patient_id"].isin(pats - rids).values
    assert rna[missing].isna().all().all() and rna[~missing].notna().all().all()
    i = int(np.flatnonzero(~missing)[7])
    np.testing.assert_allclose(rna.iloc[i].values, rfirst.loc[adata.obs["patient_id"].iloc[i]].values)


def test_report_survives_h5mu_and_writes_fast(linked, tmp_path):
    import time

    t0 = time.perf_counter()
    linked.write(tmp_path / "c.h5mu")
    seconds = time.perf_counter() - t0
    assert seconds < 3.0, f"writing 301 slides + RNA took {seconds:.1f} s"  # 13 s when RNA was copied per slide
    with mu.set_options(pull_on_update=False):
        back = mu.read_h5mu(tmp_path / "c.h5mu")
    rep, brep = linked["slides"].uns["link_report"], back["slides"].uns["link_report"]
    assert brep["clinical"]["n_duplicate_ids"] == rep["clinical"]["n_duplicate_ids"]
    assert brep["rna"]["cohort_ids_unmatched"].tolist() == rep["rna"]["cohort_ids_unmatched"]
    np.testing.assert_array_equal(back["rna"].X, linked["rna"].X)
    assert list(back["rna"].obs_names) == list(linked["rna"].obs_names)
    assert back["rna"].uns["link"]["slides_key"] == "patient_id"
    pd.testing.assert_frame_equal(rna_by_slide(back, ["TP53", "EGFR"]), rna_by_slide(linked, ["TP53", "EGFR"]))


def test_scanpy_runs_on_the_rna_modality(linked):
    rna = linked["rna"].copy()
    sc.pp.scale(rna)
    sc.tl.pca(rna, n_comps=5)
    assert rna.obsm["X_pca"].shape == (linked["rna"].n_obs, 5)
    sc.tl.score_genes(rna, ["TP53", "EGFR"], ctrl_size=20, random_state=0)
    assert np.isfinite(rna.obs["score"]).all()


def test_patient_ad_6964_end_to_end(shared_data, tmp_path):
    """Real tile bag -> cohort row -> SurvPath survival + TCGA-CDR survival agree -> RNA row: one row."""
    tc = shared_data / "tcga"
    with h5py.File(shared_data / "embeddings" / "TCGA-AD-6964-01Z-00-DX1.features.h5") as f:
        feats, coords = f["feats"][:], f["coords"][:]
    assert feats.shape == (777, 512)
    tiles = ad.AnnData(X=feats.astype(np.float32),
                       obs=pd.DataFrame({"x": coords[:, 1], "y": coords[:, 0]},
                                        index=[str(i) for i in range(777)]))
    tiles.obsm["spatial"] = coords[:, ::-1].astype(np.float64)  # stored (y, x) on disk
    slide_vec = tiles.X.mean(axis=0)
    cohort = ad.AnnData(obs=pd.DataFrame({"slide_id": [AD_SLIDE], "status": ["ok"], "n_tiles": [777]},
                                         index=[AD_SLIDE]))
    cohort.obsm["X_mean"] = slide_vec[None, :]

    survpath = pd.read_csv(tc / "coadread" / "slides_survival.csv", index_col=0)
    cdr = pd.read_csv(tc / "TCGA-CDR.csv")
    with pytest.warns(LinkWarning):
        c = pk.link(cohort, survpath, tc / "coadread" / "rna_xena_log2.csv")
    with pytest.warns(LinkWarning):
        c = pk.link(c, cdr, clinical_name="tcga_cdr")  # linking a MuData again keeps its RNA
    assert isinstance(c, mu.MuData) and c["rna"].n_obs == 1 and c["rna"].obs_names[0] == "TCGA-AD-6964"
    rna_row = c["rna"].X[0]
    c = c["slides"]
    assert c.n_obs == 1
    row = c.obs.iloc[0]
    assert row["patient_id"] == "TCGA-AD-6964" and row["sample_id"] == "TCGA-AD-6964-01"
    assert row["time_months"] == pytest.approx(11.03, abs=0.01) and row["censorship"] == 0
    assert row["OS"] == 1 and row["OS.time"] == pytest.approx(331)
    assert row["event"] == 1 and row["time_days"] == pytest.approx(331)
    # the two sources describe the same death: 331 days = 11.03 months of 30 days
    assert row["time_days"] / 30.0 == pytest.approx(row["time_months"], abs=0.01)
    rep = c.uns["link_report"]
    assert rep["clinical"]["conflicts"] == {} and rep["tcga_cdr"]["conflicts"] == {}  # event agrees
    assert rep["tcga_cdr"]["n_matched_ids"] == 1 and rep["clinical"]["n_matched_ids"] == 1
    assert c.uns["survival"]["event (clinical)"]["rule"] == "event = 1 - censorship"
    assert c.uns["survival"]["time_days (tcga_cdr)"]["unit"] == "days"
    rna = pd.read_csv(tc / "coadread" / "rna_xena_log2.csv", index_col=0).loc["TCGA-AD-6964"]
    np.testing.assert_allclose(rna_row, rna.values)
    np.testing.assert_allclose(c.obsm["X_mean"][0], feats.mean(axis=0), rtol=1e-6)


# ------------------------------------------------------------------------------------------ bad tables
@pytest.fixture
def small_cohort():
    ids = ["TCGA-AA-0001-01Z-00-DX1", "TCGA-AA-0001-01Z-00-DX2", "TCGA-AA-0002-01Z-00-DX1",
           "TCGA-AA-0003-01Z-00-DX1", "TCGA-AA-0004-01Z-00-TS1"]
    a = ad.AnnData(obs=pd.DataFrame({"slide_id": ids, "age": [50, 50, 61, 70, 44],
                                     "n_tiles": [10, 30, 5, 7, 9]}, index=ids))
    a.obsm["X_mean"] = np.arange(10, dtype=np.float32).reshape(5, 2)
    return a


def test_bad_tables_each_reported_never_dropped(small_cohort):
    clinical = pd.DataFrame({
        "case_id": ["TCGA-AA-0001", "TCGA-AA-0001",    # exact duplicate
                    " tcga-aa-0002-01 ",                # mixed format: sample level, lower case, spaces
                    "TCGA-AA-0003", "TCGA-AA-0003",     # conflicting duplicate
                    None,                               # NaN id
                    "P-0000674", "TCGA-ZZ-9999"],      # not TCGA / not in cohort
        "age": [50, 50, 62, 70, 70, 33, 40, 41],        # 0002 conflicts with the cohort's 61
        "stage": ["II", "II", "III", "I", "IV", "II", "N/A", "I"],
    })
    a = _link(small_cohort, clinical)
    rep = a.uns["link_report"]["clinical"]
    assert a.n_obs == 5  # nothing dropped
    assert rep["n_nan_ids"] == 1
    assert sorted(rep["duplicate_ids"]) == ["TCGA-AA-0001", "TCGA-AA-0003"]
    assert rep["n_exact_duplicate_ids"] == 1 and rep["conflicting_duplicate_ids"] == ["TCGA-AA-0003"]
    assert rep["conflicting_duplicate_columns"] == ["stage"]
    assert rep["n_not_tcga_ids"] == 1 and rep["not_tcga_ids"] == ["P-0000674"]
    assert rep["n_matched_ids"] == 3 and rep["cohort_ids_unmatched"] == ["TCGA-AA-0004"]
    assert rep["n_table_ids_unmatched"] == 2  # P-0000674, TCGA-ZZ-9999
    assert rep["conflicts"] == {"age": {"n_rows": 1, "n_ids": 1, "ids": ["TCGA-AA-0002"]}}
    assert a.obs.loc["TCGA-AA-0002-01Z-00-DX1", "age"] == 61            # cohort value kept
    assert a.obs.loc["TCGA-AA-0002-01Z-00-DX1", "age_clinical"] == 62   # table's value shown beside it
    assert a.obs.loc["TCGA-AA-0003-01Z-00-DX1", "stage"] == "I"         # first of the duplicates
    assert pd.isna(a.obs.loc["TCGA-AA-0004-01Z-00-TS1", "stage"])
    with pytest.raises(TableError, match="2 duplicate id"):
        pk.link(small_cohort, clinical, duplicates="raise", warn=False)


def test_cohort_side_problems_reported():
    obs = pd.DataFrame({"patient_id": ["TCGA-AA-0001", None, "P-1", "TCGA-AA-0001"]},
                       index=["s1", "s2", "s3", "s4"])
    rna = pd.DataFrame({"G1": [1.0, 2.0], "G2": [3.0, 4.0]}, index=["TCGA-AA-0001", "P-1"])
    md = _link(ad.AnnData(obs=obs), rna=rna)
    cr = md["slides"].uns["link_report"]["cohort"]
    assert cr["n_nan_ids"] == 1 and cr["nan_id_rows"] == ["s2"] and cr["not_tcga_ids"] == ["P-1"]
    assert list(md["rna"].obs_names) == ["TCGA-AA-0001", "P-1"] and md["rna"].obs["n_slides"].tolist() == [2, 1]
    m = rna_by_slide(md)
    assert m.loc["s1"].tolist() == [1.0, 3.0] and m.loc["s4"].tolist() == [1.0, 3.0]
    assert m.loc["s3"].tolist() == [2.0, 4.0]  # non-TCGA ids still match a table using the same scheme
    assert m.loc["s2"].isna().all()
    with pytest.raises(TableError, match="non-numeric column"):
        pk.link(ad.AnnData(obs=obs), rna=rna.assign(note="x"), warn=False)


def test_slides_per_patient_policies(small_cohort):
    allr = pk.link(small_cohort, warn=False)
    assert allr.n_obs == 5
    assert allr.uns["link_report"]["cohort"]["slides_per_id"]["ids_with_several_slides"] == ["TCGA-AA-0001"]
    with pytest.warns(LinkWarning, match="1 slide"):
        dx = pk.link(small_cohort, slides_per_patient="first_dx")
    assert "TCGA-AA-0001-01Z-00-DX1" in dx.obs_names and "TCGA-AA-0001-01Z-00-DX2" not in dx.obs_names
    assert dx.uns["link_report"]["cohort"]["slides_per_id"]["dropped_slides"] == ["TCGA-AA-0001-01Z-00-DX2"]
    with pytest.warns(LinkWarning):
        big = pk.link(small_cohort, slides_per_patient="largest")
    assert "TCGA-AA-0001-01Z-00-DX2" in big.obs_names and big.n_obs == 4  # 30 tiles > 10
    with pytest.warns(LinkWarning):
        mean = pk.link(small_cohort, slides_per_patient="mean")
    assert mean.n_obs == 4
    assert mean.obs.loc["TCGA-AA-0001", "n_slides"] == 2
    np.testing.assert_allclose(mean.obsm["X_mean"][0], [1.0, 2.0])  # mean of rows [0,1] and [2,3]
    np.testing.assert_allclose(mean.obsm["X_mean"][1:], small_cohort.obsm["X_mean"][2:])


def test_survival_normalisation():
    df = pd.DataFrame({"censorship": [1, 0, np.nan], "survival_months": [3.0, 4.5, 1.0],
                       "OS": [0, 1, 1], "OS.time": [90, 135, 30], "PFI": [1, 1, 0], "PFI.time": [10, 20, 30]})
    out, info = normalise_survival(df.drop(columns=["OS", "OS.time"]))
    assert out["event"].tolist()[:2] == [0.0, 1.0] and np.isnan(out["event"].iloc[2])
    assert out["time_months"].tolist() == [3.0, 4.5, 1.0] and info["time_months"]["unit"] == "months"
    assert out["event_pfi"].tolist() == [1.0, 1.0, 0.0] and out["time_days_pfi"].tolist() == [10, 20, 30]
    cdr, info = normalise_survival(df.drop(columns=["censorship"]))
    assert cdr["event"].tolist() == [0, 1, 1] and cdr["time_days"].tolist() == [90, 135, 30]
    assert info["time_days"] == {"source": "OS.time", "unit": "days", "rule": "copied (TCGA-CDR)"}
    with pytest.raises(TableError, match="disagrees"):  # censorship says censored, OS says death
        normalise_survival(df.assign(OS=[1, 1, 1]))
    with pytest.raises(TableError, match="'censorship'.*0/1"):
        normalise_survival(pd.DataFrame({"censorship": [0, 2]}))
    with pytest.raises(TableError, match="negative"):
        normalise_survival(pd.DataFrame({"survival_months": [1.0, -2.0]}))


def test_join_levels_sample_slide_and_column(small_cohort):
    # RNA measured per sample: at sample level the tumour slide (01) takes the tumour sample, not the normal
    rna = pd.DataFrame({"G": [1.0, 2.0, 3.0]},
                       index=["TCGA-AA-0001-01A-11R-1928-07", "TCGA-AA-0001-11A-01R-1928-07", "TCGA-AA-0002-01"])
    md = pk.link(small_cohort, rna=rna, on="sample", warn=False)
    a = md["slides"]
    assert a.obs["sample_id"].tolist()[:3] == ["TCGA-AA-0001-01", "TCGA-AA-0001-01", "TCGA-AA-0002-01"]
    assert list(md["rna"].obs_names) == ["TCGA-AA-0001-01", "TCGA-AA-0002-01"]  # one row per sample
    assert md["rna"].uns["link"] == {"on": "sample", "slides_key": "sample_id"}
    g = rna_by_slide(md)["G"]
    assert g.tolist()[:3] == [1.0, 1.0, 3.0] and np.isnan(g.iloc[3])
    assert a.uns["link_report"]["rna"]["n_table_ids_unmatched"] == 1  # the normal sample
    # at patient level the two samples of TCGA-AA-0001 are duplicates, reported
    with pytest.warns(LinkWarning, match="1 duplicate id"):
        p = pk.link(small_cohort, rna=rna)
    assert p["slides"].uns["link_report"]["rna"]["conflicting_duplicate_ids"] == ["TCGA-AA-0001"]
    # slide level: a table keyed by file name (with extension) matches slide ids without it
    clin = pd.DataFrame({"slide_id": ["TCGA-AA-0002-01Z-00-DX1.svs"], "score": [7]})
    s = pk.link(small_cohort, clin, on="slide", warn=False)
    assert s.obs["score"].tolist()[2] == 7 and s.obs["score"].isna().sum() == 4
    # any column present on both sides
    small_cohort.obs["site"] = ["x", "x", "y", "z", "w"]
    c = pk.link(small_cohort, pd.DataFrame({"site": ["x", "y"], "centre": ["A", "B"]}), on="site", warn=False)
    assert c.obs["centre"].tolist()[:3] == ["A", "A", "B"] and c.obs["centre"].isna().sum() == 2


def test_rna_joined_on_any_column(small_cohort):
    """on=<column>: the RNA modality is keyed by that column's values, even numeric ones."""
    small_cohort.obs["batch"] = [1, 1, 2, 3, 3]
    rna = pd.DataFrame({"batch": [1, 3], "G": [5.0, 7.0]})
    md = pk.link(small_cohort, rna=rna, on="batch", rna_key="batch", warn=False)
    assert list(md["rna"].obs_names) == ["1", "3"] and md["rna"].obs["n_slides"].tolist() == [2, 2]
    assert rna_by_slide(md)["G"].tolist()[:2] == [5.0, 5.0] and np.isnan(rna_by_slide(md)["G"].iloc[2])
