"""Pen-ink detection by colour rules in CIELAB (lightness L*, chroma C*, hue angle h).

Why these rules (measured on histolab's real pen fixtures and on H&E tiles, see docs/qc.md):

* H&E is pink to purple: hue 290-360 deg and 0-12 deg. Nothing stained with haematoxylin and eosin is
  green or blue, so **green and blue ink** are pixels with hue in [120, 285) deg and chroma >= 10.
* **Red ink** overlaps vivid eosin near hue 0-10 deg. It is a *seed* rule (hue 18-45 deg, chroma >= 45,
  L* >= 25: more orange-red than any eosin measured) grown by hysteresis into connected *loose* pixels
  (hue 6-45 deg, chroma >= 35), so that a stroke is removed whole but pink stroma without a seed is kept.
* **Black ink** is very dark and nearly grey (L* < 22, chroma < 20); dark nuclei are saturated purple
  (chroma 26-43 at L* < 30).
* **IHC brown (DAB)** has hue 45-90 deg: outside every ink rule (tested on DAB colours made with
  skimage's HED stain vectors).

Colour rules are applied through a lookup table over RGB quantised to 6 bits per channel (262,144 entries,
made once), so the per-pixel cost is an index computation and one gather.
"""
from __future__ import annotations

import functools

import numpy as np

RED_SEED, RED_LOOSE, GREEN, BLUE, BLACK = 1, 2, 4, 8, 16
COLOURS = {"red": RED_SEED | RED_LOOSE, "green": GREEN, "blue": BLUE, "black": BLACK}

# rule parameters (degrees for hue, CIELAB units for L* and C*)
GREEN_HUE = (120.0, 215.0)
BLUE_HUE = (215.0, 285.0)
MIN_CHROMA_GB = 10.0
RED_SEED_HUE = (18.0, 45.0)
RED_SEED_CHROMA = 45.0
RED_SEED_MIN_L = 25.0
RED_LOOSE_HUE = (6.0, 45.0)
RED_LOOSE_CHROMA = 35.0
BLACK_MAX_L = 22.0
BLACK_MAX_CHROMA = 20.0
MAX_INK_L = 92.0  # brighter than this is glass whatever its tint


def classify_lab(lab: np.ndarray) -> np.ndarray:
    """Ink class bits (uint8) of CIELAB values (..., 3)."""
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    c = np.hypot(a, b)
    h = np.degrees(np.arctan2(b, a)) % 360.0
    dim = L < MAX_INK_L
    out = np.zeros(L.shape, np.uint8)
    out |= np.where(dim & (c >= MIN_CHROMA_GB) & (h >= GREEN_HUE[0]) & (h < GREEN_HUE[1]), GREEN, 0).astype(np.uint8)
    out |= np.where(dim & (c >= MIN_CHROMA_GB) & (h >= BLUE_HUE[0]) & (h < BLUE_HUE[1]), BLUE, 0).astype(np.uint8)
    out |= np.where((c >= RED_SEED_CHROMA) & (L >= RED_SEED_MIN_L) & (h >= RED_SEED_HUE[0])
                    & (h < RED_SEED_HUE[1]), RED_SEED, 0).astype(np.uint8)
    out |= np.where(dim & (c >= RED_LOOSE_CHROMA) & (h >= RED_LOOSE_HUE[0]) & (h < RED_LOOSE_HUE[1]),
                    RED_LOOSE, 0).astype(np.uint8)
    out |= np.where((L < BLACK_MAX_L) & (c < BLACK_MAX_CHROMA), BLACK, 0).astype(np.uint8)
    return out


@functools.lru_cache(maxsize=1)
def _lut() -> np.ndarray:
    from skimage.color import rgb2lab

    q = (np.arange(64, dtype=np.float64) * 4 + 1.5) / 255.0
    r, g, b = np.meshgrid(q, q, q, indexing="ij")
    rgb = np.stack([r, g, b], axis=-1).reshape(-1, 1, 3)
    return classify_lab(rgb2lab(rgb)).reshape(-1)


_CHUNK_PX = 1 << 19  # pixels per chunk: the index array stays in cache


