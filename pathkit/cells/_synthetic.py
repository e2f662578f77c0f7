"""Generated H&E-like images with nuclei of known number, size and position (the truth of the cell tests)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

# H&E-like colours (RGB): purple haematoxylin nuclei on pink eosin stroma, white glass
NUCLEUS_RGB = (40, 20, 90)
STROMA_RGB = (236, 168, 204)
GLASS_RGB = (244, 244, 246)


def synthetic_nuclei(width: int = 1024, height: int = 1024, mpp: float = 0.5, *, n: int = 60,
                     radius_um=(3.0, 5.5), aspect=(1.0, 1.6), touching_pairs: int = 6, border_cells: int = 6,
                     tile_px: int = 256, glass_corner: bool = True, noise: float = 6.0, random_state: int = 0):
    """An RGB image with elliptical nuclei and the table of their truth.

    Nuclei are ellipses (semi-axes in um drawn from `radius_um` and `aspect`, random orientation) on pink
    stroma; `touching_pairs` pairs of discs touch each other, `border_cells` nuclei sit across the lines of a
    `tile_px` grid (so that a tiler cuts them); no two other nuclei come closer than 2 um. A pixel is a nucleus
    when its centre lies in the ellipse, so the truth area is the pixel count.

    Returns
    -------
    rgb : numpy.ndarray
        (height, width, 3) uint8.
    truth : pandas.DataFrame
        One row per nucleus: ``x``, ``y`` (px, continuous: pixel (i, j) covers [j, j+1) x [i, i+1)),
        ``area_px`` (pixel count), ``area_um2``, ``kind`` ("single", "pair", "border").
    """
    rng = np.random.default_rng(random_state)
    r_lo, r_hi = (r / mpp for r in radius_um)
    shapes = []  # (cx, cy, a, b, theta, kind)

    def fits(cx, cy, rad, margin):
        for sx, sy, sa, _, _, _ in shapes:
            if np.hypot(cx - sx, cy - sy) < rad + sa + margin:
                return False
        return r_hi + 2 <= cx <= width - r_hi - 2 and r_hi + 2 <= cy <= height - r_hi - 2

    gap = 2.0 / mpp
    for _ in range(border_cells):  # centred on a grid line, so every tile grid cuts them
        for _try in range(200):
            r = rng.uniform(r_lo, r_hi)
            if rng.random() < 0.5:
                cx = tile_px * rng.integers(1, max(2, width // tile_px)) + rng.uniform(-0.3, 0.3) * r
                cy = rng.uniform(r_hi, height - r_hi)
            else:
                cx = rng.uniform(r_hi, width - r_hi)
                cy = tile_px * rng.integers(1, max(2, height // tile_px)) + rng.uniform(-0.3, 0.3) * r
            if fits(cx, cy, r, gap):
                shapes.append((cx, cy, r, r, 0.0, "border"))
                break
    for _ in range(touching_pairs):
        for _try in range(200):
            r1, r2 = rng.uniform(r_lo, r_hi, 2)
            cx, cy = rng.uniform(r_hi * 3, width - r_hi * 3), rng.uniform(r_hi * 3, height - r_hi * 3)
            ang = rng.uniform(0, np.pi)
            dx, dy = np.cos(ang) * (r1 + r2), np.sin(ang) * (r1 + r2)
            if fits(cx, cy, r1, gap) and fits(cx + dx, cy + dy, r2, gap) and \
                    np.hypot(dx, dy) >= r1 + r2 - 1e-9:
                shapes.append((cx, cy, r1, r1, 0.0, "pair"))
                shapes.append((cx + dx, cy + dy, r2, r2, 0.0, "pair"))
                break
    while len(shapes) < n:
        placed = False
        for _try in range(500):
            a = rng.uniform(r_lo, r_hi)
            b = a / rng.uniform(*aspect)
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            if fits(cx, cy, a, gap):
                shapes.append((cx, cy, a, b, rng.uniform(0, np.pi), "single"))
                placed = True
                break
        if not placed:
            break

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5
    label = np.zeros((height, width), np.int32)
    for k, (cx, cy, a, b, th, _) in enumerate(shapes, start=1):
        x0, x1 = int(max(0, cx - a - 2)), int(min(width, cx + a + 3))
        y0, y1 = int(max(0, cy - a - 2)), int(min(height, cy + a + 3))
        dx, dy = xx[y0:y1, x0:x1] - cx, yy[y0:y1, x0:x1] - cy
        u = dx * np.cos(th) + dy * np.sin(th)
        v = -dx * np.sin(th) + dy * np.cos(th)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1.0
        label[y0:y1, x0:x1][inside & (label[y0:y1, x0:x1] == 0)] = k

    rgb = np.empty((height, width, 3), np.float64)
    rgb[:] = STROMA_RGB
    if glass_corner:  # a glass corner without tissue nor nuclei (the tiler may drop it)
        gh, gw = height // 5, width // 5
        glass = np.zeros((height, width), bool)
        glass[:gh, :gw] = True
        glass &= label == 0
        rgb[glass] = GLASS_RGB
    rgb[label > 0] = NUCLEUS_RGB
    rgb += rng.normal(0, noise, rgb.shape)
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)

    counts = np.bincount(label.ravel(), minlength=len(shapes) + 1)[1:]
    truth = pd.DataFrame({"x": [s[0] for s in shapes], "y": [s[1] for s in shapes], "area_px": counts,
                          "kind": [s[5] for s in shapes]})
    truth["area_um2"] = truth["area_px"] * mpp ** 2
    return rgb, truth


def write_rgb_slide(path, rgb: np.ndarray, mpp: float, tile: int = 256):
    """Write an RGB array as a one-level Aperio-style tiled TIFF (lossless) that :func:`pathkit.read_slide`
    opens with `mpp`; returns the path."""
    import tifffile

    path = Path(path)
    h, w = rgb.shape[:2]
    desc = (f"Aperio Image Library v12.0.15 \r\n{w}x{h} ({tile}x{tile}) RAW/RGB|AppMag = 20|MPP = {mpp:.6g}"
            f"|Filename = {path.stem}|pathkit = generated nuclei")
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tifffile.TiffWriter(tmp) as tw:
        tw.write(rgb, photometric="rgb", compression="zlib", tile=(tile, tile), description=desc,
                 resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER", metadata=None)
        thumb = rgb[::8, ::8]
        tw.write(np.ascontiguousarray(thumb), photometric="rgb", compression="zlib", metadata=None,
                 description=f"Aperio Image Library v12.0.15 \r\n{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]}")
    os.replace(tmp, path)
    return path
