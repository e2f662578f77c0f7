"""Slide embedding: LongNet (Prov-GigaPath) or mean pooling of a tile AnnData."""
from __future__ import annotations

import threading
import warnings

import numpy as np

from ..errors import GridError

GRID_MPP = 0.5  # the released slide encoder's grid: 256-px tiles at 0.5 um/px

_CACHE: dict = {}  # one loaded slide encoder, reused across slides of a cohort
_CACHE_LOCK = threading.Lock()


def embed_slide(tile_adata, model="gigapath_slide", weights=None, pool: str = "mean", layers: str = "last",
                coords: str = "grid", device="auto", key: str | None = None, dtype=None,
                progress: bool = True) -> np.ndarray:
    """Embed one slide from its tile features.

    Parameters
    ----------
    tile_adata
        Tile-level AnnData of one slide (`pk.tl.embed_tiles`): X (n_tiles x dim) tile features, obs `x`,
        `y` (level-0 px of each tile's top-left; obsm["spatial"] is used when obs lacks them),
        uns["tile_spec"] / uns["slide"] for the slide's mpp.
    model
        "gigapath_slide" (Prov-GigaPath's LongNet; needs 1536-d `gigapath_tile` features), another
        registered slide model (name or ModelSpec), a `LongNetSlideEncoder` instance, or "mean": the plain
        mean of the tile features (no network).
    weights
        None: the registry's source (Prov-GigaPath's `slide_encoder.pth` on the HF hub, gated: log in and
        accept its terms); a local path / "hf_hub:..."; or "random" (random weights, with a warning: for
        tests only).
    pool
        "mean" (mean of the tile tokens, what the authors use: the CLS token was never trained) or "cls".
    layers
        "last" -> a vector [E]; "all" -> [depth + 1, E] (input tokens and each layer, pooled, without the
        encoder's final layer norm, as the reference's `all_layer_embed`).
    coords
        "grid" (default): tiles are placed on the grid the model was trained on, 256-px cells at 0.5 mpp.
        Coordinates are converted to 0.5-mpp pixels, `x_0.5 = x_level0 * slide_mpp / 0.5` (slide_mpp from
        uns["tile_spec"]["slide_mpp"] or uns["slide"]["mpp"]), and each tile goes to the 256-px cell that
        holds its centre (for 256-px tiles at 0.5 mpp this is floor(x_0.5 / 256), and it is not thrown off by
        the sub-pixel rounding of level-0 coordinates). "level0": the reference's raw behaviour, obs x / y
        passed as they are (cell = floor(x / 256) in level-0 pixels, so a 40x slide's tiles sit two cells
        apart). Coordinates off the 1000 x 1000 grid raise GridError.
    device, dtype
        "auto": CUDA when available, else CPU; dtype None: float32 on CPU, bfloat16 on CUDA.
    key
        Name under which the result is stored; default the model's name ("mean" for model="mean").
    progress
        A progress bar over the encoder's layers (a 10k-tile slide can take minutes on a small CPU).

    Tiles are sorted row-major (grid y, then x) before encoding — the network depends on token order — so
    the result does not depend on the order of obs. Slides are encoded one at a time (padding a batch would
    change results).

    Writes
    ------
    uns["slide_embeddings"][key]: the embedding (float32 [E] or [depth + 1, E]); a cohort collects these
    into obsm["X_<key>"].
    uns["slide_embeddings_info"][key]: model, weights (+ sha256), pool, layers, coords, n_tiles, dtype,
    device, pathkit version, and `tile_order` (obs positions in the order they were encoded).

    Returns
    -------
    The embedding as a numpy array.
    """
    from .._version import __version__

    X = _features(tile_adata)
    info = {"pathkit_version": __version__, "n_tiles": int(X.shape[0])}
    if isinstance(model, str) and model == "mean":
        if layers != "last":
            raise ValueError("model='mean' has no layers: use layers='last'")
        if pool != "mean":
            raise ValueError("model='mean' is the plain mean of tile features: use pool='mean'")
        vec = X.astype(np.float64).mean(axis=0).astype(np.float32)
        info.update(model="mean", pool="mean", layers="last")
        return _store(tile_adata, key or "mean", vec, info)

    import torch

    from ..models.longnet import LongNetSlideEncoder

    if pool not in ("mean", "cls"):
        raise ValueError(f"pool={pool!r}: use 'mean' or 'cls'")
    if layers not in ("last", "all"):
        raise ValueError(f"layers={layers!r}: use 'last' or 'all'")
    if coords not in ("grid", "level0"):
        raise ValueError(f"coords={coords!r}: use 'grid' (0.5-mpp grid, default) or 'level0' (raw)")
    dev = _device(device)
    dt = _dtype(dtype, dev)
    if isinstance(model, LongNetSlideEncoder):
        if weights is not None:
            raise ValueError("weights= is for registry models; the module you passed already has its weights")
        net, name = model.to(dev, dt).eval(), key or getattr(model, "name", "longnet")
        info.update(model=name, weights="module passed by the user")
        grid_mpp = GRID_MPP
    else:
        from ..models.registry import get_spec

        spec = get_spec(model, kind="slide")
        _check_dim(tile_adata, X, spec.kwargs.get("in_chans"), spec.name)  # before any download
        net, minfo = _load_cached(spec, weights, dev, dt)
        name = spec.name
        grid_mpp = float(spec.extra.get("grid_mpp", GRID_MPP))
        info.update(model=name, arch=spec.arch, weights=minfo["weights"], weights_sha256=minfo["weights_sha256"])
    _check_dim(tile_adata, X, net.in_chans, name)

    raw = _level0_xy(tile_adata)
    xy = raw if coords == "level0" else _grid_xy(tile_adata, raw, net.tile_size, grid_mpp)
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
        out = net(feats, c, pool=pool, all_layers=(layers == "all"), progress=progress)
    vec = out[:, 0].float().cpu().numpy() if layers == "all" else out[0].float().cpu().numpy()
    info.update(pool=pool, layers=layers, coords=coords, dtype=str(dt).replace("torch.", ""), device=str(dev),
                tile_order=order.astype(np.int64))
    return _store(tile_adata, key or name, vec, info)


