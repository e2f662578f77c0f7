"""Slide embedding: LongNet (Prov-GigaPath) or mean pooling of a tile AnnData."""
from __future__ import annotations

import threading
import warnings

import numpy as np

from ..errors import GridError
from ._slide_common import (
    _check_dim,
    _check_tile_model,
    _features,
    _level0_xy,
    _resolve_rep,
    _slide_id,
    _store,
    _tile_size_level0,
    check_tile_geometry,
)

GRID_MPP = 0.5  # the released slide encoder's grid: 256-px tiles at 0.5 um/px

_CACHE: dict = {}  # one loaded slide encoder, reused across slides of a cohort
_CACHE_LOCK = threading.Lock()


def embed_slide(tiles, model="gigapath_slide", *, use_rep: str | None = None, key_added: str | None = None,
                weights=None, pool: str = "mean", layers: str | int | None = None, coords: str = "grid", device="auto",
                dtype="auto", progress: bool = True, copy: bool = False):
    """Embed one slide from its tile features.

    Parameters
    ----------
    tiles
        The tiles AnnData of one slide with features (:func:`pathkit.tl.embed_tiles`): ``obsm[use_rep]``
        (n_tiles x dim), obs ``x``, ``y`` (level-0 px of each tile's top-left; ``obsm["spatial"]`` when obs
        lacks them), ``uns["tile_spec"]`` / ``uns["slide"]`` for the slide's mpp.
    model
        ``"gigapath_slide"`` (Prov-GigaPath's LongNet on ``gigapath_tile`` features), another registered
        slide model (name or ModelSpec), a ``LongNetSlideEncoder`` instance, or ``"mean"``: the plain mean of
        the tile features (no network). ``"titan"`` takes ``conch_v15`` features of 512-px tiles at 0.5 mpp
        (``pk.pp.tile(slide, tile_px=512, mpp=0.5)``) and builds its own grid from obs x / y (one cell per tile);
        `pool`, `layers` and `coords` are LongNet's and keep their defaults for it.
    use_rep
        The ``obsm`` key of the tile features (``"X"`` reads ``X``). None: the features of the tile model the
        slide model expects (``"X_gigapath_tile"`` for ``gigapath_slide``), or the only ``X_<model>`` key.
        Features recorded in ``uns["models"]`` as coming from another tile model are refused.
    key_added
        Key of the result in ``uns["slide_embeddings"]``; default the model's name (``"mean"`` for
        ``model="mean"``).
    weights
        None: the registry's source (Prov-GigaPath's ``slide_encoder.pth`` on the HF hub, gated: log in and
        accept its terms); a local path / ``"hf_hub:..."``; or ``"random"`` (random weights, with a warning:
        for tests only).
    pool
        ``"mean"`` (default: the mean of the tile tokens, as TRIDENT reads frozen Prov-GigaPath slide
        embeddings) or ``"cls"`` (the CLS token, the authors' fine-tuning readout, which trains it).
    layers
        Which hidden state: None (default) -> the registry entry's choice (``gigapath_slide``: 11, the layer
        the authors' fine-tuning ``--feat_layer 11`` and TRIDENT read); an int k -> the state after k blocks
        (pooled, without the encoder's final layer norm, as the reference's ``all_layer_embed[k]``); ``"last"``
        -> after all blocks and the final layer norm (the reference's ``forward`` without
        ``all_layer_embed``); ``"all"`` -> [depth + 1, E], every row of ``all_layer_embed``. See
        docs/models.md, "Prov-GigaPath slide encoder: conventions".
    coords
        How obs x / y (level-0 px) become positions on the model's 1000 x 1000 grid of 256-px cells:
        ``"grid"`` (default): physical, the grid the model was trained on (256-px cells at 0.5 mpp): each tile
        goes to the cell holding its top-left corner (TRIDENT's and the authors' convention),
        ``x_0.5 = x_level0 * slide_mpp / 0.5``. ``"tile"``: one cell per
        tile, ``floor(x_level0 / tile size at level 0)`` (TRIDENT's convention; the same as ``"grid"`` for
        256-px tiles at 0.5 mpp, adjacent cells for tiles cut at another size or mpp). ``"level0"``: the
        reference pipeline's raw behaviour, level-0 px divided by 256 (a 40x slide's 0.5-mpp tiles then sit
        two cells apart). Coordinates off the grid raise GridError.
    device, dtype
        ``"auto"``: see :func:`pathkit._device.resolve_device` / ``resolve_dtype`` (bfloat16 on CUDA and on
        CPUs with native bf16); ``dtype="float32"`` reproduces the reference within 1e-5.
    progress
        A progress bar over the encoder's layers (a 10k-tile slide can take minutes on a small CPU).
    copy
        Return a new AnnData instead of writing into `tiles`.

    Tiles are sorted row-major (grid y, then x) before encoding - the network depends on token order - so
    the result does not depend on the order of obs.

    Returns
    -------
    None, or the new AnnData when ``copy=True``. Sets the following fields:

    ``uns["slide_embeddings"][key_added]`` : float32 [E] or [depth + 1, E]
        The slide embedding; :func:`pathkit.tl.embed_cohort` collects these into ``obsm["X_<key>"]``.
    ``uns["slide_embeddings_info"][key_added]`` : dict
        model, weights (+ sha256), use_rep, pool, layers, coords, n_tiles, dtype, device, pathkit version,
        and ``tile_order`` (obs positions in the order they were encoded); for ``"titan"``, ``grid_step_level0``
        and ``n_cells`` (its grid) instead of coords / layers / tile_order.
    """
    adata = tiles.copy() if copy else tiles
    _embed(adata, model, use_rep, key_added, weights, pool, layers, coords, device, dtype, progress)
    return adata if copy else None


