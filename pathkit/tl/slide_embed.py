"""Slide embedding: LongNet (Prov-GigaPath) or mean pooling of a tile AnnData."""


def embed_slide(*args, **kwargs):
    raise NotImplementedError("embed_slide is being built")
