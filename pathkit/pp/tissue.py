"""Tissue detection: Otsu on a low-resolution image, as Prov-GigaPath's preprocessing does.

Prov-GigaPath (hi-ml's ``segment_foreground``) thresholds the luminance (mean of R, G, B) of a low-resolution
image with Otsu and calls everything darker tissue. pathkit does the same at a known scale (``mask_mpp``)
and adds two guards that Otsu alone lacks, because Otsu always splits an image in two, even an empty one:

* the threshold is capped at ``max_luminance`` (background brighter than that is never tissue), and
* when the two Otsu classes differ by less than ``min_contrast`` grey levels, there is nothing to separate:
  no tissue;
* when the brighter Otsu class is darker than ``min_glass`` it is not glass but lighter tissue (a slide or
  patch covered with tissue): everything below ``max_luminance`` is tissue.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from ._morphology import _clean, _drop_small  # noqa: F401  (_drop_small: tested here)
from ._tissue_mask import TissueMask

# Background of brightfield scans is ~235-250; tissue (even pale stroma) is darker than this.
MAX_LUMINANCE = 230.0
# Otsu classes closer than this (grey levels) are noise on an empty background, not tissue vs glass.
MIN_CONTRAST = 20.0
# The brighter Otsu class is glass only if its mean is at least this bright.
MIN_GLASS = 200.0
# Closing radius (mask px) that joins the speckle of pale tissue: per-pixel Otsu leaves holes between
# nuclei and in pale stroma; a 5-px closing lifts IoU with histolab's tile masks from 0.72/0.57 to 0.82/0.90.
DESPECKLE_PX = 5
# find_tissue's closing radius in um (2 mask px at the default 8 um/px).
DESPECKLE_UM = 16.0
# Holes smaller than this (um^2, about 100 x 100 um: lumens, fat cells, tears) are filled in find_tissue.
FILL_HOLES_UM2 = 10_000.0
# Islands smaller than this (um^2, about 22 x 22 um: dust, ink dots) are dropped in find_tissue.
MIN_OBJECT_UM2 = 500.0


def luminance(img: np.ndarray) -> np.ndarray:
    """Mean of the R, G, B channels (float32, 0-255), Prov-GigaPath's luminance."""
    img = np.asarray(img)
    if img.ndim == 2:
        return img.astype(np.float32)
    return img[..., :3].astype(np.float32).mean(axis=-1)


def _otsu_from_hist(counts: np.ndarray, centers: np.ndarray, max_luminance: float, min_contrast: float,
                    min_glass: float | None) -> float:
    """Otsu (skimage) on a histogram of luminance, then pathkit's guards. Returns a cut ``t`` such that
    tissue is ``luminance < t``; ``-inf`` when there is nothing to separate."""
    from skimage.filters import threshold_otsu

    nz = np.flatnonzero(counts)
    if nz.size < 2:
        return -math.inf
    counts, centers = counts[nz[0]:nz[-1] + 1], centers[nz[0]:nz[-1] + 1]
    split = float(threshold_otsu(hist=(counts, centers)))
    k = int(np.searchsorted(centers, split, side="right"))  # classes: centers[:k] (<= split), centers[k:]
    dark_n, light_n = counts[:k].sum(), counts[k:].sum()
    if dark_n == 0 or light_n == 0:
        return -math.inf
    dark_mean = float((counts[:k] * centers[:k]).sum() / dark_n)
    light_mean = float((counts[k:] * centers[k:]).sum() / light_n)
    if min_glass is not None and light_mean < min_glass:
        return float(max_luminance)
    if light_mean - dark_mean < min_contrast:
        return -math.inf
    cut = float((centers[k - 1] + centers[k]) / 2)  # between the two classes
    return min(cut, float(max_luminance))


def otsu_threshold(lum: np.ndarray, *, max_luminance: float = MAX_LUMINANCE,
                   min_contrast: float = MIN_CONTRAST, min_glass: float | None = MIN_GLASS) -> float:
    """Otsu threshold of a luminance array (256-bin histogram) with pathkit's guards; tissue is
    ``lum < threshold``; ``-inf`` when there is no tissue to separate."""
    values = np.asarray(lum, dtype=np.float32).ravel()
    if values.size == 0:
        return -math.inf
    counts, edges = np.histogram(values, bins=256)
    return _otsu_from_hist(counts, (edges[:-1] + edges[1:]) / 2, max_luminance, min_contrast, min_glass)


