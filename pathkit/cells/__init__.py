"""Cells: nucleus segmentation and per-cell measurements, one AnnData row per cell (issue 23).

``pk.tl.segment_cells`` makes the cells AnnData from a slide's tiles; ``pk.tl.cell_composition`` turns
cells into per-slide features; ``pk.pl.cells`` draws them; ``pk.io.read_qupath_cells`` reads QuPath
detections and ``pk.io.write_geojson(cells, path)`` writes them.
"""
from ._instanseg import convert_instanseg
from ._instanseg_post import InstanSegParams
from ._polygons import cell_polygons
from ._segment import segment_cells
from ._synthetic import synthetic_nuclei, write_rgb_slide
from ._watershed import WatershedParams, haematoxylin, watershed_nuclei

__all__ = ["InstanSegParams", "WatershedParams", "cell_polygons", "convert_instanseg", "haematoxylin",
           "segment_cells", "synthetic_nuclei", "watershed_nuclei", "write_rgb_slide"]
