"""Per-tile quality control: pen share, focus (variance of the Laplacian) and a pass flag.

Defaults and why:

* ``max_pen=0.05``: a tile with more than 5 % of its area under pen ink is dropped. Ink is drawn by
  pathologists around regions; a tile that touches a stroke carries the ink's colour into its embedding
  (measured: a green stroke moves a tile far from its H&E neighbours), while 5 % tolerates the soft edge of a
  stroke that the colour rules catch in scattered pixels.
* ``min_focus=100``: variance of the Laplacian of the grey tile (ITU-R 601 luma, 0-255) at the tile's own
  resolution. On CMU-1 (0.5 mpp, 256 px) the least sharp tissue tile scores 304, median 1365; the same
  tiles blurred with a Gaussian of sigma 2 px (1 um) score at most 52. 100 sits between the two. The score
  depends on the resolution: tiles at 1 or 2 mpp have more detail per pixel and score higher, so keep the
  default only for 0.25-1 mpp and check ``tiles.obs["focus"]`` on a new scanner.
* ``min_tissue``: the tiling's own ``tile_spec["min_tissue"]`` (tiles below it are not made), so qc_pass
  only adds pen and focus to what tiling already did, unless you ask for more.
"""
from __future__ import annotations

import math

import numpy as np

MAX_PEN = 0.05
MIN_FOCUS = 100.0
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def focus_score(tile: np.ndarray) -> float:
    """Variance of the Laplacian (4-neighbour, scipy.ndimage.laplace) of the grey image of a uint8 RGB tile."""
    from scipy import ndimage as ndi

    tile = np.asarray(tile)
    grey = tile[..., :3].astype(np.float32) @ _LUMA if tile.ndim == 3 else tile.astype(np.float32)
    return float(ndi.laplace(grey).var())


def _spec(tiles) -> dict:
    from ..errors import TableError

    spec = tiles.uns.get("tile_spec") if hasattr(tiles, "uns") else None
    if not spec:
        raise TableError("tiles.uns['tile_spec'] is missing: make the tiles with pk.pp.tile(slide)")
    for col in ("x", "y"):
        if col not in tiles.obs:
            raise TableError(f"tiles.obs lacks column {col!r}: make the tiles with pk.pp.tile(slide)")
    return spec


def tile_qc(tiles, slide=None, *, tissue=None, focus: bool = True, max_pen: float = MAX_PEN,
            min_focus: float = MIN_FOCUS, min_tissue: float | None = None, progress: bool = False,
            copy: bool = False):
    """Score each tile for pen ink and focus and flag the tiles that pass.

    Parameters
    ----------
    tiles
        AnnData of :func:`pathkit.pp.tile` (obs ``x``, ``y``; uns ``tile_spec``, ``slide``).
    slide
        The slide (or its path); default ``tiles.uns["slide"]["path"]``.
    tissue
        The :class:`~pathkit.pp.tissue.TissueMask` the tiles were cut with; default ``find_tissue(slide)``.
    focus
        Read every tile (``slide.read_tile`` at the tiling's mpp) and score its focus. This reads all pixels
        (about 4 ms a tile on a local SVS, as much I/O as embedding): False writes NaN and the flag ignores it.
    max_pen, min_focus, min_tissue
        Thresholds of the flag (module docstring for the defaults). ``min_tissue=None`` uses the tiling's.
    progress
        Show a progress bar while reading tiles.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    None, or an AnnData when ``copy=True``. Sets the following fields:

    ``obs["pen"]`` (float)
        Share of the tile footprint under pen ink (exact area overlap with ``tissue.pen_mask``).
    ``obs["focus"]`` (float)
        Variance of the Laplacian of the grey tile; NaN when ``focus=False``.
    ``obs["qc_pass"]`` (bool)
        tissue >= min_tissue, pen <= max_pen and (when scored) focus >= min_focus.
    ``uns["qc"]`` (dict)
        ``tissue_area_mm2``, ``pen_area_mm2``, ``n_tiles``, ``n_pass``, ``n_dropped``, ``dropped`` (count per
        reason: ``tissue``, ``pen``, ``focus``; a tile can fail several), and the thresholds used.
    """
    from .tissue import mask_for

    adata = tiles.copy() if copy else tiles
    spec = _spec(adata)
    if not 0 <= max_pen <= 1:
        raise ValueError(f"max_pen is a share of the tile in [0, 1], got {max_pen}")
    from ..slide import slide_of_tiles

    slide = slide_of_tiles(adata, slide)
    tissue = mask_for(slide, tissue)
    x = adata.obs["x"].to_numpy(np.float64)
    y = adata.obs["y"].to_numpy(np.float64)
    size = float(spec["size_level0"])
    pen = tissue.pen_fraction(x, y, x + size, y + size) if len(x) else np.zeros(0)
    if "tissue" in adata.obs:
        tis = adata.obs["tissue"].to_numpy(np.float64)
    else:
        tis = tissue.area_fraction(x, y, x + size, y + size) if len(x) else np.zeros(0)
        adata.obs["tissue"] = tis
    foc = np.full(len(x), np.nan)
    if focus and len(x):
        from .._progress import progress_bar

        tile_px, mpp = int(spec["tile_px"]), float(spec["mpp"])
        for i in progress_bar(range(len(x)), desc="focus", disable=not progress):
            foc[i] = focus_score(slide.read_tile(int(x[i]), int(y[i]), tile_px, mpp))
    mt = float(spec.get("min_tissue", 0.0)) if min_tissue is None else float(min_tissue)
    bad_tissue = tis < mt - 1e-9
    bad_pen = pen > max_pen + 1e-12
    bad_focus = foc < min_focus if focus else np.zeros(len(x), bool)
    ok = ~(bad_tissue | bad_pen | bad_focus)
    adata.obs["pen"] = pen.astype(np.float64)
    adata.obs["focus"] = foc
    adata.obs["qc_pass"] = np.asarray(ok, dtype=bool)
    w, h = slide.dimensions
    area0_mm2 = w * h * slide.mpp ** 2 / 1e6
    from .._io import h5ad_safe

    adata.uns["qc"] = h5ad_safe({
        "tissue_area_mm2": float(tissue.fraction * area0_mm2),
        "pen_area_mm2": float(tissue.pen * area0_mm2),
        "n_tiles": len(x),
        "n_pass": int(ok.sum()),
        "n_dropped": int((~ok).sum()),
        "dropped": {"tissue": int(bad_tissue.sum()), "pen": int(bad_pen.sum()), "focus": int(bad_focus.sum())},
        "min_tissue": mt,
        "max_pen": float(max_pen),
        "min_focus": float(min_focus) if focus else math.nan,
        "focus_scored": bool(focus),
        "mask_mpp": float(tissue.mpp) if tissue.mpp is not None else math.nan,
    })
    return adata if copy else None
