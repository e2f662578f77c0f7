"""Plotting: interactive plotly figures."""
from .survival import kaplan_meier
from .umap import umap
from .slide import slide

__all__ = ["kaplan_meier", "umap", "slide"]