def _embed(tile_adata, model, use_rep, key, weights, pool, layers, coords, device, dtype, progress):
    from .._device import resolve_device, resolve_dtype
    from .._version import __version__

    spec = None
    if not (isinstance(model, str) and model == "mean") and not hasattr(model, "slide_ngrids"):
        from ..models.registry import get_spec

        spec = get_spec(model, kind="slide")
    use_rep = _resolve_rep(tile_adata, use_rep, (spec.extra or {}).get("tile_model") if spec else None)
    X = _features(tile_adata, use_rep)
    info = {"pathkit_version": __version__, "n_tiles": int(X.shape[0]), "use_rep": use_rep}
    if isinstance(model, str) and model == "mean":
        if layers not in (None, "last"):
            raise ValueError("model='mean' has no layers: use layers='last'")
        if pool != "mean":
            raise ValueError("model='mean' is the plain mean of tile features: use pool='mean'")
        vec = X.astype(np.float64).mean(axis=0).astype(np.float32)
        info.update(model="mean", pool="mean", layers="last")
        return _store(tile_adata, key or "mean", vec, info)

    import torch

    from ..models.longnet import LongNetSlideEncoder

    if spec is not None and spec.arch in SET_ENCODERS:
        return _embed_set(tile_adata, X, spec, use_rep, key, weights, layers, device, dtype, info)
    if spec is not None and spec.arch in GRID_ENCODERS:
        from ._slide_grid import embed_grid

        return embed_grid(tile_adata, X, spec, GRID_ENCODERS[spec.arch], use_rep, key, weights, pool, layers,
                          coords, device, dtype, info)

    if pool not in ("mean", "cls"):
        raise ValueError(f"pool={pool!r}: use 'mean' or 'cls'")
    if layers is None:
        layers = (spec.extra or {}).get("layer", "last") if spec is not None else "last"
    if layers not in ("last", "all") and (isinstance(layers, bool) or not isinstance(layers, (int, np.integer))):
        raise ValueError(f"layers={layers!r}: use None (the model's default), an int (the state after that many "
                         "blocks), 'last' or 'all'")
    if coords not in ("grid", "tile", "level0"):
        raise ValueError(f"coords={coords!r}: use 'grid' (0.5-mpp grid, default), 'tile' (one cell per tile) "
                         "or 'level0' (raw)")
    if isinstance(model, LongNetSlideEncoder):
        # a module the user passed keeps its own device and dtype unless asked otherwise (.to() is in place)
        p = next(model.parameters())
        dev = p.device if device == "auto" else resolve_device(device)
        dt = p.dtype if dtype in ("auto", None) else resolve_dtype(dtype, dev)
    else:
        dev = resolve_device(device)
        dt = resolve_dtype(dtype, dev)
    if isinstance(model, LongNetSlideEncoder):
        if weights is not None:
            raise ValueError("weights= is for registry models; the module you passed already has its weights")
        net, name = model.to(dev, dt).eval(), key or getattr(model, "name", "longnet")
        info.update(model=name, weights="module passed by the user")
        grid_mpp = GRID_MPP
    else:
        _check_dim(tile_adata, X, spec.kwargs.get("in_chans"), spec.name)  # before any download
        _check_tile_model(tile_adata, use_rep, (spec.extra or {}).get("tile_model"))
        net, minfo = _load_cached(spec, weights, dev, dt)
        name = spec.name
        grid_mpp = float(spec.extra.get("grid_mpp", GRID_MPP))
        info.update(model=name, arch=spec.arch, weights=minfo["weights"], weights_sha256=minfo["weights_sha256"])
    _check_dim(tile_adata, X, net.in_chans, name)

    raw = _level0_xy(tile_adata)
    xy = {"level0": lambda: raw, "grid": lambda: _grid_xy(tile_adata, raw, net.tile_size, grid_mpp),
          "tile": lambda: _tile_xy(tile_adata, raw, net.tile_size)}[coords]()
    cell = np.floor(xy / net.tile_size)
    n = net.slide_ngrids
    if (cell < 0).any() or (cell >= n).any():
        hint = ("Try coords='grid' (converts to 0.5-mpp pixels)." if coords == "level0" else
                f"The tissue spans more than {n} cells of {net.tile_size} px at {grid_mpp} mpp "
                f"({n * net.tile_size * grid_mpp / 1000:.0f} mm): crop the slide or split it into regions.")
        raise GridError(
            f"tile coordinates fall off {name}'s {n} x {n} grid: cells x {int(cell[:, 0].min())}..{int(cell[:, 0].max())}, "
            f"y {int(cell[:, 1].min())}..{int(cell[:, 1].max())} (max allowed {n - 1}; coords={coords!r}, from obs "
            f"'x'/'y' of slide {_slide_id(tile_adata)!r}). {hint}")
    # row-major: grid y, then grid x; raw coordinates break ties so that the order never depends on obs
    order = np.lexsort((raw[:, 0], raw[:, 1], cell[:, 0], cell[:, 1]))
    dup = len(cell) - len(np.unique(cell, axis=0))
    if dup:
        warnings.warn(f"{dup} tile(s) share a {net.tile_size}-px grid cell with another tile (overlapping or "
                      f"small tiles?): they get the same position embedding", UserWarning, stacklevel=2)

    with torch.inference_mode():
        feats = torch.from_numpy(np.ascontiguousarray(X[order], dtype=np.float32))[None].to(dev, dt)
        c = torch.from_numpy(np.ascontiguousarray(xy[order], dtype=np.float64))[None]
        k = None if layers in ("last", "all") else int(layers)
        out = net(feats, c, pool=pool, all_layers=(layers == "all"), progress=progress, layer=k)
    vec = out[:, 0].float().cpu().numpy() if layers == "all" else out[0].float().cpu().numpy()
    info.update(pool=pool, layers=layers, coords=coords, dtype=str(dt).replace("torch.", ""), device=str(dev),
                tile_order=order.astype(np.int64))
    return _store(tile_adata, key or name, vec, info)


