"""Preprocessing: tissue detection and tiling."""
from .tiling import tile
from .tissue import TissueMask, find_tissue, tissue_mask_from_rgb
from ._qc import tile_qc
from ._artifacts import ArtifactMasks, find_artifacts
from ._stain import StainNormalizer, fit_stain
from ._augment import HEDJitter, hed_jitter
from ..spatial import tile_spots

__all__ = ["find_tissue", "tile", "TissueMask", "tissue_mask_from_rgb", "tile_qc", "find_artifacts",
           "ArtifactMasks", "fit_stain", "StainNormalizer", "hed_jitter", "HEDJitter", "tile_spots"]
