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
from dataclasses import dataclass, field

import numpy as np

# Background of brightfield scans is ~235-250; tissue (even pale stroma) is darker than this.
MAX_LUMINANCE = 230.0
# Otsu classes closer than this (grey levels) are noise on an empty background, not tissue vs glass.
MIN_CONTRAST = 20.0
# The brighter Otsu class is glass only if its mean is at least this bright.
MIN_GLASS = 200.0


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
    return img[..., :3].sum(axis=-1, dtype=np.uint16)


def _dark_threshold(sum3: np.ndarray, max_luminance: float, min_contrast: float,
                    min_glass: float | None) -> float:
    """Otsu on the exact histogram of uint8 luminance (values k / 3), with the guards."""
    counts = np.bincount(sum3.ravel(), minlength=766)
    return _otsu_from_hist(counts, np.arange(counts.size) / 3.0, max_luminance, min_contrast, min_glass)


def tissue_mask_from_rgb(img: np.ndarray, threshold: float | None = None, *,
                         max_luminance: float = MAX_LUMINANCE,
                         min_contrast: float = MIN_CONTRAST,
                         min_glass: float | None = MIN_GLASS) -> tuple[np.ndarray, float]:
    """The tissue logic of :func:`find_tissue` on a uint8 RGB array: ``(mask, threshold)``.

    ``mask`` is True where the luminance (mean of R, G, B) is below the threshold (Otsu with guards unless
    `threshold` is given). Useful on a single patch: ``mask.mean()`` is its tissue fraction.
    """
    img = np.asarray(img)
    if img.dtype != np.uint8:
        raise TypeError(f"tissue_mask_from_rgb needs a uint8 RGB image, got {img.dtype}")
    sum3 = _rgb_sum(img)
    thr = _dark_threshold(sum3, max_luminance, min_contrast, min_glass) if threshold is None \
        else float(threshold)
    return sum3 < 3 * thr, thr


