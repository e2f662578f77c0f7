"""What every slide encoder shares: choosing and checking the tile features, slide ids, level-0 coordinates,
tile sizes and where results are stored (used by slide_embed and _slide_grid, which import it)."""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import GridError


def _resolve_rep(adata, use_rep, tile_model) -> str:
    """The obsm key of the tile features (see embed_slide's `use_rep`); refuses another tile model's."""
    from .embed import feature_key

    feats = [k for k in adata.obsm if k.startswith("X_") and k not in ("X_umap", "X_pca", "X_tsne")]
    if use_rep is None:
        want = feature_key(tile_model) if tile_model else None
        if want and want in adata.obsm:
            use_rep = want
        elif len(feats) == 1 and not tile_model:
            use_rep = feats[0]
        elif adata.n_vars and not feats:
            use_rep = "X"
        else:
            raise KeyError(f"slide {_slide_id(adata)!r}: which tile features? "
                           + (f"the slide model expects {want!r}, " if want else "")
                           + f"obsm holds {feats or 'none'}. Embed the tiles with pk.tl.embed_tiles(tiles, slide, "
                           f"{tile_model or 'model'!r}) or pass use_rep=")
    if use_rep != "X" and use_rep not in adata.obsm:
        raise KeyError(f"slide {_slide_id(adata)!r}: obsm[{use_rep!r}] does not exist (obsm holds {feats}); "
                       "embed the tiles first with pk.tl.embed_tiles")
    return use_rep


def _check_tile_model(adata, use_rep, tile_model) -> None:
    made_by = ((adata.uns.get("models") or {}).get(use_rep) or {}).get("name")
    if tile_model and made_by and made_by not in (tile_model, "external"):
        raise ValueError(f"slide {_slide_id(adata)!r}: obsm[{use_rep!r}] holds {made_by!r} features, but the slide "
                         f"model expects {tile_model!r} features: embed the tiles with {tile_model!r}")


def _features(adata, use_rep: str = "X") -> np.ndarray:
    X = adata.X if use_rep == "X" else adata.obsm[use_rep]
    if X is None or X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"slide {_slide_id(adata)!r} has no tile features in {use_rep!r} (expected n_tiles x dim, "
                         "n_tiles > 0)")
    if hasattr(X, "toarray"):
        X = X.toarray()
    X = np.asarray(X)
    if not np.isfinite(X).all():
        raise ValueError(f"tile_adata.X of slide {_slide_id(adata)!r} holds NaN or inf values")
    return X


def _check_dim(adata, X, in_chans, name):
    if in_chans is None or X.shape[1] == int(in_chans):
        return
    models = getattr(adata, "uns", {}).get("models") or {}
    tile_model = ", ".join(sorted({str(v.get("name")) for v in models.values()})) or "unknown"
    raise ValueError(
        f"{name} expects {in_chans}-d tile features; slide {_slide_id(adata)!r} has {X.shape[1]}-d features from "
        f"tile model {tile_model!r} (uns['models']). Embed the tiles with the matching tile encoder"
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


def _tile_size_level0(tile_spec: dict, slide_mpp: float | None = None) -> float | None:
    """A tile's side in level-0 px from ``uns["tile_spec"]``: ``size_level0``, else ``tile_px * mpp /
    slide_mpp`` (``slide_mpp`` from the spec, else the argument); None when the spec cannot tell."""
    if tile_spec.get("size_level0") is not None:
        return float(tile_spec["size_level0"])
    slide_mpp = tile_spec.get("slide_mpp") or slide_mpp
    if tile_spec.get("tile_px") is not None and tile_spec.get("mpp") and slide_mpp:
        return float(tile_spec["tile_px"]) * float(tile_spec["mpp"]) / float(slide_mpp)
    return None


def _store(adata, key, vec, info):
    info = {k: v for k, v in info.items() if v is not None}  # h5ad cannot hold None
    embs = adata.uns.get("slide_embeddings")
    adata.uns["slide_embeddings"] = {**(dict(embs) if embs else {}), key: vec}
    infos = adata.uns.get("slide_embeddings_info")
    adata.uns["slide_embeddings_info"] = {**(dict(infos) if infos else {}), key: info}
    return vec


MPP_TOLERANCE = 0.1  # relative: "0.5 mpp" accepts 0.45..0.55 (scanners' 20x vary around 0.5)


def check_tile_geometry(adata, spec, *, missing: str = "error", stacklevel: int = 6) -> str:
    """Refuse tiles of another size / mpp than the entry's ``extra["tile_px"]`` / ``extra["mpp"]`` (each
    checked when the entry names it); ``extra["geometry"] == "warn"`` (a tiling the authors' code does not
    state) warns instead. Tiles without ``uns["tile_spec"]`` raise (``missing="error"``) or warn
    (``"warn"``: coordinate-free encoders). Returns the how-to-redo sentence for further messages."""
    extra = spec.extra or {}
    want_px, want_mpp = extra.get("tile_px"), extra.get("mpp")
    ts = dict(adata.uns.get("tile_spec") or {})
    tile_model = extra.get("tile_model") or "the tile model"
    args = ", ".join(f"{k}={v}" for k, v in (("tile_px", want_px), ("mpp", want_mpp)) if v is not None)
    redo = (f"Tile the slide with pk.pp.tile(slide, {args}) and embed the tiles with "
            f"pk.tl.embed_tiles(tiles, slide, {tile_model!r}).")
    if want_px is None and want_mpp is None:
        return redo
    sid = _slide_id(adata)
    wants = " ".join(s for s in (f"{want_px}-px tiles" if want_px else "tiles",
                                 f"at {want_mpp} mpp" if want_mpp else "") if s)
    have_px, have_mpp = ts.get("tile_px"), ts.get("mpp")
    want = "".join(f"'{k}': {v}, " for k, v in (("tile_px", want_px), ("mpp", want_mpp)) if v is not None)
    if (want_px is not None and have_px is None) or (want_mpp is not None and have_mpp is None):
        msg = (f"{spec.name} takes {wants}; slide {sid!r} has no tile size / mpp in uns['tile_spec'] "
               f"({ts or 'missing'}). {redo} For features made elsewhere at that geometry, set "
               f"tiles.uns['tile_spec'] = {{{want}'slide_mpp': <level-0 mpp>}}.")
        if missing == "error":
            raise GridError(msg)
        warnings.warn(msg + " The geometry is not checked.", UserWarning, stacklevel=stacklevel)
        return redo
    bad_px = want_px is not None and int(have_px) != int(want_px)
    bad_mpp = want_mpp is not None and abs(float(have_mpp) / float(want_mpp) - 1) > MPP_TOLERANCE
    if bad_px or bad_mpp:
        msg = (f"{spec.name} was trained on {wants}; slide {sid!r} has {int(have_px) if have_px else '?'}-px "
               f"tiles at {float(have_mpp):g} mpp (uns['tile_spec']). {redo}" if have_mpp is not None else
               f"{spec.name} was trained on {wants}; slide {sid!r} has {have_px}-px tiles. {redo}")
        if extra.get("geometry") == "warn":
            warnings.warn(msg + f" ({spec.name}'s tiling is not stated in the authors' code: used anyway.)",
                          UserWarning, stacklevel=stacklevel)
        else:
            raise GridError(msg)
    return redo
