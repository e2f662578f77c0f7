"""QuPath-compatible GeoJSON: read annotations drawn in QuPath, write tissue contours and tiles back.

QuPath exports objects as GeoJSON Features in level-0 pixel coordinates (origin top-left) with
``properties.objectType`` ("annotation", "detection", "tile", "cell"; ``object_type`` before 0.4),
``properties.classification`` (``{"name", "color": [r, g, b]}``; ``colorRGB`` as a packed int before 0.4),
an optional ``properties.name`` and ``properties.measurements`` (a dict; a list of ``{"name", "value"}``
before 0.4). A file is a FeatureCollection, a bare list of Features, or one Feature. All geometry work is
shapely's.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import PathkitError

_OBJECT_TYPES = {"annotation", "detection", "tile", "cell", "tma_core", "root"}

# Writers of other AnnData kinds, registered by their own subpackage (pathkit.cells registers the cells
# AnnData) so that this module never imports them: (accepts(obj), features(obj, classification,
# measurements, object_type) -> list of GeoJSON Features).
FEATURE_WRITERS: list = []


class GeoJSONError(PathkitError, ValueError):
    """A GeoJSON file is not a QuPath export, or does not fit the slide."""


def _features(doc, path) -> list:
    if isinstance(doc, list):
        feats = doc
    elif isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features") or []
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, dict) and doc.get("type") in ("Polygon", "MultiPolygon", "Point", "LineString"):
        raise GeoJSONError(f"{path}: a bare {doc['type']} geometry, not QuPath objects (Features with "
                           "properties.objectType); wrap it in a Feature or export the objects from QuPath")
    else:
        raise GeoJSONError(f"{path}: not GeoJSON (expected a FeatureCollection, a list of Features or a Feature)")
    bad = [i for i, f in enumerate(feats) if not isinstance(f, dict) or f.get("type") != "Feature"]
    if bad:
        raise GeoJSONError(f"{path}: entries {bad[:5]} are not GeoJSON Features")
    return feats


def _label(props: dict):
    cls = props.get("classification")
    if isinstance(cls, dict) and cls.get("name") not in (None, ""):
        return str(cls["name"])
    if isinstance(cls, str) and cls:
        return cls
    return None


def _colour(props: dict):
    cls = props.get("classification") if isinstance(props.get("classification"), dict) else {}
    col = cls.get("color", props.get("color"))
    if isinstance(col, (list, tuple)) and len(col) >= 3:
        return [int(c) for c in col[:3]]
    rgb = cls.get("colorRGB", props.get("colorRGB"))
    if isinstance(rgb, (int, float)):
        v = int(rgb) & 0xFFFFFF
        return [(v >> 16) & 255, (v >> 8) & 255, v & 255]
    return None


def _measurements(props: dict) -> dict:
    m = props.get("measurements")
    if isinstance(m, dict):
        return {str(k): v for k, v in m.items()}
    if isinstance(m, list):
        return {str(d["name"]): d.get("value") for d in m if isinstance(d, dict) and "name" in d}
    return {}


def _valid(geom, fid, path):
    """shapely's make_valid, polygonal parts only, with a warning naming the feature."""
    import shapely

    if geom.is_valid:
        return geom
    why = shapely.is_valid_reason(geom)
    fixed = shapely.make_valid(geom)
    if fixed.geom_type == "GeometryCollection":
        polys = [g for g in fixed.geoms if g.geom_type in ("Polygon", "MultiPolygon")]
        fixed = shapely.union_all(polys) if polys else fixed
    warnings.warn(f"{path}: feature {fid!r} had an invalid geometry ({why}); repaired with shapely.make_valid "
                  f"(area {geom.area:.1f} -> {fixed.area:.1f} px^2)", stacklevel=3)
    return fixed


