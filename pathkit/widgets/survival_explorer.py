"""Survival explorer widget."""


class SurvivalExplorer:  # placeholder
    pass
