"""Issue 28, items 9, 10, 12, 13: tables as users have them (Excel, ';' and decimal comma, Latin-1, empty
files, ids that pandas would turn into numbers, transposed RNA, duplicated genes, inf) and pk.io.link's output
always writable. Each test failed before its fix."""
from __future__ import annotations

import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import pathkit as pk
from pathkit.errors import TableError

IDS = ["TCGA-AA-0001", "TCGA-AA-0002", "TCGA-AA-0003"]


def _cohort(ids=IDS):
    sids = [f"{i}-01Z-00-DX1" for i in ids]
    return ad.AnnData(obs=pd.DataFrame({"slide_id": sids}, index=sids))


def _link(*a, **k):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pk.io.link(*a, **k)


def test_link_with_the_shipped_tcga_cdr_table_is_writable(shared_data, tmp_path):
    cdr = shared_data / "tcga" / "TCGA-CDR.csv"
    ids = pd.read_csv(cdr, usecols=["bcr_patient_barcode"])["bcr_patient_barcode"][:5].tolist()
    out = _link(_cohort(ids), cdr)
    out.write_h5ad(tmp_path / "linked.h5ad")  # was: TypeError naming no column (all-NaN object columns)
    back = ad.read_h5ad(tmp_path / "linked.h5ad")
    assert back.obs["margin_status"].isna().all() and back.obs["OS.time"].notna().all()
    assert back.obs["new_tumor_event_site_other"].tolist()[-1] == "vena cava thrombus"


def test_excel_semicolon_decimal_comma_and_latin1_are_read(tmp_path):
    df = pd.DataFrame({"patient_id": IDS, "age": [61.5, 70.25, 55.0], "site": ["Zürich", "Malmö", "Orléans"]})
    df.to_excel(tmp_path / "clin.xlsx", index=False)
    (tmp_path / "clin_eu.csv").write_text("patient_id;age;site\n" + "".join(
        f"{i};{str(a).replace('.', ',')};{s}\n" for i, a, s in zip(IDS, df["age"], df["site"])))
    (tmp_path / "clin_latin1.csv").write_bytes(df.to_csv(index=False).encode("latin-1"))
    for name in ("clin.xlsx", "clin_eu.csv", "clin_latin1.csv"):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            t = pk.io.read_table(tmp_path / name)
        assert t["age"].tolist() == [61.5, 70.25, 55.0], name
        assert t["site"].tolist() == ["Zürich", "Malmö", "Orléans"], name
        assert any("Latin-1" in str(x.message) for x in w) == (name == "clin_latin1.csv")
        out = _link(_cohort(), tmp_path / name)
        assert out.obs["age"].tolist() == [61.5, 70.25, 55.0]


def test_empty_file_and_missing_id_column_name_the_file_and_the_columns(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    with pytest.raises(TableError, match=r"empty.csv is empty"):
        pk.io.read_table(tmp_path / "empty.csv", "clinical")
    (tmp_path / "blank.csv").write_text("\n\n")
    with pytest.raises(TableError, match=r"blank.csv holds no table"):
        pk.io.read_table(tmp_path / "blank.csv", "clinical")
    (tmp_path / "odd.csv").write_text("case:age\nTCGA-AA-0001:60\n")
    with pytest.raises(TableError, match=r"columns are \['case:age'\].*separator was not recognised"):
        _link(_cohort(), tmp_path / "odd.csv", clinical_key="case")
    (tmp_path / "c.csv").write_text("Case_ID,age\nTCGA-AA-0001,60\n")
    with pytest.raises(TableError, match=r"did you mean 'Case_ID'\?"):
        _link(_cohort(), tmp_path / "c.csv", clinical_key="case_id")


def test_numeric_looking_ids_join_as_text(tmp_path):
    # "0012" must stay "0012"; 1001 with a missing id in the column must not become "1001.0"
    c = ad.AnnData(obs=pd.DataFrame({"patient_id": ["0012", "1001", "1002"]}, index=["a", "b", "c"]))
    (tmp_path / "clin.csv").write_text("patient_id,age\n0012,50\n1001,60\n,70\n1002,80\n")
    out = _link(c, tmp_path / "clin.csv")
    assert out.obs["age"].tolist() == [50, 60, 80]
    clin = pd.DataFrame({"patient_id": [12.0, 1001.0, np.nan], "stage": ["I", "II", "III"]})
    c2 = ad.AnnData(obs=pd.DataFrame({"patient_id": ["12", "1001", "7"]}, index=["a", "b", "c"]))
    out2 = _link(c2, clin)
    assert out2.obs["stage"].tolist()[:2] == ["I", "II"]


def test_rna_transposed_duplicated_genes_and_inf(tmp_path):
    rng = np.random.default_rng(0)
    rna = pd.DataFrame(rng.normal(size=(3, 4)), index=IDS, columns=["EGFR", "KRAS", "TP53", "MYC"])
    with pytest.raises(TableError, match=r"looks transposed.*rna\.T"):
        _link(_cohort(), rna=rna.T)
    dup = rna.set_axis(["EGFR", "KRAS", "EGFR", "MYC"], axis=1)
    with pytest.raises(TableError, match=r"gene name\(s\) appear in more than one column.*'EGFR'"):
        _link(_cohort(), rna=dup)
    bad = rna.copy()
    bad.iloc[1, 2] = np.inf
    with pytest.raises(TableError, match=r"1 infinite value\(s\) in 1 column\(s\), e.g. \['TP53'\]"):
        _link(_cohort(), rna=bad)
    assert _link(_cohort(), rna=rna)["rna"].n_vars == 4  # the good table still links
