"""Survival analysis: Kaplan-Meier, log-rank, Cox, c-index, risk groups."""


def kaplan_meier(*args, **kwargs):
    raise NotImplementedError("kaplan_meier is being built")


def logrank(*args, **kwargs):
    raise NotImplementedError("logrank is being built")


def cox(*args, **kwargs):
    raise NotImplementedError("cox is being built")


def cindex(*args, **kwargs):
    raise NotImplementedError("cindex is being built")


def risk_groups(*args, **kwargs):
    raise NotImplementedError("risk_groups is being built")
