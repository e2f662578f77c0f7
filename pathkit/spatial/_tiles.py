"""H&E tiles for spots: one tile centred on each spot (HEST's convention) so that ``pk.tl.embed_tiles``
embeds spots directly, and spots mapped onto an ordinary tile grid (pseudo-spots) for whole-slide work."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import sparse

from ..errors import TableError
from ._spots import check_inside

__all__ = ["map_spots", "tile_spots"]


def _check_slide(spots, slide) -> None:
    link = (spots.uns.get("spot_spec") or {}).get("slide") or {}
    sha = link.get("sha256")
    if sha and sha != slide.sha256():
        raise TableError(f"the spots were read against {link.get('path')} (sha256 {sha[:12]}...), not "
                         f"{slide.path}: pass the slide the spot pixels refer to")
    spec_mpp = (spots.uns.get("spot_spec") or {}).get("mpp")
    if spec_mpp and abs(float(spec_mpp) - float(slide.mpp)) > 0.02 * float(slide.mpp):
        raise TableError(f"the spots were read with mpp {spec_mpp:g}, but {slide.path} has mpp {slide.mpp:g}: "
                         "open the slide with the same mpp (pk.read_slide(path, mpp=...))")


def tile_spots(slide, spots, tile_px: int = 224, mpp: float = 0.5, *, tissue=None, copy: bool = False):
    """Give each spot one H&E tile centred on it, ready for :func:`pathkit.tl.embed_tiles`.

    The tile is ``tile_px`` px at ``mpp`` um/px (HEST-Benchmark: 224 px at 0.5 um/px, 112 um), its level-0
    top-left is the spot centre minus half its side, rounded to the pixel (so every tile's centre is within
    half a level-0 pixel of its spot). Tiles reaching past the image are padded white, as ``Slide.read_tile``
    does.

    Parameters
    ----------
    slide
        The :class:`~pathkit.slide.Slide` the spot pixels refer to.
    spots
        The spots AnnData of a ``pk.io.read_*`` reader.
    tile_px, mpp
        Tile side in px and its resolution in um/px.
    tissue
        A :class:`~pathkit.pp.tissue.TissueMask` (default ``pk.pp.find_tissue(slide)``): the QC of the spots.
    copy
        Return a modified copy instead of writing into ``spots``.

    Returns
    -------
    anndata.AnnData or None
        Sets the following fields (the tiles AnnData contract of ``pk.pp.tile``, so ``pk.tl.embed_tiles(spots,
        slide, model)`` writes ``spots.obsm["X_<model>"]``):

        ``obs["x"]``, ``obs["y"]`` (int64)
            Level-0 top-left of each spot's tile.
        ``obs["tissue"]`` (float64), ``obs["on_tissue"]`` (bool)
            Share of the tile under the tissue mask; whether the spot centre is on tissue.
        ``uns["tile_spec"]``, ``uns["slide"]``
            As ``pk.pp.tile`` (``centred_on="spots"``); ``uns["spot_spec"]["qc"]`` counts spots on tissue.
    """
    import anndata as ad

    from .._io import h5ad_safe
    from ..pp.tissue import mask_for
    from ..slide import read_slide

    if not isinstance(spots, ad.AnnData) or "spatial" not in spots.obsm:
        raise TableError("spots must be the AnnData of a pk.io.read_* reader (obsm['spatial'] in level-0 px)")
    slide = read_slide(slide)
    _check_slide(spots, slide)
    if tile_px <= 0 or mpp <= 0:
        raise ValueError(f"tile_px and mpp must be positive, got {tile_px}, {mpp}")
    adata = spots.copy() if copy else spots
    xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
    check_inside(xy, slide.dimensions, "spots", next(iter(adata.uns.get("spatial", {}).values()), {})
                 .get("scalefactors"))
    level, eff_ds, resized = slide.tile_geometry(int(tile_px), float(mpp))
    size0 = int(tile_px) * eff_ds
    x0 = np.round(xy[:, 0] - size0 / 2).astype(np.int64)
    y0 = np.round(xy[:, 1] - size0 / 2).astype(np.int64)
    tissue = mask_for(slide, tissue)
    adata.obs["x"], adata.obs["y"] = x0, y0
    adata.obs["tissue"] = tissue.area_fraction(x0, y0, x0 + size0, y0 + size0).astype(np.float64)
    m = tissue.mask
    r = np.clip((xy[:, 1] / tissue.downsample).astype(int), 0, m.shape[0] - 1)
    c = np.clip((xy[:, 0] / tissue.downsample).astype(int), 0, m.shape[1] - 1)
    adata.obs["on_tissue"] = np.asarray(m[r, c], dtype=bool)
    adata.uns["tile_spec"] = h5ad_safe({
        "tile_px": int(tile_px), "mpp": float(mpp), "overlap": 0, "level": int(level),
        "downsample": float(slide.level_downsamples[level]), "slide_mpp": float(slide.mpp),
        "size_level0": float(size0), "min_tissue": 0.0, "resized": bool(resized), "centred_on": "spots"})
    adata.uns["slide"] = h5ad_safe(slide.info())
    spec = dict(adata.uns.get("spot_spec") or {})
    n_on = int(adata.obs["on_tissue"].sum())
    spec["qc"] = {"n_spots": int(adata.n_obs), "n_on_tissue": n_on,
                  "share_on_tissue": n_on / max(adata.n_obs, 1), "tissue_method": tissue.method}
    adata.uns["spot_spec"] = h5ad_safe(spec)
    return adata if copy else None


def map_spots(tiles, spots, *, key_added: str = "tile"):
    """Assign spots to an ordinary tile grid and sum their counts per tile (pseudo-spots).

    Each spot goes to the tile containing its centre (the nearest tile centre when tiles overlap); spots
    outside every tile get no tile. Written into ``spots.obs[key_added]`` (the tile's obs name, or NaN).

    Parameters
    ----------
    tiles
        The tiles AnnData of :func:`pathkit.pp.tile` (same slide as the spots).
    spots
        The spots AnnData (``layers["counts"]``, ``obsm["spatial"]`` in the slide's level-0 px).
    key_added
        ``spots.obs`` column receiving each spot's tile.

    Returns
    -------
    anndata.AnnData
        Pseudo-spots: one row per tile holding at least one spot (obs_names the tile's), ``X`` and
        ``layers["counts"]`` the summed counts, ``obs["n_spots"]``, the tiles' ``obs`` columns and every
        ``obsm`` of the tiles (embeddings), ``obsm["spatial"]`` the tile centre, ``uns`` ``tile_spec``,
        ``slide`` and ``spot_spec``.
    """
    import anndata as ad
    from scipy.spatial import cKDTree

    spec = tiles.uns.get("tile_spec") or {}
    if "size_level0" not in spec or not {"x", "y"} <= set(tiles.obs.columns):
        raise TableError("tiles must be the AnnData of pk.pp.tile (obs x, y; uns['tile_spec']['size_level0'])")
    t_link, s_link = (tiles.uns.get("slide") or {}).get("sha256"), \
        ((spots.uns.get("spot_spec") or {}).get("slide") or {}).get("sha256")
    if t_link and s_link and t_link != s_link:
        raise TableError("the tiles and the spots come from different slides (sha256 differ)")
    size0 = float(spec["size_level0"])
    tx, ty = tiles.obs["x"].to_numpy(np.float64), tiles.obs["y"].to_numpy(np.float64)
    xy = np.asarray(spots.obsm["spatial"], dtype=np.float64)[:, :2]
    if tiles.n_obs == 0:
        raise TableError("the tiles AnnData is empty")
    _, idx = cKDTree(np.stack([tx + size0 / 2, ty + size0 / 2], 1)).query(xy)
    inside = (xy[:, 0] >= tx[idx]) & (xy[:, 0] < tx[idx] + size0) & \
             (xy[:, 1] >= ty[idx]) & (xy[:, 1] < ty[idx] + size0)
    names = np.asarray(tiles.obs_names, dtype=object)[idx]
    spots.obs[key_added] = pd.Series(np.where(inside, names, None), index=spots.obs_names, dtype=object)
    used = np.unique(idx[inside])
    row = pd.Series(np.arange(len(used)), index=used)
    C = spots.layers.get("counts", spots.X)
    A = sparse.csr_matrix((np.ones(int(inside.sum())), (row.loc[idx[inside]].to_numpy(),
                                                        np.flatnonzero(inside))), shape=(len(used), spots.n_obs))
    summed = sparse.csr_matrix(A @ sparse.csr_matrix(C))
    obs = tiles.obs.iloc[used].copy()
    obs["n_spots"] = np.asarray(A.sum(1)).ravel().astype(np.int64)
    out = ad.AnnData(X=summed.copy(), obs=obs, var=spots.var.copy())
    out.layers["counts"] = summed
    for k, v in tiles.obsm.items():
        out.obsm[k] = np.asarray(v)[used]
    out.obsm["spatial"] = np.stack([tx[used] + size0 / 2, ty[used] + size0 / 2], 1)
    for k in ("tile_spec", "slide", "spot_spec"):
        src = tiles.uns if k != "spot_spec" else spots.uns
        if k in src:
            out.uns[k] = src[k]
    return out
