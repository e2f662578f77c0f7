"""Preprocessing: tissue detection and tiling."""
from .tiling import tile
from .tissue import TissueMask, find_tissue, tissue_mask_from_rgb
from ._qc import tile_qc
from ._segment import ArtifactMasks, find_artifacts

__all__ = ["find_tissue", "tile", "TissueMask", "tissue_mask_from_rgb", "tile_qc", "find_artifacts", "ArtifactMasks"]
from ..spatial import tile_spots

__all__ += ["tile_spots"]