def _rgb_sum(img: np.ndarray) -> np.ndarray:
    """R + G + B as uint16 (3 x Prov-GigaPath's luminance, exact and cheap for uint8 images)."""
    img = np.asarray(img)
    if img.ndim == 2:
        return img.astype(np.uint16) * 3
    out = img[..., 0].astype(np.uint16)  # in-place adds: ~6x faster than .sum(axis=-1) over the channel axis
    out += img[..., 1]
    out += img[..., 2]
    return out


def _dark_threshold(sum3: np.ndarray, max_luminance: float, min_contrast: float,
                    min_glass: float | None) -> float:
    """Otsu on the exact histogram of uint8 luminance (values k / 3), with the guards."""
    counts = np.bincount(sum3.ravel(), minlength=766)
    return _otsu_from_hist(counts, np.arange(counts.size) / 3.0, max_luminance, min_contrast, min_glass)


class RGBMask(tuple):
    """``(mask, threshold)`` of :func:`tissue_mask_from_rgb`, with what pen removal took out:
    ``.pen_mask`` (H x W bool, ink pixels) and ``.pen`` (share of the image that is ink)."""

    def __new__(cls, mask, threshold, pen_mask):
        obj = super().__new__(cls, (mask, threshold))
        obj.pen_mask = pen_mask
        obj.pen = float(pen_mask.mean()) if pen_mask.size else 0.0
        return obj

    @property
    def mask(self) -> np.ndarray:
        return self[0]

    @property
    def threshold(self) -> float:
        return self[1]


def _check_rgb(img, what: str) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"{what} needs a uint8 RGB image, got {img.dtype}")
    if img.ndim == 3 and img.shape[-1] == 4:
        alpha = img[..., 3]
        if (alpha < 255).any():
            raise ValueError(f"{what}: the RGBA image has transparent pixels ({(alpha < 255).mean():.1%}); "
                             "composite it on white first, e.g. Image.alpha_composite(white, img).convert('RGB')")
        img = img[..., :3]
    if img.ndim == 2:
        return np.repeat(img[..., None], 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"{what} needs an H x W x 3 RGB image (or H x W grey), got shape {img.shape}")
    return img


def _segment_dark(img: np.ndarray, inside: tuple[int, int] | None, threshold: float | None, *, pen,
                  px_um: float | None, despeckle_px: int, fill_holes_um2: float, min_object_um2: float,
                  max_luminance: float, min_contrast: float, min_glass: float | None):
    """The one code path of brightfield tissue detection (find_tissue and tissue_mask_from_rgb):
    pen ink -> Otsu on the non-ink pixels inside the image -> tissue = dark and not ink -> closing of
    ``despeckle_px`` -> holes filled / islands dropped by area. Returns (mask, threshold, pen_mask)."""
    sum3 = _rgb_sum(img)
    ih, iw = inside if inside is not None else sum3.shape
    if pen:
        from ._pen import pen_mask as _pen_mask
        from ._pen import smooth_ink_mask

        colours = tuple(pen) if not isinstance(pen, bool) else ("red", "green", "blue", "black", "smooth")
        ink = _pen_mask(img, tuple(c for c in colours if c != "smooth"))
        if "smooth" in colours:  # blurred / dark violet ink: uniform texture (see _pen.smooth_ink_mask)
            ink |= smooth_ink_mask(img)
    else:
        ink = np.zeros(sum3.shape, bool)
    if threshold is None:
        counts = np.bincount(sum3[:ih, :iw].ravel(), minlength=766)
        if pen and ink.any():  # Otsu separates tissue from glass, ink is neither
            counts = counts - np.bincount(sum3[:ih, :iw][ink[:ih, :iw]], minlength=766)
        thr = _otsu_from_hist(counts, np.arange(counts.size) / 3.0, max_luminance, min_contrast, min_glass)
    else:
        thr = float(threshold)
    mask = sum3 < 3 * thr
    if ink.any():
        mask &= ~ink
    mask = _clean(mask, despeckle_px, fill_holes_um2, min_object_um2, px_um)
    if ink.any():  # closing and hole filling must not put the ink back
        mask &= ~ink
    return mask, thr, ink


