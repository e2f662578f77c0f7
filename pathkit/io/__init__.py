"""Input/output: linking tables, manifests, AnnData files."""
from ._link import LinkWarning, cohort_from_table, link, read_table, summarise_report
from ._mudata import rna_by_slide
from .bags import read_h5_bag
from .manifest import (
    FetchError,
    fetch_manifest,
    manifest_from_files,
    read_manifest,
    resolve_gdc,
    validate_manifest,
    write_manifest,
)
from .survival_columns import normalise_survival

__all__ = [
    "FetchError",
    "LinkWarning",
    "cohort_from_table",
    "fetch_manifest",
    "link",
    "manifest_from_files",
    "normalise_survival",
    "read_h5_bag",
    "read_manifest",
    "read_table",
    "resolve_gdc",
    "rna_by_slide",
    "summarise_report",
    "validate_manifest",
    "write_manifest",
]
