"""Slide file extensions and the one rule that turns a file name into a slide id.

``TCGA-AD-6964-01Z-00-DX1.svs``, ``.../TCGA-AD-6964-01Z-00-DX1.h5ad`` and ``TCGA-AD-6964-01Z-00-DX1`` name the
same slide: the id is the file name without its slide/feature-file extension (``.ome.tif`` counts as one).
"""
from __future__ import annotations

import os

# whole-slide image formats (what a folder of slides is searched for)
SLIDE_EXTENSIONS = (".ome.tiff", ".ome.tif", ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu",
                    ".bif", ".qptiff", ".dcm", ".czi", ".svslide")
# files that hold a slide's tiles or features (embed_cohort's .h5ad, CLAM .h5 bags, .pt bags)
FEATURE_EXTENSIONS = (".features.h5", ".h5ad", ".h5", ".zarr", ".pt")
_STRIP = tuple(sorted(SLIDE_EXTENSIONS + FEATURE_EXTENSIONS, key=len, reverse=True))


def is_slide_file(path) -> bool:
    return os.fspath(path).lower().endswith(SLIDE_EXTENSIONS)


def slide_id_from_path(path) -> str:
    """The slide id of a path or file name: its base name without a slide or feature-file extension."""
    if not isinstance(path, (str, os.PathLike)):
        return path
    base = os.fspath(path).replace("\\", "/").rsplit("/", 1)[-1]
    low = base.lower()
    for ext in _STRIP:
        if low.endswith(ext):
            return base[: -len(ext)]
    return base