def read_geojson(path, *, slide=None, qupath: bool = True) -> pd.DataFrame:
    """Read QuPath objects (annotations, detections, tiles) from a GeoJSON file.

    Parameters
    ----------
    path
        A ``.geojson`` / ``.json`` file exported by QuPath (0.2 to 0.5 layouts).
    slide
        A :class:`~pathkit.slide.Slide`, its path, or a ``(width, height)``: objects must lie inside it
        (level-0 px); one that does not raises :class:`GeoJSONError` (wrong slide, or exported at another
        scale).
    qupath
        True: every Feature must carry ``properties.objectType`` (QuPath's mark). False reads any GeoJSON
        Features with pixel coordinates (objectType "annotation" is assumed).

    Returns
    -------
    pandas.DataFrame
        One row per object: ``id``, ``object_type``, ``classification`` (class name or None), ``name``,
        ``color`` ([r, g, b] or None), ``geometry`` (shapely, valid: invalid rings are repaired with a
        warning), then one column per measurement.
    """
    import shapely.errors
    import shapely.geometry

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise GeoJSONError(f"{path}: not JSON ({e}): cut short or not a GeoJSON file; export the objects from "
                           "QuPath again (File > Export objects as GeoJSON)") from None
    feats = _features(doc, path)
    if not feats:
        raise GeoJSONError(f"{path}: no features: nothing to read (export the objects from QuPath with "
                           "File > Export objects as GeoJSON)")
    rows = []
    for i, f in enumerate(feats):
        props = f.get("properties") or {}
        otype = props.get("objectType", props.get("object_type"))
        if qupath and otype is None:
            raise GeoJSONError(f"{path}: feature {i} has no properties.objectType: not a QuPath export "
                               "(pass qupath=False to read plain GeoJSON in level-0 pixels)")
        if otype is not None and str(otype).lower() not in _OBJECT_TYPES:
            raise GeoJSONError(f"{path}: feature {i} has objectType {otype!r}, not one of {sorted(_OBJECT_TYPES)}")
        if not f.get("geometry"):
            raise GeoJSONError(f"{path}: feature {i} ({f.get('id')!r}) has no geometry")
        try:
            geom = shapely.geometry.shape(f["geometry"])
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, shapely.errors.GEOSException) as e:
            raise GeoJSONError(f"{path}: feature {i} ({f.get('id')!r}) has a malformed geometry: {e}") from None
        if geom.is_empty:
            raise GeoJSONError(f"{path}: feature {i} ({f.get('id')!r}) has an empty geometry")
        fid = f.get("id", i)
        geom = _valid(geom, fid, path)
        row = {"id": str(fid), "object_type": str(otype or "annotation").lower(), "classification": _label(props),
               "name": props.get("name"), "color": _colour(props), "geometry": geom}
        row.update({f"{k}": v for k, v in _measurements(props).items() if k not in row})
        rows.append(row)
    df = pd.DataFrame(rows)
    if slide is not None:
        _check_inside(df, slide, path)
    return df


def _dims(slide):
    if isinstance(slide, (tuple, list)) and len(slide) == 2:
        return int(slide[0]), int(slide[1]), "the slide"
    from ..slide import Slide, read_slide

    s = slide if isinstance(slide, Slide) else read_slide(slide)
    return int(s.dimensions[0]), int(s.dimensions[1]), s.slide_id


def _check_inside(df: pd.DataFrame, slide, path) -> None:
    import shapely

    w, h, sid = _dims(slide)
    b = shapely.bounds(np.asarray(df["geometry"], dtype=object))
    tol = 1.0
    out = (b[:, 0] < -tol) | (b[:, 1] < -tol) | (b[:, 2] > w + tol) | (b[:, 3] > h + tol)
    if out.any():
        i = int(np.flatnonzero(out)[0])
        raise GeoJSONError(
            f"{path}: {int(out.sum())} of {len(df)} objects lie outside {sid} ({w} x {h} level-0 px), e.g. "
            f"{df['id'].iloc[i]!r} with bounds {np.round(b[i], 1).tolist()}. Was it exported from another image, "
            "or at another scale (QuPath uses level-0 px)?")


# ------------------------------------------------------------------------------------------ writing
def _palette(values) -> dict:
    import plotly.colors as pc

    from ..pl._colors import default_palette

    cats = sorted(dict.fromkeys(values))
    out = {}
    for c, col in zip(cats, default_palette(len(cats))):
        rgb = pc.hex_to_rgb(col) if col.startswith("#") else pc.unlabel_rgb(col)
        out[c] = [round(float(v)) for v in rgb]
    return out


def mask_polygons(mask: np.ndarray, scale: float = 1.0):
    """The True region of a boolean mask as a shapely (Multi)Polygon with holes, pixel edges exact, scaled
    by `scale` (e.g. a TissueMask's downsample gives level-0 px)."""
    import shapely

    mask = np.asarray(mask, bool)
    boxes = []
    for i in np.flatnonzero(mask.any(axis=1)):
        row = np.concatenate([[False], mask[i], [False]])
        d = np.flatnonzero(np.diff(row.astype(np.int8)))
        starts, ends = d[::2], d[1::2]
        boxes.append(shapely.box(starts, i, ends, i + 1))
    if not boxes:
        return shapely.MultiPolygon()
    geom = shapely.union_all(np.concatenate(boxes))
    geom = shapely.simplify(geom, 0)  # drop the collinear vertices of the pixel staircase
    if scale != 1.0:
        geom = shapely.affinity.scale(geom, scale, scale, origin=(0, 0))
    return geom


def _feature(geom, otype, fid, label=None, color=None, name=None, measurements=None) -> dict:
    import shapely.geometry

    props = {"objectType": otype}
    if name is not None:
        props["name"] = str(name)
    if label is not None:
        props["classification"] = {"name": str(label), "color": color or [200, 0, 0]}
    if measurements:
        props["measurements"] = measurements
    return {"type": "Feature", "id": fid, "geometry": shapely.geometry.mapping(geom), "properties": props}


