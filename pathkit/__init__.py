"""pathkit: a Jupyter-first toolkit for computational pathology.

    import pathkit as pk
    slide = pk.read_slide("slide.svs")
    tiles = pk.pp.tile(slide)                         # AnnData: one row per tile
    pk.tl.embed_tiles(tiles, slide, "gigapath_tile")  # -> tiles.obsm["X_gigapath_tile"]
"""
from ._version import __version__
from . import errors, models
from .slide import Slide, read_slide
from . import pp, tl, pl, io, tcga, datasets, widgets
from .io import link
from .models import list_models

__all__ = ["__version__", "Slide", "read_slide", "pp", "tl", "pl", "io", "tcga", "datasets", "widgets",
           "link", "list_models", "models", "errors"]
