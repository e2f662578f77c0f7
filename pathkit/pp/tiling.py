"""Tiling: a grid of tiles at a target mpp, with the tissue share of each tile."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd


def grid_positions(length: int, size: float, stride: float) -> np.ndarray:
    """Level-0 starts (int64) of whole tiles of side `size` every `stride` px from 0 inside `length` px."""
    if size > length + 1e-6:
        return np.zeros(0, np.int64)
    n = math.floor((length - size) / stride + 1e-9) + 1
    pos = np.round(np.arange(n) * stride).astype(np.int64)
    return pos[pos + size <= length + 1e-6]


def tile(slide, tile_px: int = 256, mpp: float = 0.5, min_tissue: float = 0.1, overlap: int = 0,
         tissue=None) -> pd.DataFrame:
    """Cut the slide into a grid of square tiles at a target resolution and keep those with tissue.

    The grid starts at (0, 0); tiles are ``tile_px`` px at ``mpp`` um/px and step ``tile_px - overlap`` px;
    only tiles wholly inside the image are made. Pixels come from ``slide.best_level(mpp)``: when that
    level's mpp is within 1% of `mpp` tiles are read as they are (the footprint is ``tile_px`` level px),
    otherwise they are resized (e.g. a 0.25-mpp scan read at 0.5 mpp).

    Parameters
    ----------
    slide
        A :class:`~pathkit.slide.Slide` or a path.
    tile_px
        Tile side in pixels at the target mpp.
    mpp
        Target resolution in um/px.
    min_tissue
        Keep tiles whose tissue share is at least this (0 keeps every tile).
    overlap
        Pixels (at the target mpp) shared by neighbouring tiles.
    tissue
        A :class:`~pathkit.pp.tissue.TissueMask`; default ``find_tissue(slide)``.

    Returns
    -------
    pandas.DataFrame
        Columns ``x``, ``y`` (int64, level-0 px of each tile's top-left) and ``tissue`` (share of the tile
        footprint covered by the mask, exact area overlap), row-major order.
        ``df.attrs["tile_spec"]``: tile_px, mpp, overlap, level, downsample (of that level), slide_mpp,
        size_level0 and stride_level0 (level-0 px, floats), min_tissue, resized.
    """
    from ..slide import read_slide
    from .tissue import TissueMask, find_tissue

    slide = read_slide(slide)
    tile_px = int(tile_px)
    overlap = int(overlap)
    if tile_px <= 0:
        raise ValueError(f"tile_px must be positive, got {tile_px}")
    if not 0 <= overlap < tile_px:
        raise ValueError(f"overlap must be in [0, tile_px={tile_px}), got {overlap}")
    if mpp <= 0:
        raise ValueError(f"mpp must be positive, got {mpp}")
    if not 0 <= min_tissue <= 1:
        raise ValueError(f"min_tissue is a share of the tile in [0, 1], got {min_tissue}")
    if tissue is None:
        tissue = find_tissue(slide)
    elif not isinstance(tissue, TissueMask):
        raise TypeError(f"tissue must be a TissueMask from pk.pp.find_tissue, got {type(tissue).__name__}")
    if tissue.slide_dimensions is not None and tuple(tissue.slide_dimensions) != tuple(slide.dimensions):
        raise ValueError(f"the tissue mask was made for a {tissue.slide_dimensions} slide "
                         f"({tissue.slide_id}), not {slide.slide_id} {slide.dimensions}")

    level, eff_ds, resized = slide.tile_geometry(tile_px, mpp)
    size0 = tile_px * eff_ds
    stride0 = (tile_px - overlap) * eff_ds
    w, h = slide.dimensions
    xs = grid_positions(w, size0, stride0)
    ys = grid_positions(h, size0, stride0)
    gx, gy = np.meshgrid(xs, ys)
    gx, gy = gx.ravel(), gy.ravel()
    frac = tissue.area_fraction(gx, gy, gx + size0, gy + size0) if gx.size else np.zeros(0)
    # a tiny tolerance so that a tile exactly at the threshold is not lost to float rounding
    keep = frac >= min_tissue - 1e-9
    df = pd.DataFrame({"x": gx[keep].astype(np.int64), "y": gy[keep].astype(np.int64),
                       "tissue": frac[keep].astype(np.float64)})
    df.attrs["tile_spec"] = {
        "tile_px": tile_px,
        "mpp": float(mpp),
        "overlap": overlap,
        "level": int(level),
        "downsample": float(slide.level_downsamples[level]),
        "slide_mpp": float(slide.mpp),
        "size_level0": float(size0),
        "stride_level0": float(stride0),
        "min_tissue": float(min_tissue),
        "resized": bool(resized),
    }
    if df.empty:
        why = "the slide is smaller than one tile" if gx.size == 0 else \
            f"no tile has a tissue share >= {min_tissue:g}"
        warnings.warn(f"{slide.slide_id}: no tiles ({why})", stacklevel=2)
    return df
