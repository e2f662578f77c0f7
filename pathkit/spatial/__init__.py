"""Spatial transcriptomics: spots next to H&E tiles.

The spots AnnData (every ``pk.io.read_*`` reader returns it) is what scanpy and squidpy accept as is:

* spots x genes; raw counts in ``layers["counts"]`` and, until the user normalises, in ``X``;
  ``obs["total_counts"]``, ``obs["n_genes_by_counts"]``;
* ``obsm["spatial"]``: spot centres (x, y) in level-0 pixels of the slide, float64;
* ``uns["spatial"][<library_id>]``: scanpy's layout (``images`` ``hires`` / ``lowres`` where known,
  ``scalefactors`` with ``spot_diameter_fullres``, ``tissue_hires_scalef``, ``tissue_lowres_scalef``);
* ``uns["spot_spec"]``: library_id, spot_diameter_um, mpp, source, the slide link (path, slide_id, sha256,
  dimensions, mpp) and the ``report`` of spots without counts / counts without spots.

:func:`pathkit.pp.tile_spots` adds the tiles contract (``obs`` ``x``, ``y``, ``uns["tile_spec"]``) so that
:func:`pathkit.tl.embed_tiles` embeds spots directly.
"""
from ._by_slide import predicted_expression_by_slide
from ._readers import read_spots, read_st, read_visium
from ._sdata import from_spatialdata, to_spatialdata
from ._spots import SpotWarning
from ._tiles import map_spots, tile_spots
from ._xenium import read_xenium

__all__ = ["SpotWarning", "from_spatialdata", "map_spots", "predicted_expression_by_slide", "read_spots", "read_st",
           "read_visium", "read_xenium", "tile_spots", "to_spatialdata"]
