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


def tile(slide, tile_px: int = 256, mpp: float = 0.5, *, min_tissue: float = 0.1, overlap: int = 0,
         tissue=None, qc: bool = True, focus: bool = False):
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
    qc
        Score each tile with :func:`pathkit.pp.tile_qc` (pen share from the mask: free).
    focus
        Also read every tile to score its focus (variance of the Laplacian): about 4 ms a tile, as much
        I/O as embedding, hence off by default; ``pk.pp.tile_qc(tiles, slide)`` does it later.

    Returns
    -------
    anndata.AnnData
        One row per tile (n_tiles x 0: features come from :func:`pathkit.tl.embed_tiles`), row-major,
        obs_names ``"0".."n-1"``:

        ``obs["slide_id"]`` (categorical), ``obs["x"]``, ``obs["y"]`` (int64)
            The slide and the level-0 px of each tile's top-left corner.
        ``obs["tissue"]`` (float64)
            Share of the tile footprint covered by the tissue mask (exact area overlap).
        ``obsm["spatial"]`` (float64, n x 2)
            (x, y), as squidpy / LazySlide expect.
        ``uns["tile_spec"]``
            tile_px, mpp, overlap, level, downsample (of that level), slide_mpp, size_level0 and
            stride_level0 (level-0 px, floats), min_tissue, resized.
        ``uns["slide"]``
            :meth:`Slide.info` (path, slide_id, sha256, vendor, dimensions, mpp and its source).
        ``obs["pen"]``, ``obs["focus"]``, ``obs["qc_pass"]``, ``uns["qc"]``
            With ``qc=True``: see :func:`pathkit.pp.tile_qc`; ``tiles[tiles.obs.qc_pass]`` keeps the good
            tiles (focus is NaN and ignored unless ``focus=True``).

        Saved with ``tiles.write_h5ad(path)`` and read back with ``anndata.read_h5ad``.
    """
    from ..slide import read_slide
    from .tissue import mask_for

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
    tissue = mask_for(slide, tissue)

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
    xs, ys = gx[keep].astype(np.int64), gy[keep].astype(np.int64)
    tile_spec = {
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
    adata = tiles_anndata(slide, xs, ys, frac[keep].astype(np.float64), tile_spec)
    if qc:
        from ._qc import tile_qc

        tile_qc(adata, slide, tissue=tissue, focus=focus)
    if adata.n_obs == 0:
        why = "the slide is smaller than one tile" if gx.size == 0 else \
            f"no tile has a tissue share >= {min_tissue:g}"
        warnings.warn(f"{slide.slide_id}: no tiles ({why})", stacklevel=2)
    return adata


def tiles_anndata(slide, xs, ys, tissue, tile_spec: dict):
    """The tiles AnnData of :func:`tile` from tile coordinates (level-0 px) and their tissue shares."""
    import anndata as ad

    from .._io import h5ad_safe

    n = len(xs)
    obs = pd.DataFrame({
        "slide_id": pd.Categorical.from_codes(np.zeros(n, dtype=np.int8), categories=[slide.slide_id]),
        "x": np.asarray(xs, dtype=np.int64), "y": np.asarray(ys, dtype=np.int64),
        "tissue": np.asarray(tissue, dtype=np.float64),
    }, index=pd.Index([str(i) for i in range(n)]))
    adata = ad.AnnData(obs=obs)
    adata.obsm["spatial"] = np.stack([obs["x"].to_numpy(), obs["y"].to_numpy()], axis=1).astype(np.float64)
    adata.obsm["spatial"] = adata.obsm["spatial"].reshape(n, 2)
    adata.uns["tile_spec"] = h5ad_safe(dict(tile_spec))
    adata.uns["slide"] = h5ad_safe(slide.info())
    return adata
