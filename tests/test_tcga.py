"""pk.tcga: barcode parsing (patient / sample / slide / aliquot, file names with UUID) and clear errors."""
from __future__ import annotations

import pandas as pd
import pytest

import pathkit as pk
from pathkit.errors import TableError
from pathkit.tcga import parse_barcode, parse_barcodes

UUID = "83AF88B9-C59B-48C6-A739-85ACB8F8ECA9"


def test_slide_file_name_with_uuid_and_folder():
    b = pk.tcga.parse_barcode(f"/data/slides/TCGA-AD-6964-01Z-00-DX1.{UUID}.svs")
    assert b.patient == "TCGA-AD-6964" and len(b.patient) == 12
    assert b.sample == "TCGA-AD-6964-01" and len(b.sample) == 15
    assert (b.sample_type, b.tissue, b.is_tumour) == ("01", "tumour", True)
    assert (b.vial, b.portion, b.analyte) == ("Z", "00", None)
    assert (b.slide, b.slide_type, b.slide_number, b.is_diagnostic) == ("TCGA-AD-6964-01Z-00-DX1", "DX", "1", True)
    assert b.uuid == UUID
    assert b.level == "slide"
    assert b.barcode == "TCGA-AD-6964-01Z-00-DX1"
    assert b.to_dict()["patient"] == "TCGA-AD-6964"


def test_levels_and_parts():
    p = parse_barcode("TCGA-AD-6964")
    assert (p.level, p.sample, p.slide_type, p.uuid) == ("patient", None, None, None)
    s = parse_barcode("TCGA-AD-6964-11")
    assert (s.level, s.sample, s.tissue, s.sample_type_name) == ("sample", "TCGA-AD-6964-11", "normal",
                                                                "Solid Tissue Normal")
    a = parse_barcode("tcga-ad-6964-01a-11r-1928-07")  # case-insensitive
    assert (a.level, a.vial, a.portion, a.analyte, a.plate, a.center) == ("aliquot", "A", "11", "R", "1928", "07")
    assert a.patient == "TCGA-AD-6964"
    fz = parse_barcode("TCGA-CR-7395-01A-01-TS1.svs")
    assert (fz.slide_type, fz.slide_number, fz.portion, fz.uuid) == ("TS", "1", "01", None)
    # a feature bag named after its slide: the suffix is not a UUID
    bag = parse_barcode("TCGA-AD-6964-01Z-00-DX1.features.h5")
    assert (bag.slide, bag.uuid) == ("TCGA-AD-6964-01Z-00-DX1", None)
    assert parse_barcode("TCGA-AD-6964-20").tissue == "control"
    assert parse_barcode("TCGA-AD-6964-06").tissue == "tumour"  # metastatic


@pytest.mark.parametrize("value, why", [
    ("P-0000674", "does not start with 'TCGA-'"),
    ("TCGA-AD", "at least TCGA-<site>-<participant>"),
    ("TCGA-AD-69", "participant '69'"),
    ("TCGA-A-6964", "tissue source site 'A'"),
    ("TCGA-AD-6964-1", "sample part '1'"),
    ("TCGA-AD-6964-01-00", "vial letter"),
    ("TCGA-AD-6964-01Z-00-XX1", "must be a slide"),
    ("TCGA-AD-6964-01Z-00-DX1-07", "unexpected part"),
    ("TCGA-AD-6964-01Z-00-DX1.83AF88B9-C59B.svs", "looks like a UUID but is malformed"),
    ("TCGA-AD-6964-01.83AF88B9-C59B-48C6-A739-85ACB8F8ECA9", "only expected on slide file names"),
    ("", "empty"),
    (12, "expected a string"),
])
def test_invalid_barcodes_name_value_and_reason(value, why):
    with pytest.raises(TableError) as e:
        parse_barcode(value)
    assert repr(value) in str(e.value) and why in str(e.value)
    assert not pk.tcga.is_barcode(value)


def test_vectorised_keeps_index_and_reports_errors():
    s = pd.Series(["TCGA-AD-6964-01Z-00-DX1", "P-1", None, "TCGA-AD-6964-01Z-00-DX1"], index=list("abcd"))
    df = parse_barcodes(s, errors="coerce")
    assert list(df.index) == list("abcd")
    assert df.loc["a", "patient"] == df.loc["d", "patient"] == "TCGA-AD-6964"
    assert df.loc["b", "patient"] is None and "does not start with 'TCGA-'" in df.loc["b", "error"]
    assert df.loc["c", "error"] == "missing id"
    with pytest.raises(TableError, match=r"2 invalid TCGA barcode\(s\): .*'P-1'.*missing value None"):
        parse_barcodes(s)


@pytest.mark.parametrize("project", ["coadread", "blca"])
def test_every_real_slide_name_parses(shared_data, project):
    t = pd.read_csv(shared_data / "tcga" / project / "slides_survival.csv", index_col=0)
    df = parse_barcodes(t["slide_id"])
    assert (df["patient"].values == t["case_id"].values).all()
    assert (df["slide_type"] == "DX").all() and (df["tissue"] == "tumour").all()
    # the UUID is the text between the first dot and ".svs"
    assert (df["uuid"].values == t["slide_id"].str.split(".").str[1].values).all()
    assert df["slide_number"].astype(int).min() == 1
