"""Preprocessing: tissue detection and tiling."""
from ._qc import tile_qc
from ._segment import ArtifactMasks, find_artifacts
from .tiling import tile
from .tissue import TissueMask, find_tissue, tissue_mask_from_rgb

__all__ = ["ArtifactMasks", "TissueMask", "find_artifacts", "find_tissue", "tile", "tile_qc", "tissue_mask_from_rgb"]
