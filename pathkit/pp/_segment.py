"""`find_tissue(method=<deep segmenter>)`: a registry tissue segmenter over a slide."""
from __future__ import annotations

import warnings

import numpy as np

from ._deep_tissue import load_segmenter, segment_slide, softmax
from ._morphology import _clean
from ._tissue_mask import TissueMask


def _ink(slide, d: float, shape, pen) -> np.ndarray | None:
    """Pen ink on the image at the mask grid (the colour rules of pathkit.pp._pen), or None."""
    if not pen:
        return None
    from ._pen import pen_mask

    mh, mw = shape
    img = slide.read_level0_box((0.0, 0.0, mw * d, mh * d), (mw, mh))
    ink = pen_mask(img, tuple(pen) if not isinstance(pen, bool) else ("red", "green", "blue", "black"))
    return ink if ink.any() else None


def find_tissue_deep(slide, method, *, mask_mpp: float = 8.0, pen=True, threshold=None, weights=None, device="auto",
                     dtype="auto", batch_size: int = 4, progress: bool = True,
                     min_object_um2: float = 0.0, fill_holes_um2: float = 0.0) -> TissueMask:
    """The body of ``find_tissue(slide, method=<segmenter>)`` (see there)."""
    from ..slide import read_slide

    slide = read_slide(slide)
    if mask_mpp <= 0:
        raise ValueError(f"mask_mpp must be positive, got {mask_mpp}")
    spec, model, device, dtype = load_segmenter(method, weights, device, dtype)
    if not spec.tissue_classes:
        raise ValueError(f"segmenter {spec.name!r} has no tissue classes")
    tissue = list(spec.tissue_classes)
    cut = float(spec.threshold if threshold is None else threshold)
    if not 0.0 <= cut < 1.0:
        raise ValueError(f"threshold is a probability cut in [0, 1) for method={spec.name!r}, got {threshold}")

    def values(lg, _gate):
        if lg is None:
            return np.zeros((1, spec.input_size, spec.input_size))
        return (softmax(lg)[tissue].sum(0) > cut)[None].astype(np.float64)

    frac, cov, d = segment_slide(slide, spec, model, device, dtype, mask_mpp=mask_mpp, values=values,
                                 n_values=1, batch_size=batch_size, progress=progress)
    mask = (frac[0] >= 0.5) & (cov > 0)
    px_um = d * slide.mpp
    mask = _clean(mask, 0, fill_holes_um2, min_object_um2, px_um)
    ink = _ink(slide, d, mask.shape, pen)
    if ink is not None:
        mask &= ~ink
    w, h = slide.dimensions
    tm = TissueMask(mask=mask, downsample=float(d), threshold=cut, mpp=float(px_um),
                    slide_id=slide.slide_id, slide_dimensions=(int(w), int(h)), pen_mask=ink, method=spec.name)
    tm.fraction = float(tm.area_fraction(0, 0, w, h))
    tm.pen = float(tm.pen_fraction(0, 0, w, h))
    if not mask.any():
        warnings.warn(f"{slide.slide_id}: the {spec.name} segmenter found no tissue; the mask is empty", stacklevel=3)
    return tm
