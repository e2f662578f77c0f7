"""Label tiles by the annotation polygons (QuPath GeoJSON) that contain them."""
from __future__ import annotations

import numpy as np
import pandas as pd


def annotate_tiles(tiles, annotations, *, label: str = "classification", key_added: str = "annotation",
                   min_overlap: float | None = None, copy: bool = False):
    """Give each tile the label of the annotation polygon that contains it.

    A tile is inside a polygon when its centre is (``min_overlap=None``), or when at least ``min_overlap`` of
    its area is. Where polygons overlap, the smallest one containing the tile wins (the most specific
    region: a tumour outline drawn inside a tissue outline labels its tiles "tumour").

    Parameters
    ----------
    tiles
        AnnData of :func:`pathkit.pp.tile` (obs ``x``, ``y``; uns ``tile_spec``; uns ``slide``).
    annotations
        The path of a QuPath GeoJSON export, or the DataFrame of :func:`pathkit.io.read_geojson`. Objects
        outside the slide raise :class:`~pathkit.io.GeoJSONError`.
    label
        Column of the annotations giving the label ("classification", QuPath's class; "name"; or a
        measurement). Annotations whose label is missing fall back to their ``name``.
    key_added
        obs column written.
    min_overlap
        Share of the tile area that must be inside (0-1); None uses the tile centre.
    copy
        Return a modified copy instead of writing in place.

    Returns
    -------
    None, or an AnnData when ``copy=True``. Sets ``obs[key_added]`` (categorical; NaN outside every
    polygon) and ``uns[key_added]`` (``n_annotations``, ``n_labelled``, ``counts`` per label, ``source``).
    """
    import shapely

    from ..errors import TableError
    from ..io._geojson import GeoJSONError, read_geojson

    adata = tiles.copy() if copy else tiles
    spec = adata.uns.get("tile_spec")
    if not spec or "x" not in adata.obs or "y" not in adata.obs:
        raise TableError("tiles need obs 'x', 'y' and uns['tile_spec']: make them with pk.pp.tile(slide)")
    dims = (adata.uns.get("slide") or {}).get("dimensions")
    source = None
    if isinstance(annotations, pd.DataFrame):
        ann = annotations
        if dims is not None:
            from ..io._geojson import _check_inside

            _check_inside(ann, tuple(dims), "annotations")
    else:
        source = str(annotations)
        ann = read_geojson(annotations, slide=tuple(dims) if dims is not None else None)
    if "geometry" not in ann:
        raise TableError("annotations lack a 'geometry' column: read them with pk.io.read_geojson(path)")
    if label not in ann:
        raise TableError(f"annotations have no column {label!r}; available: {list(ann.columns)}")
    polys = np.asarray(ann["geometry"], dtype=object)
    keep = np.array([g.geom_type in ("Polygon", "MultiPolygon") for g in polys])
    if not keep.any():
        raise GeoJSONError(f"{source or 'annotations'}: no polygon among {len(polys)} objects; only polygons "
                           "label tiles")
    ann, polys = ann[keep], polys[keep]
    labels = ann[label].astype(object)
    if "name" in ann and label != "name":
        labels = labels.where(labels.notna(), ann["name"])
    labels = labels.to_numpy()
    if pd.isna(labels).all():
        raise TableError(f"no annotation has a {label!r} (or a name): nothing to label tiles with")

    size = float(spec["size_level0"])
    x = adata.obs["x"].to_numpy(np.float64)
    y = adata.obs["y"].to_numpy(np.float64)
    areas = shapely.area(polys)
    order = np.argsort(areas, kind="stable")[::-1]  # largest first: smaller ones overwrite
    out = np.full(len(x), None, dtype=object)
    boxes = shapely.box(x, y, x + size, y + size) if min_overlap is not None else None
    for j in order:
        if pd.isna(labels[j]):
            continue
        g = polys[j]
        shapely.prepare(g)
        if min_overlap is None:
            inside = shapely.contains_xy(g, x + size / 2, y + size / 2)
        else:
            inside = shapely.area(shapely.intersection(boxes, g)) >= float(min_overlap) * size * size - 1e-9
        out[inside] = str(labels[j])
    cats = sorted({str(v) for v in labels if not pd.isna(v)})
    adata.obs[key_added] = pd.Categorical(out, categories=cats)
    counts = adata.obs[key_added].value_counts().to_dict()
    adata.uns[key_added] = {"n_annotations": len(polys), "n_labelled": int(pd.notna(out).sum()),
                            "counts": {str(k): int(v) for k, v in counts.items()}, "label": label,
                            **({"source": source} if source else {})}
    return adata if copy else None
