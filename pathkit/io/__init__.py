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
from ..cells._qupath import read_qupath_cells  # issue 23: cells
from ..spatial import (
    SpotWarning, from_spatialdata, read_spots, read_st, read_visium, read_xenium, to_spatialdata,
)
from ._dicom_ann import read_dicom_annotations, read_dicom_seg

__all__ = ["link", "rna_by_slide", "summarise_report", "cohort_from_table", "read_table", "LinkWarning",
           "normalise_survival", "validate_manifest", "read_manifest", "write_manifest", "fetch_manifest",
           "resolve_gdc", "manifest_from_files", "FetchError", "read_h5_bag", "read_geojson", "write_geojson",
           "GeoJSONError", "read_qupath_cells", "read_visium", "read_xenium", "read_st", "read_spots",
           "to_spatialdata", "from_spatialdata", "SpotWarning", "read_dicom_annotations", "read_dicom_seg"]