@dataclass
class TissueMask:
    """A boolean tissue mask at a known scale.

    ``mask`` (H x W bool), ``downsample`` (level-0 px per mask px), ``threshold`` (luminance cut),
    ``fraction`` (tissue share of the slide area), ``mpp`` (um per mask px), ``slide_id``.
    Mask pixel (i, j) covers level-0 ``[j*d, (j+1)*d) x [i*d, (i+1)*d)`` with ``d = downsample``.
    """

    mask: np.ndarray
    downsample: float
    threshold: float
    fraction: float = 0.0
    mpp: float | None = None
    slide_id: str | None = None
    slide_dimensions: tuple[int, int] | None = None
    _integral: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __repr__(self):
        h, w = self.mask.shape
        return (f"TissueMask({self.slide_id!r}, {w}x{h} px at {self.downsample:.4g}x, "
                f"threshold={self.threshold:.1f}, fraction={self.fraction:.3f})")

    def _cumulative(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Tissue area (mask px^2) in [0, u) x [0, v) (mask px, floats): the bilinear interpolation of the
        integral image, which is exact for a piecewise-constant mask."""
        if self._integral is None:
            h, w = self.mask.shape
            dtype = np.int32 if self.mask.size < 2 ** 31 else np.int64
            s = np.zeros((h + 1, w + 1), dtype)
            np.cumsum(np.cumsum(self.mask, axis=0, dtype=dtype), axis=1, out=s[1:, 1:])
            self._integral = s
        s = self._integral
        h, w = s.shape[0] - 1, s.shape[1] - 1
        u = np.clip(u, 0.0, w)
        v = np.clip(v, 0.0, h)
        j = np.minimum(np.floor(u).astype(np.int64), max(w - 1, 0))
        i = np.minimum(np.floor(v).astype(np.int64), max(h - 1, 0))
        fu, fv = u - j, v - i
        return (s[i, j] * (1 - fu) * (1 - fv) + s[i, j + 1] * fu * (1 - fv)
                + s[i + 1, j] * (1 - fu) * fv + s[i + 1, j + 1] * fu * fv)

    def area_fraction(self, x0, y0, x1, y1) -> np.ndarray:
        """Exact share of each level-0 box [x0, x1) x [y0, y1) covered by the mask (vectorised)."""
        d = self.downsample
        x0, y0, x1, y1 = (np.asarray(a, np.float64) / d for a in (x0, y0, x1, y1))
        area = (self._cumulative(x1, y1) - self._cumulative(x0, y1) - self._cumulative(x1, y0)
                + self._cumulative(x0, y0))
        box = (x1 - x0) * (y1 - y0)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = np.where(box > 0, area / box, 0.0)
        return np.clip(frac, 0.0, 1.0)


def find_tissue(slide, mask_mpp: float = 8.0, *, threshold: float | None = None,
                min_object_um2: float = 0.0, foreground: str = "auto",
                max_luminance: float = MAX_LUMINANCE, min_contrast: float = MIN_CONTRAST,
                min_glass: float | None = MIN_GLASS) -> TissueMask:
    """Find tissue: Otsu on the luminance of a low-resolution image of the whole slide.

    Parameters
    ----------
    slide
        A :class:`~pathkit.slide.Slide` or a path.
    mask_mpp
        Resolution of the mask in um per pixel (8 = 1/16 of a 0.5-mpp scan). The image is area-averaged
        from the coarsest pyramid level at least that fine.
    threshold
        Luminance cut (0-255); default Otsu with the guards described in the module docstring.
    min_object_um2
        Remove connected tissue pieces smaller than this area (dust, pen dots); 0 keeps everything.
    foreground
        "dark" (brightfield: tissue is darker than the glass), "bright" (fluorescence read with
        ``allow_non_brightfield=True``: tissue is brighter than a dark background) or "auto" (bright when
        the median luminance is below 80).
    max_luminance, min_contrast, min_glass
        The Otsu guards (module docstring).

    Returns
    -------
    TissueMask
        With ``.mask``, ``.downsample``, ``.threshold``, ``.fraction``. A slide without tissue gives an
        empty mask and a warning.
    """
    from ..slide import read_slide

    slide = read_slide(slide)
    if mask_mpp <= 0:
        raise ValueError(f"mask_mpp must be positive, got {mask_mpp}")
    w, h = slide.dimensions
    d = max(1.0, mask_mpp / slide.mpp)
    mw, mh = max(1, math.ceil(w / d)), max(1, math.ceil(h / d))
    img = slide.read_level0_box((0.0, 0.0, mw * d, mh * d), (mw, mh))
    sum3 = _rgb_sum(img)
    del img
    # Otsu on pixels inside the image only: the white padding of the last row/column is not glass.
    inside = sum3[: max(1, int(h // d)), : max(1, int(w // d))]
    if foreground == "auto":
        foreground = "bright" if float(np.median(inside[:: max(1, inside.shape[0] // 256),
                                                        :: max(1, inside.shape[1] // 256)])) < 3 * 80 else "dark"
    if foreground == "dark":
        thr = _dark_threshold(inside, max_luminance, min_contrast, min_glass) if threshold is None \
            else float(threshold)
        mask = sum3 < 3 * thr
    elif foreground == "bright":
        # dark-background images: Otsu on the inverted luminance; the glass cap does not apply
        if threshold is None:
            inv = _dark_threshold(765 - inside, math.inf, min_contrast, None)
            thr = 255.0 - inv
        else:
            thr = float(threshold)
        mask = sum3 > 3 * thr
        mask[int(h // d):, :] = False  # the white padding is not tissue
        mask[:, int(w // d):] = False
    else:
        raise ValueError(f"foreground must be 'auto', 'dark' or 'bright', got {foreground!r}")
    if min_object_um2 and mask.any():
        from skimage.morphology import remove_small_objects

        min_px = math.ceil(min_object_um2 / (d * slide.mpp) ** 2)
        if min_px > 1:
            mask = remove_small_objects(mask, min_size=min_px)
    tm = TissueMask(mask=mask, downsample=float(d), threshold=float(thr), mpp=float(d * slide.mpp),
                    slide_id=slide.slide_id, slide_dimensions=(int(w), int(h)))
    tm.fraction = float(tm.area_fraction(0, 0, w, h))
    if not mask.any():
        warnings.warn(f"{slide.slide_id}: no tissue found (Otsu found no dark foreground at {mask_mpp:g} um/px"
                      f"{'' if threshold is None else f' below threshold {threshold:g}'}); the mask is empty",
                      stacklevel=2)
    return tm
