"""ipywidgets viewers for JupyterLab."""
from .slide_explorer import SlideExplorer
from .survival_explorer import SurvivalExplorer

__all__ = ["SlideExplorer", "SurvivalExplorer"]
