"""Input/output: linking tables, manifests, AnnData files."""
from .bags import read_h5_bag
from ._link import LinkWarning, cohort_from_table, link, read_table, summarise_report
from ._mudata import rna_by_slide
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
from ._geojson import GeoJSONError, read_geojson, write_geojson

__all__ = ["link", "rna_by_slide", "summarise_report", "cohort_from_table", "read_table", "LinkWarning",
           "normalise_survival",
           "validate_manifest", "read_manifest", "write_manifest", "fetch_manifest", "resolve_gdc",
           "manifest_from_files", "FetchError", "read_h5_bag"]
__all__ += ["read_geojson", "write_geojson", "GeoJSONError"]
from ._dicom_ann import read_dicom_annotations, read_dicom_seg
__all__ += ["read_dicom_annotations", "read_dicom_seg"]
