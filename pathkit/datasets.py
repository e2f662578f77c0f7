"""Sample data: the public CMU-1 slide (when online) or a generated synthetic pyramidal slide."""


def sample_slide(*args, **kwargs):
    raise NotImplementedError("sample_slide is being built")


def synthetic_slide(*args, **kwargs):
    raise NotImplementedError("synthetic_slide is being built")
