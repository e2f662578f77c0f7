"""Plotting: interactive plotly figures."""
from ._survival import kaplan_meier
from ._umap import umap
from ._slide import slide
from ._thumbs import write_html
from ._qc import qc
from ._associate import association_heatmap, encoder_comparison, volcano
from ._site import site_effect
from ..cells._plot import cells  # issue 23: cells
from ..spatial._plot import spatial

__all__ = ["kaplan_meier", "umap", "slide", "write_html", "qc", "volcano", "association_heatmap",
           "encoder_comparison", "site_effect", "cells", "spatial"]
