"""The tissue mask at a known scale that every tissue method returns (Otsu and the deep segmenters), and the
exact per-box area fractions that tiling and QC read from it."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class TissueMask:
    """A boolean tissue mask at a known scale.

    ``mask`` (H x W bool), ``downsample`` (level-0 px per mask px), ``threshold`` (luminance cut),
    ``fraction`` (tissue share of the slide area), ``mpp`` (um per mask px), ``slide_id``,
    ``pen`` (share of the slide area that is pen ink, removed from the mask), ``pen_mask`` (the ink) and
    ``method`` (what made it: "otsu" or a segmenter's name; ``threshold`` is then its probability cut).
    Mask pixel (i, j) covers level-0 ``[j*d, (j+1)*d) x [i*d, (i+1)*d)`` with ``d = downsample``.
    """

    mask: np.ndarray
    downsample: float
    threshold: float
    fraction: float = 0.0
    mpp: float | None = None
    slide_id: str | None = None
    slide_dimensions: tuple[int, int] | None = None
    pen: float = 0.0
    pen_mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    method: str = "otsu"
    _integral: np.ndarray | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.mask = np.asarray(self.mask)
        if self.mask.ndim != 2:
            raise ValueError(f"TissueMask.mask must be a 2-D (H x W) array, got shape {self.mask.shape}")
        self.mask = self.mask.astype(bool, copy=False)
        if self.pen_mask is not None and np.shape(self.pen_mask) != self.mask.shape:
            raise ValueError(f"TissueMask.pen_mask has shape {np.shape(self.pen_mask)}, the mask {self.mask.shape}: "
                             "they must cover the same pixels")

    def __repr__(self):
        h, w = self.mask.shape
        return (f"TissueMask({self.slide_id!r}, {w}x{h} px at {self.downsample:.4g}x, "
                f"threshold={self.threshold:.1f}, fraction={self.fraction:.3f}, pen={self.pen:.3f})")

    def pen_fraction(self, x0, y0, x1, y1) -> np.ndarray:
        """Share of each level-0 box covered by pen ink (0 where no ink was looked for)."""
        if self.pen_mask is None or not self.pen_mask.any():
            return np.zeros(np.broadcast(np.asarray(x0), np.asarray(y0)).shape)
        return TissueMask(self.pen_mask, self.downsample, self.threshold).area_fraction(x0, y0, x1, y1)

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