# ----------------------------------------------------------------------------------------------------

def _features(adata) -> np.ndarray:
    X = getattr(adata, "X", None)
    if X is None or X.ndim != 2 or X.shape[0] == 0:
        raise ValueError("tile_adata has no tile features in X (expected n_tiles x dim, n_tiles > 0)")
    if hasattr(X, "toarray"):
        X = X.toarray()
    X = np.asarray(X)
    if not np.isfinite(X).all():
        raise ValueError(f"tile_adata.X of slide {_slide_id(adata)!r} holds NaN or inf values")
    return X


def _check_dim(adata, X, in_chans, name):
    if in_chans is None or X.shape[1] == int(in_chans):
        return
    tile_model = (getattr(adata, "uns", {}).get("model") or {}).get("name", "unknown")
    raise ValueError(
        f"{name} expects {in_chans}-d tile features; slide {_slide_id(adata)!r} has {X.shape[1]}-d features from "
        f"tile model {tile_model!r} (uns['model']['name']). Embed the tiles with the matching tile encoder"
        + (" (gigapath_tile)" if int(in_chans) == 1536 else "") + ", or use model='mean'.")


def _slide_id(adata):
    try:
        return (adata.uns.get("slide") or {}).get("slide_id") or str(adata.obs["slide_id"].iloc[0])
    except (KeyError, IndexError, AttributeError, TypeError):
        return "?"


def _level0_xy(adata) -> np.ndarray:
    obs = adata.obs
    if "x" in obs and "y" in obs:
        xy = np.stack([obs["x"].to_numpy(), obs["y"].to_numpy()], axis=1).astype(np.float64)
    elif "spatial" in adata.obsm:
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    else:
        raise ValueError("tile_adata has no tile coordinates: expected obs 'x', 'y' (level-0 px) or obsm['spatial']")
    if not np.isfinite(xy).all():
        raise ValueError(f"tile coordinates of slide {_slide_id(adata)!r} hold NaN or inf values")
    return xy


def _grid_xy(adata, xy, tile_size: int, grid_mpp: float) -> np.ndarray:
    """Level-0 px -> the top-left of the grid cell holding each tile's centre, in grid_mpp pixels."""
    spec = dict(adata.uns.get("tile_spec") or {})
    slide = dict(adata.uns.get("slide") or {})
    slide_mpp = spec.get("slide_mpp", slide.get("mpp"))
    if slide_mpp is None or not np.isfinite(float(slide_mpp)) or float(slide_mpp) <= 0:
        raise GridError(
            f"coords='grid' needs the slide's mpp (uns['tile_spec']['slide_mpp'] or uns['slide']['mpp']); slide "
            f"{_slide_id(adata)!r} has none. Set it (e.g. adata.uns['slide']['mpp'] = 0.25), or pass "
            "coords='level0' to use the raw coordinates as the reference does.")
    slide_mpp = float(slide_mpp)
    size0 = spec.get("size_level0")
    if size0 is None and spec.get("tile_px") is not None:
        size0 = float(spec["tile_px"]) * float(spec.get("mpp", slide_mpp)) / slide_mpp
    if size0 is None:  # unknown tile size: assume tiles of one grid cell
        size0 = tile_size * grid_mpp / slide_mpp
    centre = (xy + float(size0) / 2) * slide_mpp / grid_mpp
    return np.floor(centre / tile_size) * tile_size


def _device(device):
    import torch

    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _dtype(dtype, device):
    import torch

    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if str(dtype).lower() not in names:
        raise ValueError(f"dtype={dtype!r} is not one of {sorted(names)}")
    return names[str(dtype).lower()]


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


def _store(adata, key, vec, info):
    info = {k: v for k, v in info.items() if v is not None}  # h5ad cannot hold None
    embs = adata.uns.get("slide_embeddings")
    adata.uns["slide_embeddings"] = {**(dict(embs) if embs else {}), key: vec}
    infos = adata.uns.get("slide_embeddings_info")
    adata.uns["slide_embeddings_info"] = {**(dict(infos) if infos else {}), key: info}
    return vec
