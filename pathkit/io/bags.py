"""Tile-feature bags made by other pipelines (CLAM / SurvPath-style HDF5) as pathkit tile AnnData."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import TableError


def h5_bag_slide_id(path) -> str:
    """The slide id of an HDF5 bag file (pathkit's one rule: the name without ``.features.h5`` / ``.h5``)."""
    from .._ids import slide_id_from_path

    return slide_id_from_path(Path(path).name)


def read_h5_features(path, features: str | None = None) -> np.ndarray:
    """Only the feature matrix of an HDF5 bag (float32): ``features`` or the first of "feats", "features"."""
    from .._files import open_h5

    with open_h5(path, "HDF5 feature bag") as f:
        name = features or next((k for k in ("feats", "features") if k in f), None)
        if name is None or name not in f:
            raise TableError(f"{path}: no features dataset {features or 'feats/features'!r}; it has {list(f)}")
        return np.asarray(f[name][:], dtype=np.float32)


def read_h5_bag(path, features: str | None = None, coords: str | None = "coords", coords_order: str = "xy",
                slide_id: str | None = None, tile_px: int | None = None, mpp: float | None = None,
                slide_mpp: float | None = None, key_added: str | None = None):
    """Read an HDF5 bag of tile features into a tile AnnData with pathkit's keys.

    Parameters
    ----------
    path: the .h5 file.
    features: dataset holding features (n_tiles x dim); default: the first of "feats", "features".
    coords: dataset holding tile coordinates in level-0 pixels (None: no coordinates).
    coords_order: "xy" (CLAM) or "yx" (e.g. the shared TCGA-AD-6964 bag) — the column order on disk.
    slide_id: defaults to the file name up to the first ".features" / extension.
    tile_px, mpp: the tile geometry when known (tile side in px at `mpp` µm/px), recorded in `uns["tile_spec"]`.
    slide_mpp: the level-0 µm/px of the slide the coordinates refer to; needed to put the tiles on the
        LongNet grid (`pk.tl.embed_slide(coords="grid")`).
    key_added: None keeps the features in X; a name (e.g. "X_uni") puts them in obsm[key_added] with X empty
        (n_tiles x 0), as `pk.tl.embed_tiles` stores features, so `use_rep=key_added` reads them.

    Returns an AnnData: X float32 features (or obsm[key_added]), obs `slide_id`, `x`, `y`, obsm["spatial"] (x, y) float64,
    uns["slide"] (path, slide_id), uns["tile_spec"], uns["model"] = {"name": "external", "source": path}.
    """
    import anndata as ad
    import pandas as pd

    from .._files import open_h5

    path = Path(path)
    if coords_order not in ("xy", "yx"):
        raise ValueError(f"coords_order must be 'xy' or 'yx', not {coords_order!r}")
    with open_h5(path, "HDF5 feature bag") as f:
        name = features or next((k for k in ("feats", "features") if k in f), None)
        if name is None or name not in f:
            raise TableError(f"{path}: no features dataset {features or 'feats/features'!r}; it has {list(f)}")
        X = np.asarray(f[name][:], dtype=np.float32)
        xy = None
        if coords is not None:
            if coords not in f:
                raise TableError(f"{path}: no coordinates dataset {coords!r}; it has {list(f)} (coords=None to skip)")
            xy = np.asarray(f[coords][:], dtype=np.float64)
            if xy.shape != (X.shape[0], 2):
                raise TableError(f"{path}: {coords!r} has shape {xy.shape}, expected ({X.shape[0]}, 2)")
            if coords_order == "yx":
                xy = xy[:, ::-1].copy()
    sid = slide_id or h5_bag_slide_id(path)
    obs = pd.DataFrame({"slide_id": sid}, index=[str(i) for i in range(X.shape[0])])
    if xy is not None:
        obs["x"], obs["y"] = xy[:, 0].astype(np.int64), xy[:, 1].astype(np.int64)
    if key_added is None:
        adata = ad.AnnData(X=X, obs=obs)
        adata.var_names = [str(i) for i in range(X.shape[1])]
    else:
        adata = ad.AnnData(obs=obs)
        adata.obsm[key_added] = X
    if xy is not None:
        adata.obsm["spatial"] = xy
    adata.uns["slide"] = {"path": str(path), "slide_id": sid}
    spec = {"tile_px": tile_px, "mpp": mpp, "slide_mpp": slide_mpp}
    if slide_mpp is not None:
        adata.uns["slide"]["mpp"] = slide_mpp
        if tile_px is not None and mpp is not None:
            spec["size_level0"] = tile_px * mpp / slide_mpp
    adata.uns["tile_spec"] = {k: v for k, v in spec.items() if v is not None}
    adata.uns["model"] = {"name": "external", "source": str(path), "features_dataset": name}
    return adata
