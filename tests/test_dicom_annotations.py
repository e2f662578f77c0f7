"""DICOM bulk annotations as shapes annotate_tiles accepts, DICOM SEG as masks: checked against the raw
attributes decoded with numpy / pydicom, not through highdicom."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import pathkit as pk

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

D = "slides/dicom/highdicom"


def test_real_bulk_annotations(shared_data):
    p = shared_data / D / "sm_annotations.dcm"
    df = pk.io.read_dicom_annotations(p)
    ds = pydicom.dcmread(p)
    g = ds.AnnotationGroupSequence[0]
    raw = np.frombuffer(g.DoublePointCoordinatesData, "<f8").reshape(-1, 2)
    assert len(df) == int(g.NumberOfAnnotations) == 2
    assert set(df["graphic_type"]) == {"POINT"} and set(df["classification"]) == {g.AnnotationGroupLabel}
    np.testing.assert_allclose([(pt.x, pt.y) for pt in df["geometry"]], raw)
    assert df["name"].iloc[0] == g.AnnotationPropertyTypeCodeSequence[0].CodeMeaning


def test_polygon_annotation_labels_tiles(shared_data, tmp_path):
    from pydicom.sr.codedict import codes

    img = pydicom.dcmread(shared_data / D / "sm_image.dcm")
    square = np.array([[0.0, 0.0], [24.0, 0.0], [24.0, 24.0], [0.0, 24.0]])
    group = hd.ann.AnnotationGroup(
        number=1, uid=hd.UID(), label="tumour", annotated_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        annotated_property_type=codes.SCT.Neoplasm, graphic_type="POLYGON", graphic_data=[square],
        algorithm_type="MANUAL")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ann = hd.ann.MicroscopyBulkSimpleAnnotations(
            source_images=[img], annotation_coordinate_type="2D", annotation_groups=[group],
            series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(), instance_number=1,
            manufacturer="pathkit test", manufacturer_model_name="none", software_versions="0",
            device_serial_number="0")
    out = tmp_path / "ann.dcm"
    ann.save_as(out)
    df = pk.io.read_dicom_annotations(out)
    assert list(df["graphic_type"]) == ["POLYGON"] and df["geometry"].iloc[0].area == pytest.approx(24 * 24)
    s = pk.read_slide(shared_data / D / "sm_image.dcm")
    tiles = pk.pp.tile(s, tile_px=10, mpp=0.499, min_tissue=0.0, qc=False)
    assert tiles.n_obs == 25
    pk.tl.annotate_tiles(tiles, df)
    inside = tiles.obs["annotation"] == "tumour"
    cx, cy = tiles.obs["x"] + 5, tiles.obs["y"] + 5
    np.testing.assert_array_equal(inside.to_numpy(), ((cx < 24) & (cy < 24)).to_numpy())  # 4 tiles


def test_seg_masks(shared_data):
    p = shared_data / D / "seg_image_sm_control.dcm"
    r = pk.io.read_dicom_seg(p)
    ds = pydicom.dcmread(p)
    assert len(r["masks"]) == len(ds.SegmentSequence) == 20
    img = pydicom.dcmread(shared_data / D / "sm_image.dcm")
    assert r["source_sop_instance_uid"] == img.SOPInstanceUID
    # independent assembly: pydicom's unpacked frames placed by their per-frame position and segment number
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    truth = {i + 1: np.zeros((ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns), bool) for i in range(20)}
    for f, fg in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        seg_no = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        pos = fg.PlanePositionSlideSequence[0]
        r0, c0 = int(pos.RowPositionInTotalImagePixelMatrix) - 1, int(pos.ColumnPositionInTotalImagePixelMatrix) - 1
        h, w = min(ds.Rows, 50 - r0), min(ds.Columns, 50 - c0)
        truth[seg_no][r0:r0 + h, c0:c0 + w] |= f[:h, :w].astype(bool)
    for i, seg in enumerate(ds.SegmentSequence):
        np.testing.assert_array_equal(r["masks"][str(seg.SegmentLabel)], truth[int(seg.SegmentNumber)])
    assert r["pixel_spacing_um"] == pytest.approx((0.499, 0.499))