def tissue_mask_from_rgb(img: np.ndarray, threshold: float | None = None, *, pen=True,
                         mpp: float | None = None, despeckle_px: int = DESPECKLE_PX,
                         fill_holes_um2: float = 0.0, min_object_um2: float = 0.0,
                         max_luminance: float = MAX_LUMINANCE,
                         min_contrast: float = MIN_CONTRAST,
                         min_glass: float | None = MIN_GLASS) -> RGBMask:
    """The tissue logic of :func:`find_tissue` on a uint8 RGB array: ``(mask, threshold)``.

    ``mask`` is True where the luminance (mean of R, G, B) is below the threshold (Otsu with guards on the
    pixels that are not pen ink, unless `threshold` is given), minus pen ink, closed with a disc of
    `despeckle_px` pixels (pale tissue is speckled at the pixel scale), then cleaned by area. Useful on a
    single patch: ``mask.mean()`` is its tissue fraction.

    Parameters
    ----------
    img
        uint8 RGB (H x W x 3), grey (H x W) or opaque RGBA.
    threshold
        Luminance cut (0-255); default Otsu with guards.
    pen
        True (default): red, green, blue and black ink, and ``"smooth"`` ink (blurred or dark blue-violet
        strokes told by their uniform texture), are not tissue; False keeps them; or a tuple of colours,
        e.g. ``("green", "blue")``. Ignored for a grey image (ink is told by its colour).
    mpp
        um per pixel of `img`; needed only for the areas below.
    despeckle_px
        Radius (px) of the closing; 0 turns it off.
    fill_holes_um2, min_object_um2
        Fill holes / drop pieces smaller than this area (um^2); 0 turns it off.

    Returns
    -------
    RGBMask
        A ``(mask, threshold)`` tuple with ``.pen_mask`` and ``.pen`` (share of the image that is ink).
    """
    grey = np.asarray(img).ndim == 2  # ink is told by its colour: none in a grey image
    img = _check_rgb(img, "tissue_mask_from_rgb")
    mask, thr, ink = _segment_dark(img, None, threshold, pen=False if grey else pen, px_um=mpp,
                                   despeckle_px=despeckle_px,
                                   fill_holes_um2=fill_holes_um2, min_object_um2=min_object_um2,
                                   max_luminance=max_luminance, min_contrast=min_contrast, min_glass=min_glass)
    return RGBMask(mask, thr, ink)


