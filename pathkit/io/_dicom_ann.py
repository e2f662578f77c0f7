"""DICOM Microscopy Bulk Simple Annotations as shapes (the table :func:`pathkit.tl.annotate_tiles` takes) and
DICOM SEG as masks, through highdicom (``pip install "pathkit[dicom]"``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import SlideReadError, TableError


def _highdicom():
    try:
        import highdicom
        import pydicom
    except ImportError as exc:
        raise SlideReadError(f"DICOM annotations and SEG need highdicom: pip install \"pathkit[dicom]\" ({exc})") \
            from exc
    return highdicom, pydicom


def _to_pixels(coords: np.ndarray, ann, slide, path) -> np.ndarray:
    """(n, 2|3) annotation coordinates -> (n, 2) level-0 px (x, y) of the slide's total pixel matrix."""
    if str(ann.AnnotationCoordinateType) == "2D":
        return np.asarray(coords, float)[:, :2]  # (column, row), (0, 0) = top-left corner of the first pixel
    hd, _ = _highdicom()
    ds = None
    if slide is not None:
        reader = getattr(slide, "reader", None)
        ds0 = getattr(reader, "_ds0", None)
        ds = ds0.as_dataset() if ds0 is not None else None
    if ds is None:
        raise TableError(f"{path}: its annotations are in slide coordinates (mm, AnnotationCoordinateType 3D); "
                         f"pass slide= (the DICOM slide they annotate, opened with pk.read_slide) to place them "
                         f"in pixels")
    origin = ds.TotalPixelMatrixOriginSequence[0]
    spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    tr = hd.spatial.ReferenceToImageTransformer(
        image_position=(float(origin.XOffsetInSlideCoordinateSystem),
                        float(origin.YOffsetInSlideCoordinateSystem), 0.0),
        image_orientation=[float(v) for v in ds.ImageOrientationSlide],
        pixel_spacing=[float(v) for v in spacing], drop_slice_coord=True)
    # highdicom's image coordinates put pixel centres on integers, from (0, 0): corner-based px add 0.5
    return tr(np.asarray(coords, float)[:, :3]) + 0.5


def read_dicom_annotations(path, *, slide=None) -> pd.DataFrame:
    """Read a DICOM Microscopy Bulk Simple Annotations file as shapes.

    Parameters
    ----------
    path
        The annotation instance (SOP class Microscopy Bulk Simple Annotations Storage).
    slide
        The DICOM slide the annotations belong to (a :class:`~pathkit.Slide` from ``pk.read_slide``); needed
        when the coordinates are in the slide's 3D frame (mm), not in pixels.

    Returns
    -------
    pandas.DataFrame
        One row per annotation, with the columns of :func:`pathkit.io.read_geojson`: ``id``,
        ``object_type`` ("annotation"), ``classification`` (the group's label), ``name`` (the annotated
        property type, e.g. "Nucleus"), ``color`` (None), ``geometry`` (shapely, level-0 px: polygons,
        rectangles and ellipses as polygons, polylines as lines, points as points), plus ``graphic_type``
        and ``group``. :func:`pathkit.tl.annotate_tiles` labels tiles with the polygons.
    """
    import shapely.geometry as sg

    hd, pydicom = _highdicom()
    path = Path(path)
    try:
        ds = pydicom.dcmread(path)
        ann = hd.ann.MicroscopyBulkSimpleAnnotations.from_dataset(ds)
    except Exception as exc:
        raise TableError(f"{path}: not a readable DICOM Microscopy Bulk Simple Annotations instance "
                         f"({type(exc).__name__}: {exc})") from exc
    rows = []
    for gi, group in enumerate(ann.get_annotation_groups()):
        gtype = str(getattr(group.graphic_type, "value", group.graphic_type))
        prop = group.annotated_property_type.meaning
        for ai, coords in enumerate(group.get_graphic_data(coordinate_type=ann.AnnotationCoordinateType)):
            xy = _to_pixels(np.atleast_2d(coords), ann, slide, path)
            if gtype == "POINT":
                geom = sg.Point(xy[0])
            elif gtype == "POLYLINE":
                geom = sg.LineString(xy)
            elif gtype in ("POLYGON", "RECTANGLE"):
                geom = sg.Polygon(xy)
            elif gtype == "ELLIPSE":  # two axes' end points: major (0, 1), minor (2, 3)
                c = xy.mean(axis=0)
                a, b = np.linalg.norm(xy[1] - xy[0]) / 2, np.linalg.norm(xy[3] - xy[2]) / 2
                ang = np.arctan2(*(xy[1] - xy[0])[::-1])
                t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
                ex, ey = a * np.cos(t), b * np.sin(t)
                geom = sg.Polygon(np.c_[c[0] + ex * np.cos(ang) - ey * np.sin(ang),
                                        c[1] + ex * np.sin(ang) + ey * np.cos(ang)])
            else:
                raise TableError(f"{path}: graphic type {gtype} of group {group.label!r} is not supported")
            rows.append({"id": f"{gi}-{ai}", "object_type": "annotation", "classification": group.label,
                         "name": prop, "color": None, "geometry": geom, "graphic_type": gtype,
                         "group": group.label})
    if not rows:
        raise TableError(f"{path}: the annotation instance holds no annotations")
    return pd.DataFrame(rows)


def read_dicom_seg(path) -> dict:
    """Read a DICOM SEG over a slide as masks (level-0 px of the segmented slide).

    Parameters
    ----------
    path
        The segmentation instance (SOP class Segmentation Storage), tiled over a slide's total pixel matrix.

    Returns
    -------
    dict
        ``masks``: {segment label: (height, width) bool array} (a FRACTIONAL segment is thresholded at 0.5),
        ``source_sop_instance_uid``: the slide instance it segments, ``pixel_spacing_um``: (x, y).
    """
    hd, _ = _highdicom()
    path = Path(path)
    try:
        seg = hd.seg.segread(path)
        stack = seg.get_total_pixel_matrix(combine_segments=False)
    except Exception as exc:
        raise TableError(f"{path}: not a DICOM SEG tiled over a slide's pixel matrix ({type(exc).__name__}: "
                         f"{exc})") from exc
    labels = [str(s.SegmentLabel) for s in seg.SegmentSequence]
    thr = 0.5 if str(seg.SegmentationType) == "FRACTIONAL" else 0
    masks = {lab: np.asarray(stack[..., i] > thr) for i, lab in enumerate(labels)}
    try:
        ref = str(seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID)
    except (AttributeError, IndexError):
        ref = None
    ps = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    return {"masks": masks, "source_sop_instance_uid": ref,
            "pixel_spacing_um": (float(ps[1]) * 1000, float(ps[0]) * 1000)}
