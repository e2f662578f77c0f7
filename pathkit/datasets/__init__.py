"""Example data: public slides, TCGA tables and embeddings, fetched with a checksum; synthetic slides.

``pk.datasets.registry`` lists every file (upstream URL pinned to a commit or a stable id, sha256, size,
licence, citation); :func:`fetch` downloads one once into :func:`data_dir` (``$PATHKIT_DATA_DIR``, default
the user cache) and verifies it. The loaders (:func:`cmu1_small`, :func:`tcga_coadread`, :func:`tcga_cdr`,
:func:`tile_bag`, ...) return ready objects. ``CMU-1-Small-Region.svs`` ships inside the package, so
the quickstart runs offline. :func:`synthetic_slide` writes slides of known geometry for tests.
"""
from ._fetch import DataNotAvailableError, data_dir, fetch, get_registry
from ._loaders import (
    cmu1_small,
    hallmarks,
    tcga_blca,
    tcga_cdr,
    tcga_coadread,
    tcga_cohort,
    tcga_frozen_slide,
    tcga_tables,
    tile_bag,
)
from ._sample import SAMPLE_NAME, SAMPLE_SHA256, SAMPLE_URL, SYNTHETIC_SAMPLE_NAME, sample_slide
from ._synthetic import default_blobs, synthetic_slide, synthetic_truth, truth_mask
from ._spatial import her2st
def __getattr__(name):
    if name == "registry":  # a fresh DataFrame each time: callers may modify theirs
        return get_registry()
    raise AttributeError(f"module 'pathkit.datasets' has no attribute {name!r}")

__all__ = ["SAMPLE_NAME", "SAMPLE_SHA256", "SAMPLE_URL", "SYNTHETIC_SAMPLE_NAME", "DataNotAvailableError",
           "cmu1_small", "data_dir", "default_blobs", "fetch", "get_registry", "hallmarks", "registry",
           "sample_slide", "synthetic_slide", "synthetic_truth", "tcga_blca", "tcga_cdr", "tcga_coadread",
           "tcga_cohort", "tcga_frozen_slide", "tcga_tables", "tile_bag", "truth_mask", "her2st"]
