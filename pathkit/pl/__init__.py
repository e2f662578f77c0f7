"""Plotting: interactive plotly figures."""
from .survival import kaplan_meier
from .umap import umap
from .slide import slide
from ._thumbs import write_html
from ._associate import association_heatmap, encoder_comparison, volcano

__all__ = ["kaplan_meier", "umap", "slide", "write_html", "volcano", "association_heatmap", "encoder_comparison"]
