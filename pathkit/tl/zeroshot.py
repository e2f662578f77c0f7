"""Zero-shot classification with image-text models (MI-Zero / CONCH protocol)."""


def zero_shot(*args, **kwargs):
    raise NotImplementedError("zero_shot is being built")


def zero_shot_eval(*args, **kwargs):
    raise NotImplementedError("zero_shot_eval is being built")


def topk_pool(*args, **kwargs):
    raise NotImplementedError("topk_pool is being built")
