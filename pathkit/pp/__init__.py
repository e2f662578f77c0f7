"""Preprocessing: tissue detection and tiling."""
from .tissue import find_tissue
from .tiling import tile

__all__ = ["find_tissue", "tile"]