def _gather(img: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """``lut[index(rgb)]`` for every pixel (uint8, H x W), in row chunks to keep temporaries small."""
    img = np.asarray(img)
    h, w = img.shape[:2]
    out = np.empty((h, w), np.uint8)
    rows = max(1, _CHUNK_PX // max(w, 1))
    for r0 in range(0, h, rows):
        c = img[r0:r0 + rows]
        idx = (c[..., 0] >> 2).astype(np.uint32) << 12
        idx |= (c[..., 1] >> 2).astype(np.uint32) << 6
        idx |= c[..., 2] >> 2
        np.take(lut, idx, out=out[r0:r0 + rows])
    return out


def ink_codes(img: np.ndarray) -> np.ndarray:
    """Per-pixel ink class bits (uint8, H x W) of a uint8 RGB image."""
    return _gather(img, _lut())


@functools.lru_cache(maxsize=16)
def _selection_lut(bits: int) -> np.ndarray:
    """For the selected colours: bit 0 = ink that needs no growing, bit 1 = red seed, bit 2 = red loose."""
    codes = _lut()
    out = ((codes & (bits & ~(RED_SEED | RED_LOOSE))) > 0).astype(np.uint8)
    if bits & RED_SEED:
        out |= (((codes & RED_SEED) > 0).astype(np.uint8) << 1) | (((codes & RED_LOOSE) > 0).astype(np.uint8) << 2)
    return out


def pen_mask(img: np.ndarray, colours=("red", "green", "blue", "black")) -> np.ndarray:
    """Boolean mask of pen ink in a uint8 RGB image (H x W)."""
    bits = 0
    for c in colours:
        if c not in COLOURS:
            raise ValueError(f"pen colour {c!r} is not one of {sorted(COLOURS)}")
        bits |= COLOURS[c]
    codes = _gather(img, _selection_lut(bits))
    out = (codes & 1).view(bool)
    if bits & RED_SEED and (codes & 2).any():
        out |= _grow_red((codes & 2) > 0, (codes & 6) > 0)
    return out


def _grow_red(seed: np.ndarray, loose: np.ndarray) -> np.ndarray:
    """Loose red pixels connected (8-neighbourhood) to a seed red pixel; seeds themselves count."""
    rows = np.flatnonzero(loose.any(axis=1))
    cols = np.flatnonzero(loose.any(axis=0))
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    from scipy import ndimage as ndi

    lab, _ = ndi.label(loose[r0:r1, c0:c1], structure=np.ones((3, 3), bool))
    keep = np.zeros(lab.max() + 1, bool)
    keep[np.unique(lab[seed[r0:r1, c0:c1]])] = True
    keep[0] = False
    out = np.zeros_like(seed)
    out[r0:r1, c0:c1] = keep[lab]
    return out


# Out-of-focus or dark blue-violet ink passes the colour rules above: blurred ink is a mix of ink and glass, and
# dark violet ink has the hue and lightness of nuclei. What tells it from tissue is texture: a stroke is
# uniform over tens of pixels, where H&E (nuclei in stroma, even out of focus) is not. Measured on real H&E
# tiles (histolab's, Kather's, torchstain's, 224-512 px): < 0.5 % of their ink-coloured pixels have a local
# L* standard deviation below SMOOTH_MAX_SD in a SMOOTH_WINDOW window; on blurred ink over glass 10-13 %.
SMOOTH_WINDOW = 31  # px
SMOOTH_MAX_SD = 5.0  # L* units
# A thin stroke blurred by more than a few px is no longer uniform over 31 px (its cross-section is a ramp from
# ink to glass: L* standard deviation 8-20), but it has no fine grain. Grain = local RMS (SMOOTH_HP_WINDOW) of
# L* minus its Gaussian blur (sigma SMOOTH_HP_SIGMA). Ink-coloured pixels of strokes blurred at sigma 6-10 px:
# grain < 1 (99th percentile), at sigma 3 px < 2.6; of the real H&E tiles and slide images measured: > 1.1 on
# tiles, > 2.5 on images at 1-8 um/px (0.5th percentile), median 4-12. So a seed is a large piece of
# ink-coloured pixels that is uniform (sd) or grainless, and never grainy (a uniform patch of dark eosin or
# nuclei has grain > 3); it grows only through grainless pixels (a stroke's fringe), not into the tissue around.
SMOOTH_HP_SIGMA = 2.0  # px
SMOOTH_HP_WINDOW = 15  # px
SMOOTH_MAX_HP_SD = 1.0  # L* units: grainless
SMOOTH_MAX_GRAIN = 2.5  # L* units: seeds and the pixels they grow through have less grain than this
SMOOTH_GROW_PX = 30  # px: seeds grow this far into ink-coloured pixels (a blurred stroke's fringe)
SMOOTH_MIN_SEED_PX = 500  # smooth pieces smaller than this are not strokes


def smooth_ink_mask(img: np.ndarray) -> np.ndarray:
    """Ink told by texture (H x W bool): large pieces of ink-coloured pixels (dark blue-violet, or red) of
    uniform lightness or without fine grain (a blurred stroke), grown by up to ``SMOOTH_GROW_PX`` through the
    grainless ink-coloured pixels around them."""
    from scipy import ndimage as ndi
    from skimage.color import rgb2lab

    img = np.asarray(img)
    if min(img.shape[:2]) < SMOOTH_WINDOW:
        return np.zeros(img.shape[:2], bool)
    lab = rgb2lab(img)
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    c = np.hypot(a, b)
    h = np.degrees(np.arctan2(b, a)) % 360.0
    violet = (h >= 250) & (h < 345)
    red = (h < 45) | (h >= 345)
    seed_colour = (violet & (L < 40) & (c >= 12)) | (red & (c >= 45) & (L < 60))
    if not seed_colour.any():
        return np.zeros(img.shape[:2], bool)
    m = ndi.uniform_filter(L, SMOOTH_WINDOW, mode="reflect")
    sd = np.sqrt(np.maximum(ndi.uniform_filter(L * L, SMOOTH_WINDOW, mode="reflect") - m * m, 0))
    hp = L - ndi.gaussian_filter(L, SMOOTH_HP_SIGMA, mode="reflect")
    grain = np.sqrt(np.maximum(ndi.uniform_filter(hp * hp, SMOOTH_HP_WINDOW, mode="reflect"), 0))
    smooth = grain < SMOOTH_MAX_GRAIN
    # each kind of seed is a large piece on its own (merged, the two kinds made pieces of blurry tissue count)
    seed = _big(seed_colour & (sd < SMOOTH_MAX_SD) & smooth, SMOOTH_MIN_SEED_PX)
    seed |= _big(seed_colour & (grain < SMOOTH_MAX_HP_SD), SMOOTH_MIN_SEED_PX)
    if not seed.any():
        return seed
    loose = (violet | red) & (c >= 4) & (L < MAX_INK_L) & smooth
    return ndi.binary_dilation(seed, iterations=SMOOTH_GROW_PX, mask=loose | seed)


def _big(mask: np.ndarray, min_px: int) -> np.ndarray:
    """The connected pieces (4-neighbourhood) of `mask` with at least `min_px` pixels."""
    from scipy import ndimage as ndi

    if not mask.any():
        return mask
    lab_id, n = ndi.label(mask)
    keep = np.bincount(lab_id.ravel(), minlength=n + 1) >= min_px
    keep[0] = False
    return keep[lab_id]
