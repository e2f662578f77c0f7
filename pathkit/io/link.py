"""Linking a slide cohort with clinical and RNA-seq tables."""


def link(*args, **kwargs):
    raise NotImplementedError("link is being built")
