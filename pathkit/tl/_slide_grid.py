"""Slide encoders on a grid of whole tiles (TITAN): each tile of a fixed size and mpp is one grid cell, found
from its level-0 coordinates and the tile step. Used by :func:`pathkit.tl.embed_slide` for registry entries
whose ``arch`` is in ``slide_embed.GRID_ENCODERS``."""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import GridError
from ._slide_common import (
    _check_dim,
    _check_tile_model,
    _level0_xy,
    _slide_id,
    _store,
    _tile_size_level0,
    check_tile_geometry,
)


def check_geometry(adata, spec) -> float:
    """Refuse tiles of another size / mpp than the entry's ``extra["tile_px"]`` / ``extra["mpp"]`` (or
    overlapping tiles); return the step between neighbouring tiles in level-0 px."""
    ts = dict(adata.uns.get("tile_spec") or {})
    redo = check_tile_geometry(adata, spec)
    sid = _slide_id(adata)
    if float(ts.get("overlap") or 0):
        raise GridError(f"{spec.name} places each tile in its own grid cell: slide {sid!r} has overlapping tiles "
                        f"(overlap={ts['overlap']}). {redo.replace(')', ', overlap=0)', 1)}")
    step = ts.get("stride_level0") or _tile_size_level0(ts)
    if step is None or not float(step) > 0:
        raise GridError(f"slide {sid!r}: the step between neighbouring tiles in level-0 px is unknown "
                        "(uns['tile_spec'] lacks stride_level0, size_level0 and slide_mpp). Set "
                        "tiles.uns['tile_spec']['slide_mpp'] (pk.io.read_h5_bag(..., slide_mpp=)) or "
                        "['stride_level0'] (TRIDENT's patch_size_level0), or: " + redo)
    return float(step)


def grid_cells(xy: np.ndarray, step: float) -> np.ndarray:
    """Level-0 top-left corners -> integer cells ``floor((xy - xy.min()) / step)``, the reference's floor
    division, after adding one level-0 pixel's worth of a cell.

    The guard absorbs the +-1 px of level-0 corners that pk.pp.tile rounds from a non-integer step (0.25 mpp
    * 2.02 ...), which a bare floor would drop into the cell before; on the reference's integer steps the two
    are the same, and a tile off the grid goes to the cell holding its corner, as in the reference."""
    rel = (xy - xy.min(axis=0)) / step
    cells = np.floor(rel + 1.0 / step)
    near = np.rint(rel)
    off = float(np.abs(rel - near).max()) if len(rel) else 0.0
    if off > 0.25:
        warnings.warn(f"tile coordinates are off a grid of {step:g} level-0 px by up to {off:.2f} of a tile: "
                      "the tiles are not the regular grid of pk.pp.tile; each goes to the cell holding its "
                      "top-left corner (floor, as the reference)", UserWarning, stacklevel=4)
    return cells.astype(np.int64)


def embed_grid(tile_adata, X, spec, loader, use_rep, key, weights, pool, layers, coords, device, dtype, info):
    import torch

    from .._device import autocast, dtype_name, resolve_device, resolve_dtype

    if layers not in (None, "last"):
        raise ValueError(f"{spec.name} returns one vector: use layers='last'")
    if pool not in ("mean", spec.pool):
        raise ValueError(f"{spec.name} pools with its own {spec.pool} pooler: pool={pool!r} does not apply "
                         "(leave the default)")
    if coords != "grid":
        raise ValueError(f"{spec.name} builds its own grid from the tile coordinates: use coords='grid'")
    _check_dim(tile_adata, X, spec.extra.get("in_chans"), spec.name)
    _check_tile_model(tile_adata, use_rep, spec.extra.get("tile_model"))
    step = check_geometry(tile_adata, spec)
    cells = grid_cells(_level0_xy(tile_adata), step)
    n_cells = len(np.unique(cells, axis=0))
    if n_cells < len(cells):
        warnings.warn(f"{len(cells) - n_cells} tile(s) share a grid cell with another tile: their features are "
                      f"summed, as {spec.name}'s reference does", UserWarning, stacklevel=3)
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    net, minfo = loader(spec, weights, dev)
    with torch.inference_mode(), autocast(dev, dt):
        vec = net(torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32), device=dev),
                  torch.as_tensor(cells, device=dev))
    info.update(model=spec.name, arch=spec.arch, weights=minfo.get("weights"),
                weights_sha256=minfo.get("weights_sha256"), pool=spec.pool, dtype=dtype_name(dt), device=str(dev),
                grid_step_level0=step, n_cells=int(n_cells))
    return _store(tile_adata, key or spec.name, vec.float().cpu().numpy().reshape(-1), info)