# ----------------------------------------------------------------------------------------------------

def _lazy_loader(module: str, name: str):
    """A slide-encoder loader ``(spec, weights, device) -> (net, info)`` imported on first use (torch and the
    model modules stay out of ``import pathkit``)."""
    def load(spec, weights, device):
        import importlib

        return getattr(importlib.import_module(module, __package__), name)(spec, weights=weights, device=device)
    return load


# coordinate-free slide encoders (the tile order does not matter): registry arch -> loader returning
# (net, info) with net(features [N, D]) -> the slide vector
SET_ENCODERS = {
    "pathkit:feather_abmil": _lazy_loader("..models.feather", "load_slide_abmil"),
    "pathkit:chief": _lazy_loader("..models.chief", "load_chief"),
    "pathkit:prism_perceiver": _lazy_loader("..models.prism", "load_prism"),
}

# slide encoders on a grid of whole tiles (each tile one cell, from its level-0 coordinates; the entry's
# extra["tile_px"] / extra["mpp"] are enforced): arch -> loader returning (net, info) with
# net(features [N, D], cells [N, 2] int64 (x, y)) -> the slide vector. See _slide_grid.embed_grid.
GRID_ENCODERS = {"pathkit:titan": _lazy_loader("..models.titan", "load_titan")}


def _embed_set(tile_adata, X, spec, use_rep, key, weights, layers, device, dtype, info):
    import torch

    from .._device import autocast, dtype_name, resolve_device, resolve_dtype

    if layers not in (None, "last"):
        raise ValueError(f"{spec.name} returns one vector: use layers='last'")
    _check_dim(tile_adata, X, spec.kwargs.get("in_dim"), spec.name)
    _check_tile_model(tile_adata, use_rep, (spec.extra or {}).get("tile_model"))
    check_tile_geometry(tile_adata, spec, missing="warn", stacklevel=5)  # coordinate-free: features made elsewhere still run
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    net, minfo = SET_ENCODERS[spec.arch](spec, weights, dev)
    with torch.inference_mode(), autocast(dev, dt):
        vec = net(torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32), device=dev))
    info.update(model=spec.name, arch=spec.arch, weights=minfo.get("weights"),
                weights_sha256=minfo.get("weights_sha256"), dtype=dtype_name(dt), device=str(dev))
    return _store(tile_adata, key or spec.name, vec.float().cpu().numpy().reshape(-1), info)


