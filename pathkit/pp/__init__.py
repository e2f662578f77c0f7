"""Preprocessing: tissue detection and tiling."""
from .tiling import tile
from .tissue import TissueMask, find_tissue, tissue_mask_from_rgb
from ._qc import tile_qc
from ._artifacts import ArtifactMasks, find_artifacts

__all__ = ["find_tissue", "tile", "TissueMask", "tissue_mask_from_rgb", "tile_qc", "find_artifacts", "ArtifactMasks"]
from ._stain import StainNormalizer, fit_stain
from ._augment import HEDJitter, hed_jitter
__all__ += ["fit_stain", "StainNormalizer", "hed_jitter", "HEDJitter"]
from ..spatial import tile_spots

__all__ += ["tile_spots"]
