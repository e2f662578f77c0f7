"""Slide explorer widget."""


class SlideExplorer:  # placeholder
    pass