def _grid_xy(adata, xy, tile_size: int, grid_mpp: float) -> np.ndarray:
    """Level-0 px -> the top-left of the grid cell holding each tile's top-left corner, in grid_mpp pixels.

    The corner, as TRIDENT and the Prov-GigaPath maintainers place tiles (a tile's centre would move every tile
    of a grid whose origin is off by half a tile into the next cell). Half a level-0 pixel is added before the
    floor: pk.pp.tile rounds the corners of a non-integer step, which must not drop a tile into the cell before.
    """
    spec = dict(adata.uns.get("tile_spec") or {})
    slide = dict(adata.uns.get("slide") or {})
    slide_mpp = spec.get("slide_mpp", slide.get("mpp"))
    if slide_mpp is None or not np.isfinite(float(slide_mpp)) or float(slide_mpp) <= 0:
        raise GridError(
            f"coords='grid' needs the slide's mpp (uns['tile_spec']['slide_mpp'] or uns['slide']['mpp']); slide "
            f"{_slide_id(adata)!r} has none. Set it (e.g. adata.uns['slide']['mpp'] = 0.25), or pass "
            "coords='level0' to use the raw coordinates as the reference does.")
    slide_mpp = float(slide_mpp)
    corner = (xy + 0.5) * slide_mpp / grid_mpp
    return np.floor(corner / tile_size) * tile_size


def _tile_xy(adata, xy, tile_size: int) -> np.ndarray:
    """Level-0 px -> one grid cell per tile (TRIDENT: coords // patch_size_level0), in grid px."""
    size0 = _tile_size_level0(dict(adata.uns.get("tile_spec") or {}))
    if size0 is None or not size0 > 0:
        raise GridError(f"coords='tile' needs the tile size at level 0 (uns['tile_spec']['size_level0'], or "
                        f"tile_px, mpp and slide_mpp); slide {_slide_id(adata)!r} has none. Tile it with "
                        "pk.pp.tile, or pass coords='grid'.")
    return np.floor((xy + 0.5) / float(size0)) * tile_size


def _load_cached(spec, weights, device, dtype):
    """Loading 86M parameters per slide would dominate a cohort: keep the last model loaded."""
    from ..models.longnet import load_slide_encoder

    if isinstance(weights, dict):
        return load_slide_encoder(spec, weights=weights, device=device, dtype=dtype)
    ck = (repr(spec.to_dict()), str(weights), str(device), str(dtype))
    with _CACHE_LOCK:
        if ck not in _CACHE:
            _CACHE.clear()
            _CACHE[ck] = load_slide_encoder(spec, weights=weights, device=device, dtype=dtype)
        elif weights == "random":
            warnings.warn(f"{spec.name}: using RANDOM weights (weights='random'): slide embeddings are "
                          "meaningless except for testing", UserWarning, stacklevel=3)
        return _CACHE[ck]


