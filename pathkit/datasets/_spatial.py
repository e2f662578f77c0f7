"""Spatial transcriptomics example data: her2st (Andersson et al. 2021), fetched with a checksum."""
from __future__ import annotations

from ._fetch import fetch

#: her2st JPEGs carry no mpp; the ST array's 200-um spot pitch spans 289-292 px in them (about 0.69 um/px)
HER2ST_MPP = 0.7


def her2st(section: str = "C2", *, mpp: float = HER2ST_MPP):
    """A HER2-positive breast cancer section of legacy Spatial Transcriptomics with its real H&E.

    Section C2 of patient C: 187 spots x 15,706 genes (raw UMIs; 100-um spots, 200 um apart) and the
    9274 x 9911 px H&E JPEG. The JPEG has no microns-per-pixel; ``mpp`` (default 0.7) comes from the spot
    pitch. Source: almaan/her2st (data CC BY 4.0, Zenodo 4751624), Andersson et al., Nat Commun 2021.

    Returns
    -------
    tuple
        ``(slide, spots)``: the :class:`~pathkit.slide.Slide` and the spots AnnData of
        :func:`pathkit.io.read_st`.
    """
    from ..slide import read_slide
    from ..spatial import read_st

    if section != "C2":
        raise ValueError(f"only section 'C2' is in the registry, not {section!r}")
    slide = read_slide(fetch("spatial/her2st/5714_HE_BT_C2.jpg"), mpp=mpp)
    spots = read_st(fetch("spatial/her2st/C2.tsv.gz"), fetch("spatial/her2st/C2_selection.tsv"), image=slide,
                    library_id=section)
    return slide, spots
