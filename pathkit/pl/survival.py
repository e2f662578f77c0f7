"""Kaplan-Meier figures (plotly)."""


def kaplan_meier(*args, **kwargs):
    raise NotImplementedError("kaplan_meier is being built")