def find_tissue(slide, mask_mpp: float = 8.0, *, method: str = "otsu", threshold: float | None = None, pen=True,
                despeckle_um: float = DESPECKLE_UM, fill_holes_um2: float | None = None,
                min_object_um2: float | None = None, foreground: str = "auto",
                max_luminance: float = MAX_LUMINANCE, min_contrast: float = MIN_CONTRAST,
                min_glass: float | None = MIN_GLASS, weights=None, device="auto", dtype="auto",
                batch_size: int = 4, progress: bool = True) -> TissueMask:
    """Find tissue: Otsu on the luminance of a low-resolution image of the whole slide (default), or a deep
    segmenter of the registry (``method="hest"``, ``"grandqc"``); pen ink removed.

    Parameters
    ----------
    slide
        A :class:`~pathkit.slide.Slide` or a path.
    mask_mpp
        Resolution of the mask in um per pixel (8 = 1/16 of a 0.5-mpp scan). The image is area-averaged
        from the coarsest pyramid level at least that fine.
    method
        "otsu" (default, offline, no weights), or a segmenter of ``pathkit.models.segmenters``: "hest"
        (DeepLabV3 of HEST, 1 um/px) or "grandqc" (GrandQC's UNet++, 10 um/px). A deep segmenter runs on
        512-px patches at its own resolution; a mask pixel is tissue when at least half its area is (see
        docs/qc.md). Only `pen`, `fill_holes_um2` and `min_object_um2` apply to it, not the Otsu settings.
    threshold
        Luminance cut (0-255); default Otsu with the guards described in the module docstring. For a deep
        method: the cut on the tissue probability (default the entry's, 0.5; TRIDENT suggests 0.4 to keep
        more tissue).
    pen
        True (default): red, green, blue and black pen ink is not tissue (colour rules in CIELAB, see
        ``pathkit.pp._pen``; brown DAB is kept), nor is ``"smooth"`` ink (blurred or dark blue-violet strokes
        told by their uniform texture); False keeps ink; or a tuple of colours.
    despeckle_um
        Radius (um) of a closing that joins the speckle of pale tissue (rounded to mask px; 0: off).
    fill_holes_um2
        Fill holes in the tissue smaller than this area (Otsu default 10,000 um^2, about 100 x 100 um; deep
        methods: 0, their masks are used as the model made them); 0: off.
    min_object_um2
        Remove connected tissue pieces smaller than this area (Otsu default 500 um^2, about 22 x 22 um: dust,
        ink dots; deep methods: 0); 0 keeps everything. Areas are physical, so the same values work at any
        `mask_mpp`.
    foreground
        "dark" (brightfield: tissue is darker than the glass), "bright" (fluorescence read with
        ``allow_non_brightfield=True``: tissue is brighter than a dark background) or "auto" (bright when
        the median luminance is below 80).
    max_luminance, min_contrast, min_glass
        The Otsu guards (module docstring).
    weights, device, dtype, batch_size, progress
        Deep methods only: weights (None: the registry entry's hub file; a local file; "random" for tests),
        device and autocast dtype ("auto", see ``pathkit._device``), patches per batch, a progress bar.

    Returns
    -------
    TissueMask
        With ``.mask``, ``.downsample``, ``.threshold``, ``.fraction``, ``.pen`` (ink share of the slide)
        and ``.pen_mask``. A slide without tissue gives an empty mask and a warning.
    """
    from ..slide import read_slide

    if method != "otsu":
        from ._segment import find_tissue_deep

        return find_tissue_deep(slide, method, mask_mpp=mask_mpp, pen=pen, threshold=threshold, weights=weights,
                                device=device,
                                dtype=dtype, batch_size=batch_size, progress=progress,
                                fill_holes_um2=fill_holes_um2 or 0.0, min_object_um2=min_object_um2 or 0.0)
    fill_holes_um2 = FILL_HOLES_UM2 if fill_holes_um2 is None else fill_holes_um2
    min_object_um2 = MIN_OBJECT_UM2 if min_object_um2 is None else min_object_um2
    slide = read_slide(slide)
    if mask_mpp <= 0:
        raise ValueError(f"mask_mpp must be positive, got {mask_mpp}")
    w, h = slide.dimensions
    d = max(1.0, mask_mpp / slide.mpp)
    px_um = d * slide.mpp
    mw, mh = max(1, math.ceil(w / d)), max(1, math.ceil(h / d))
    img = slide.read_level0_box((0.0, 0.0, mw * d, mh * d), (mw, mh))
    # Otsu on pixels inside the image only: the white padding of the last row/column is not glass.
    ih, iw = max(1, int(h // d)), max(1, int(w // d))
    if foreground == "auto":
        probe = img[:ih:max(1, ih // 256), :iw:max(1, iw // 256)]
        foreground = "bright" if float(np.median(_rgb_sum(probe))) < 3 * 80 else "dark"
    ink = None
    if foreground == "dark":
        mask, thr, ink = _segment_dark(img, (ih, iw), threshold, pen=pen, px_um=px_um,
                                       despeckle_px=round(despeckle_um / px_um) if despeckle_um else 0,
                                       fill_holes_um2=fill_holes_um2, min_object_um2=min_object_um2,
                                       max_luminance=max_luminance, min_contrast=min_contrast,
                                       min_glass=min_glass)
    elif foreground == "bright":
        sum3 = _rgb_sum(img)
        inside = sum3[:ih, :iw]
        # dark-background images: Otsu on the inverted luminance; the glass cap does not apply; no ink
        if threshold is None:
            inv = _dark_threshold(765 - inside, math.inf, min_contrast, None)
            thr = 255.0 - inv
        else:
            thr = float(threshold)
        mask = sum3 > 3 * thr
        mask[int(h // d):, :] = False  # the white padding is not tissue
        mask[:, int(w // d):] = False
        mask = _clean(mask, 0, 0.0, min_object_um2, px_um)
    else:
        raise ValueError(f"foreground must be 'auto', 'dark' or 'bright', got {foreground!r}")
    del img
    tm = TissueMask(mask=mask, downsample=float(d), threshold=float(thr), mpp=float(px_um),
                    slide_id=slide.slide_id, slide_dimensions=(int(w), int(h)),
                    pen_mask=ink if ink is not None and ink.any() else None)
    tm.fraction = float(tm.area_fraction(0, 0, w, h))
    tm.pen = float(tm.pen_fraction(0, 0, w, h))
    if not mask.any():
        warnings.warn(f"{slide.slide_id}: no tissue found (Otsu found no dark foreground at {mask_mpp:g} um/px"
                      f"{'' if threshold is None else f' below threshold {threshold:g}'}); the mask is empty",
                      stacklevel=2)
    return tm


def mask_for(slide, tissue=None) -> TissueMask:
    """The tissue mask to use for `slide`: ``find_tissue(slide)`` when None, else `tissue`, checked to be a
    :class:`TissueMask` made for a slide of the same dimensions."""
    if tissue is None:
        return find_tissue(slide)
    if not isinstance(tissue, TissueMask):
        raise TypeError(f"tissue must be a TissueMask from pk.pp.find_tissue, got {type(tissue).__name__}")
    if tissue.slide_dimensions is not None and tuple(tissue.slide_dimensions) != tuple(slide.dimensions):
        raise ValueError(f"the tissue mask was made for a {tissue.slide_dimensions} slide "
                         f"({tissue.slide_id}), not {slide.slide_id} {slide.dimensions}")
    return tissue
