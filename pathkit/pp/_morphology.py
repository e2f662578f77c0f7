"""Binary mask clean-up shared by the tissue detectors: closing, hole filling, small-piece removal."""
from __future__ import annotations

import math

import numpy as np


def _drop_small(mask: np.ndarray, min_px: int) -> np.ndarray:
    """`mask` without its 4-connected pieces of fewer than `min_px` pixels (skimage's remove_small_objects,
    connectivity 1, in one label and one bincount)."""
    from scipy import ndimage as ndi

    lab, n = ndi.label(mask)
    if n == 0:
        return mask
    keep = np.bincount(lab.ravel(), minlength=n + 1) >= min_px
    keep[0] = False
    if keep[1:].all():
        return mask
    return keep[lab]


def _clean(mask, despeckle_px: int, fill_holes_um2: float, min_object_um2: float, px_um: float | None):
    """Closing with a disc of radius `despeckle_px` (the image is mirrored at its edges), then holes
    smaller than `fill_holes_um2` filled and pieces smaller than `min_object_um2` dropped."""
    if not mask.any():
        return mask
    if despeckle_px and despeckle_px > 0:
        from scipy import ndimage as ndi
        from skimage.morphology import disk

        r = int(despeckle_px)
        padded = np.pad(mask, r + 1, mode="reflect")  # tissue cut by the image edge goes on beyond it
        closed = ndi.binary_closing(padded, structure=disk(r).astype(bool))
        mask = closed[r + 1:-(r + 1), r + 1:-(r + 1)] | mask
    if (fill_holes_um2 or min_object_um2) and px_um is None:
        raise ValueError("fill_holes_um2 / min_object_um2 are areas in um^2: pass mpp (um per pixel of the image)")
    if fill_holes_um2 and fill_holes_um2 > 0:
        px = math.ceil(fill_holes_um2 / px_um ** 2)
        if px > 1:
            mask = ~_drop_small(~mask, px)
    if min_object_um2 and min_object_um2 > 0:
        px = math.ceil(min_object_um2 / px_um ** 2)
        if px > 1:
            mask = _drop_small(mask, px)
    return mask