def write_geojson(obj, path, *, classification: str | None = None, measurements=None,
                  object_type: str | None = None, name: str | None = None) -> Path:
    """Write QuPath-compatible GeoJSON (level-0 px), to be opened with QuPath's File > Import objects.

    Parameters
    ----------
    obj
        A :class:`~pathkit.pp.tissue.TissueMask` (tissue contours, holes kept, one annotation per piece;
        pen ink as a second class "Pen" when the mask recorded it), a tiles AnnData of
        :func:`pathkit.pp.tile` (one square per tile), the DataFrame of :func:`read_geojson`, or the cells
        AnnData of :func:`pathkit.tl.segment_cells` (one detection per nucleus outline, class
        ``obs["cell_type"]`` when the model classifies, measurements ``area_um2`` ... by default).
    path
        Output file (written atomically).
    classification
        For tiles: the ``obs`` column whose value becomes each tile's QuPath class (e.g. "leiden",
        "qc_pass", a prediction); colours from pathkit's categorical palette.
    measurements
        For tiles: ``obs`` columns written as QuPath measurements (numbers), e.g. ``["tissue", "pen",
        "focus", "attention"]``.
    object_type
        QuPath object type; default "annotation" for contours, "tile" for tiles.
    name
        For contours: the class name of the tissue (default "Tissue").

    Returns
    -------
    pathlib.Path
        The file written.
    """
    from .._io import write_text_atomic
    from ..pp.tissue import TissueMask

    feats = []
    if isinstance(obj, TissueMask):
        otype = object_type or "annotation"
        tissue = mask_polygons(obj.mask, obj.downsample)
        parts = list(getattr(tissue, "geoms", [tissue]))
        for k, g in enumerate(parts):
            feats.append(_feature(g, otype, f"tissue-{k}", name or "Tissue", [60, 160, 60],
                                  measurements={"Area px^2": float(g.area)}))
        if obj.pen_mask is not None and obj.pen_mask.any():
            pen = mask_polygons(obj.pen_mask, obj.downsample)
            for k, g in enumerate(getattr(pen, "geoms", [pen])):
                feats.append(_feature(g, otype, f"pen-{k}", "Pen", [20, 20, 200]))
    elif isinstance(obj, pd.DataFrame) and "geometry" in obj:
        otype = object_type
        for _, r in obj.iterrows():
            meas = {k: float(r[k]) for k in (measurements or []) if pd.notna(r[k])}
            feats.append(_feature(r["geometry"], otype or r.get("object_type", "annotation"), str(r["id"]),
                                  r.get("classification"), r.get("color"), r.get("name"), meas))
    elif any(accepts(obj) for accepts, _ in FEATURE_WRITERS):
        write = next(fn for accepts, fn in FEATURE_WRITERS if accepts(obj))
        feats = write(obj, classification, measurements, object_type)
    elif hasattr(obj, "obs") and hasattr(obj, "uns"):
        feats = _tile_features(obj, classification, measurements, object_type or "tile")
    else:
        raise TypeError(f"write_geojson writes a TissueMask, a tiles AnnData or read_geojson's DataFrame, "
                        f"not {type(obj).__name__}")
    doc = {"type": "FeatureCollection", "features": feats}
    return write_text_atomic(path, json.dumps(doc, allow_nan=False))


def _tile_features(tiles, classification, measurements, otype) -> list:
    import shapely

    from ..errors import TableError

    spec = tiles.uns.get("tile_spec")
    if not spec:
        raise TableError("tiles.uns['tile_spec'] is missing: make the tiles with pk.pp.tile(slide)")
    cols = [c for c in [classification, *(measurements or [])] if c is not None]
    missing = [c for c in ["x", "y", *cols] if c not in tiles.obs]
    if missing:
        raise TableError(f"tiles.obs lacks column(s) {missing}; available: {list(tiles.obs.columns)}")
    size = float(spec["size_level0"])
    x = tiles.obs["x"].to_numpy(np.float64)
    y = tiles.obs["y"].to_numpy(np.float64)
    squares = shapely.box(x, y, x + size, y + size)
    labels = tiles.obs[classification].astype(object).where(tiles.obs[classification].notna(), None).tolist() \
        if classification else [None] * len(x)
    pal = _palette([str(v) for v in labels if v is not None]) if classification else {}
    feats = []
    for i, (g, lab) in enumerate(zip(squares, labels)):
        meas = {}
        for c in measurements or []:
            v = tiles.obs[c].iloc[i]
            if pd.notna(v):
                meas[c] = float(v)
        feats.append(_feature(g, otype, str(tiles.obs_names[i]), None if lab is None else str(lab),
                              pal.get(str(lab)), measurements=meas))
    return feats
