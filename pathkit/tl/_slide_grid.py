"""Slide encoders on a grid of whole tiles (TITAN): each tile of a fixed size and mpp is one grid cell, found
from its level-0 coordinates and the tile step. Used by :func:`pathkit.tl.embed_slide` for registry entries
whose ``arch`` is in ``slide_embed.GRID_ENCODERS``."""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import GridError

MPP_TOLERANCE = 0.1  # relative: "0.5 mpp" accepts 0.45..0.55 (scanners' 20x vary around 0.5)


def check_geometry(adata, spec) -> float:
    """Refuse tiles of another size / mpp than the entry's ``extra["tile_px"]`` / ``extra["mpp"]`` (or
    overlapping tiles); return the step between neighbouring tiles in level-0 px."""
    from .slide_embed import _slide_id, _tile_size_level0

    want_px, want_mpp = spec.extra.get("tile_px"), spec.extra.get("mpp")
    ts = dict(adata.uns.get("tile_spec") or {})
    tile_model = spec.extra.get("tile_model") or "the tile model"
    redo = (f"Tile the slide with pk.pp.tile(slide, tile_px={want_px}, mpp={want_mpp}) and embed the tiles with "
            f"pk.tl.embed_tiles(tiles, slide, {tile_model!r}).")
    sid = _slide_id(adata)
    if want_px is not None and want_mpp is not None:
        if ts.get("tile_px") is None or ts.get("mpp") is None:
            raise GridError(
                f"{spec.name} takes {want_px}-px tiles at {want_mpp} mpp; slide {sid!r} has no tile size / mpp in "
                f"uns['tile_spec'] ({ts or 'missing'}). {redo} For features made elsewhere at that geometry, set "
                f"tiles.uns['tile_spec'] = {{'tile_px': {want_px}, 'mpp': {want_mpp}, 'slide_mpp': <level-0 mpp>}}.")
        px, mpp = int(ts["tile_px"]), float(ts["mpp"])
        if px != int(want_px) or abs(mpp / float(want_mpp) - 1) > MPP_TOLERANCE:
            raise GridError(
                f"{spec.name} was trained on {want_px}-px tiles at {want_mpp} mpp (20x); slide {sid!r} has {px}-px "
                f"tiles at {mpp:g} mpp (uns['tile_spec']). {redo}")
    if float(ts.get("overlap") or 0):
        raise GridError(f"{spec.name} places each tile in its own grid cell: slide {sid!r} has overlapping tiles "
                        f"(overlap={ts['overlap']}). {redo.replace(')', ', overlap=0)', 1)}")
    step = ts.get("stride_level0") or _tile_size_level0(ts)
    if step is None or not float(step) > 0:
        raise GridError(f"slide {sid!r}: the step between neighbouring tiles in level-0 px is unknown "
                        "(uns['tile_spec'] lacks stride_level0, size_level0 and slide_mpp). Set "
                        "tiles.uns['tile_spec']['slide_mpp'] (pk.io.read_bag(..., slide_mpp=)) or "
                        "['stride_level0'] (TRIDENT's patch_size_level0), or: " + redo)
    return float(step)


def grid_cells(xy: np.ndarray, step: float) -> np.ndarray:
    """Level-0 top-left corners -> integer cells ``(xy - xy.min()) / step``, rounded.

    On tiles of a regular grid this is the reference's floor division; rounding also absorbs the +-1 px of
    level-0 corners that pk.pp.tile rounds from a non-integer step (0.25 mpp * 2.02 ...)."""
    rel = (xy - xy.min(axis=0)) / step
    cells = np.rint(rel)
    off = float(np.abs(rel - cells).max()) if len(rel) else 0.0
    if off > 0.25:
        warnings.warn(f"tile coordinates are off a grid of {step:g} level-0 px by up to {off:.2f} of a tile: "
                      "the tiles are not the regular grid of pk.pp.tile; each goes to the nearest cell",
                      UserWarning, stacklevel=4)
    return cells.astype(np.int64)


def embed_grid(tile_adata, X, spec, loader, use_rep, key, weights, pool, layers, coords, device, dtype, info):
    import torch

    from .._device import autocast, dtype_name, resolve_device, resolve_dtype
    from .slide_embed import _check_dim, _check_tile_model, _level0_xy, _store

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
