"""SpatialData both ways: the H&E as a lazy multiscale image read from the slide, tiles as squares, spots
as circles, the AnnData tables annotating them; and back, including LazySlide / wsidata tile zarrs."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import TableError

__all__ = ["from_spatialdata", "to_spatialdata"]

MARK = "pathkit_sdata"   # uns key naming what pathkit added to a table (so that it can be taken off again)
CHUNK = 1024             # px per side of an image chunk
MIN_SIDE = 512           # the coarsest pyramid level is the first at most this many px on its longer side


def _need():
    try:
        import spatialdata
    except ImportError as exc:
        raise ImportError(f"SpatialData conversion needs spatialdata: pip install \"pathkit[spatial]\" ({exc})") \
            from exc
    return spatialdata


def _read_zarr(spatialdata, path):
    """``spatialdata.read_zarr(path)``, with one CorruptFileError naming the store when it cannot be read."""
    from pathlib import Path

    from ..errors import CorruptFileError

    path = Path(path)
    if not path.exists():
        raise CorruptFileError(f"{path}: no such SpatialData zarr store")
    if not path.is_dir() or not any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zattrs")):
        raise CorruptFileError(f"{path}: not a zarr store (a zarr store is a folder with zarr.json or .zgroup); "
                               "pass the folder written by sdata.write(...)")
    try:
        sdata = spatialdata.read_zarr(path)
    except Exception as exc:  # zarr, ome-zarr, xarray and anndata each raise their own
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CorruptFileError(f"{path}: cannot read this SpatialData zarr store ({type(exc).__name__}: {first}); "
                               "it is damaged or was written by another program: write it again "
                               "(sdata.write) or copy it again") from exc
    kinds = ("images", "labels", "points", "shapes", "tables")
    if not any(len(getattr(sdata, k, None) or {}) for k in kinds):  # elements it could not read are skipped
        raise CorruptFileError(f"{path}: the SpatialData zarr store holds no element that could be read; it is "
                               "damaged or empty: write it again (sdata.write) or copy it again")
    return sdata


def _lazy_level(slide, shape_yx, full_wh):
    """A dask array (3, h, w) uint8 whose chunks are read from the slide on demand (level-0 boxes
    resampled to this level), so that no level is ever held whole."""
    import dask.array as da

    h, w = shape_yx
    fx, fy = full_wh[0] / w, full_wh[1] / h

    def block(block_info=None):
        (c0, c1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
        arr = slide.read_level0_box((x0 * fx, y0 * fy, x1 * fx, y1 * fy), (x1 - x0, y1 - y0))
        return np.ascontiguousarray(arr.transpose(2, 0, 1)[c0:c1])

    return da.map_blocks(block, dtype=np.uint8, chunks=((3,), _chunks(h), _chunks(w)))


def _chunks(n):
    return tuple([CHUNK] * (n // CHUNK) + ([n % CHUNK] if n % CHUNK else []))


def _image(slide, image_mpp: float | None):
    """The slide as a multiscale image: level 0 at ``image_mpp`` (default the slide's), then halved down to
    about MIN_SIDE px; mapped to level-0 px ("global") by a scale when coarser than the slide."""
    import dask.array as da
    from spatialdata.models import Image2DModel
    from spatialdata.transformations import Identity, Scale

    W, H = (int(v) for v in slide.dimensions)
    f = 1.0 if image_mpp is None else max(1.0, float(image_mpp) / float(slide.mpp))
    w, h = max(1, int(W / f)), max(1, int(H / f))
    n_levels = 0
    while max(w, h) / 2 ** n_levels > MIN_SIDE * 2 and n_levels < 12:
        n_levels += 1
    # a few large chunks: the stub only gives the pyramid its shapes and transformations (its data is replaced)
    stub = da.zeros((3, h, w), dtype=np.uint8, chunks=(3, 16 * CHUNK, 16 * CHUNK))
    to_global = Identity() if f == 1.0 else Scale([W / w, H / h], axes=("x", "y"))
    tree = Image2DModel.parse(stub, dims=("c", "y", "x"), c_coords=["r", "g", "b"],
                              scale_factors=[2] * n_levels if n_levels else None,
                              transformations={"global": to_global},
                              chunks=(3, 16 * CHUNK, 16 * CHUNK) if n_levels else None)
    if not n_levels:
        return tree.copy(data=_lazy_level(slide, (h, w), (W, H)))
    for name in list(tree.children):
        node = tree[name]
        var = next(iter(node.data_vars))
        lvl = node[var]
        node[var] = lvl.copy(data=_lazy_level(slide, (lvl.sizes["y"], lvl.sizes["x"]), (W, H)))
    return tree


def _kind(adata) -> str:
    return "spots" if "spot_spec" in adata.uns else "tiles"


def _table(adata, region: str):
    from spatialdata.models import TableModel

    t = adata.copy()
    added = [c for c in ("region", "instance_id") if c not in t.obs.columns]
    if len(added) < 2:
        raise TableError(f"{region}: obs already has a 'region' / 'instance_id' column; rename it first")
    t.obs["region"] = pd.Categorical([region] * t.n_obs)
    t.obs["instance_id"] = np.arange(t.n_obs)
    t.uns[MARK] = {"obs_added": added, "kind": _kind(adata)}
    return TableModel.parse(t, region=region, region_key="region", instance_key="instance_id")


def _shapes(adata, kind: str):
    import geopandas as gpd
    import shapely
    from spatialdata.models import ShapesModel

    if kind == "spots":
        xy = np.asarray(adata.obsm["spatial"], dtype=np.float64)[:, :2]
        lib = next(iter(adata.uns["spatial"].values()))
        d = float(lib["scalefactors"]["spot_diameter_fullres"])
        if (adata.uns.get("spot_spec") or {}).get("spot_shape") == "square":  # Visium HD bins
            gdf = gpd.GeoDataFrame(geometry=shapely.box(xy[:, 0] - d / 2, xy[:, 1] - d / 2, xy[:, 0] + d / 2,
                                                        xy[:, 1] + d / 2), index=np.arange(len(xy)))
            return ShapesModel.parse(gdf)
        return ShapesModel.parse(xy, geometry=0, radius=np.full(len(xy), d / 2), index=np.arange(len(xy)))
    spec = adata.uns.get("tile_spec") or {}
    if "size_level0" not in spec:
        raise TableError("tiles.uns['tile_spec']['size_level0'] is missing; make the tiles with pk.pp.tile")
    s = float(spec["size_level0"])
    x, y = adata.obs["x"].to_numpy(np.float64), adata.obs["y"].to_numpy(np.float64)
    gdf = gpd.GeoDataFrame(geometry=shapely.box(x, y, x + s, y + s), index=np.arange(len(x)))
    return ShapesModel.parse(gdf)


def _collect(data) -> dict:
    import anndata as ad

    if isinstance(data, ad.AnnData):
        return {_kind(data): data}
    if hasattr(data, "mod"):
        data = dict(data.mod)
    if isinstance(data, (list, tuple)):
        data = {_kind(a): a for a in data}
    if not isinstance(data, dict) or not all(isinstance(a, ad.AnnData) for a in data.values()):
        raise TypeError("to_spatialdata takes a tiles or spots AnnData, a MuData, or a list / dict of them")
    return {str(k): a for k, a in data.items() if "tile_spec" in a.uns or "spot_spec" in a.uns}


def to_spatialdata(data, slide=None, *, image: bool = True, image_mpp: float | None = None):
    """A :class:`spatialdata.SpatialData` of the slide, its tiles and spots, in level-0 px (``"global"``).

    Parameters
    ----------
    data
        A tiles AnnData (``pk.pp.tile``), a spots AnnData (``pk.io.read_*``), a MuData or a list / dict of
        them (dict keys name the elements; default ``"tiles"`` / ``"spots"``).
    slide
        The slide (path or Slide); default the file of ``uns["slide"]``.
    image
        Include the H&E as image ``"he"``: a multiscale pyramid (factor 2 down to about 512 px) whose chunks
        are read from the slide only when used (``sdata.write`` streams them), never a copy in RAM.
    image_mpp
        Resolution of the image's finest level in um/px (default: the slide's own); a coarser one (e.g. 2.0)
        writes far fewer pixels. The image stays registered to the shapes (a scale to level-0 px).

    Returns
    -------
    spatialdata.SpatialData
        Shapes ``<name>`` (tiles: squares of ``size_level0``; spots: circles of ``spot_diameter_fullres``,
        Visium HD bins squares of that side)
        annotated by tables ``<name>_table`` (the AnnData with obs ``region`` / ``instance_id`` added,
        noted in ``uns["pathkit_sdata"]``). ``sdata.write("x.zarr")``; read back with
        ``spatialdata.read_zarr`` and :func:`from_spatialdata`.
    """
    _need()
    from spatialdata import SpatialData

    from ..slide import read_slide, slide_of_tiles

    parts = _collect(data)
    if not parts:
        raise TableError("nothing to convert: no tiles (uns['tile_spec']) or spots (uns['spot_spec']) AnnData")
    shapes, tables, images = {}, {}, {}
    for name, adata in parts.items():
        shapes[name] = _shapes(adata, _kind(adata))
        tables[f"{name}_table"] = _table(adata, name)
    if image:
        if slide is None:
            first = next((a for a in parts.values() if "slide" in a.uns), None)
            if first is None:
                raise TableError("no slide given and no uns['slide'] to find it: pass slide=, or image=False")
            slide = slide_of_tiles(first)
        images["he"] = _image(read_slide(slide), image_mpp)
    return SpatialData(images=images, shapes=shapes, tables=tables)


def from_spatialdata(sdata, element: str | None = None):
    """The tiles (or spots) AnnData of a SpatialData: pathkit's own, or a LazySlide / wsidata tile zarr.

    Parameters
    ----------
    sdata
        A :class:`spatialdata.SpatialData` or the path of its zarr.
    element
        The shapes element (default ``"tiles"``, else ``"spots"``, else the only one).

    Returns
    -------
    anndata.AnnData
        For a table written by :func:`to_spatialdata`, the original AnnData (the added obs columns taken
        off). Otherwise pathkit's tiles AnnData built from the square shapes (obs ``x``, ``y`` the level-0
        top-left, ``obsm["spatial"]``, ``uns["tile_spec"]`` from wsidata's ``TileSpec`` of the element in
        ``sdata.attrs["tile_spec"]``, else the shapes' ``tile_spec`` attrs), each table annotating them
        giving ``obsm["X_<table>"]`` (its ``X``, e.g. LazySlide's ``<model>_tiles`` features, the ``_tiles``
        suffix dropped).
    """
    spatialdata = _need()
    if not hasattr(sdata, "shapes"):
        sdata = _read_zarr(spatialdata, sdata)
    names = list(sdata.shapes.keys())
    if element is None:
        element = next((n for n in ("tiles", "spots") if n in names), names[0] if len(names) == 1 else None)
    if element not in names:
        raise TableError(f"no shapes element {element!r} in the SpatialData (it has {names}); pass element=")
    annot = []
    for tname, t in sdata.tables.items():
        attrs = t.uns.get("spatialdata_attrs") or {}
        region = attrs.get("region")
        if element == region or (isinstance(region, (list, np.ndarray)) and element in list(region)):
            annot.append((tname, t, attrs))
    for tname, t, attrs in annot:
        if MARK in t.uns:
            out = t.copy()
            added = list(out.uns[MARK]["obs_added"])
            out.obs = out.obs.drop(columns=added)
            for k in (MARK, "spatialdata_attrs"):
                del out.uns[k]
            return out
    return _foreign_tiles(sdata, element, annot)


def _foreign_tiles(sdata, element, annot):
    import anndata as ad

    gdf = sdata.shapes[element]
    b = gdf.geometry.bounds
    n = len(gdf)
    obs = pd.DataFrame({"x": np.round(b["minx"].to_numpy()).astype(np.int64),
                        "y": np.round(b["miny"].to_numpy()).astype(np.int64)},
                       index=pd.Index([str(i) for i in gdf.index]))
    for c in gdf.columns:
        if c not in ("geometry", "x", "y"):
            obs[c] = gdf[c].to_numpy()
    out = ad.AnnData(obs=obs)
    out.obsm["spatial"] = obs[["x", "y"]].to_numpy(np.float64)
    side = float(np.median(b["maxx"].to_numpy() - b["minx"].to_numpy())) if n else 0.0
    # wsidata keeps each tile set's TileSpec in the SpatialData's attrs ("tile_spec" -> {<shapes key>: spec})
    spec = dict(((getattr(sdata, "attrs", None) or {}).get("tile_spec") or {}).get(element)
                or gdf.attrs.get("tile_spec") or {})
    tile_px = int(spec.get("width", spec.get("tile_px", round(side))))
    # a TileSpec's dict holds base_downsample (level-0 px per tile px), not its base_width property
    size0 = float(spec["base_width"]) if "base_width" in spec else \
        tile_px * float(spec["base_downsample"]) if "base_downsample" in spec else side
    stride = spec.get("stride_width")
    out.uns["tile_spec"] = {
        "tile_px": tile_px, "mpp": float(spec.get("mpp", spec.get("base_mpp", 0.0)) or 0.0),
        "size_level0": size0, "overlap": max(0, tile_px - int(stride)) if stride is not None else 0,
        "source": f"spatialdata:{element}"}
    for tname, t, attrs in annot:
        key = attrs.get("instance_key")
        ids = t.obs[key].to_numpy() if key in t.obs.columns else np.arange(t.n_obs)
        pos = pd.Index(gdf.index).get_indexer(ids)
        if (pos < 0).any():
            raise TableError(f"table {tname!r}: {int((pos < 0).sum())} row(s) annotate no {element!r} shape")
        X = t.X.toarray() if hasattr(t.X, "toarray") else np.asarray(t.X)
        feats = np.full((n, X.shape[1]), np.nan, dtype=np.float32)
        feats[pos] = X
        out.obsm["X_" + (tname.removesuffix("_tiles"))] = feats
    return out
