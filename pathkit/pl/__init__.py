"""Plotting: interactive plotly figures."""
from .survival import kaplan_meier
from .umap import umap
from .slide import slide
from ._thumbs import write_html
from ._qc import qc

__all__ = ["kaplan_meier", "umap", "slide", "write_html", "qc"]
