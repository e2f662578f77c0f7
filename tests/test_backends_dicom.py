"""DICOM WSI through wsidicom (a file, a folder of one series) and pydicom frames: pixels against an independent
decode (pydicom's own pixel data handlers), geometry against the DICOM attributes, and bad input."""
from __future__ import annotations

import math
import shutil
import warnings

import numpy as np
import pytest

import pathkit as pk
from pathkit.errors import MppError, SlideReadError

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("wsidicom")

CAMELYON = "slides/dicom/ezwsi/multiframe_camelyon_challenge_image.dcm"


def _read(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom: over-long UIDs / names in the test files
        return pydicom.dcmread(path)


def _matrix(ds) -> np.ndarray:
    """The total pixel matrix assembled from pydicom's decode of every frame (TILED_FULL: row by row)."""
    W, H, fw, fh = ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows, ds.Columns, ds.Rows
    frames = ds.pixel_array.reshape(-1, fh, fw, 3)  # pydicom 3 converts YBR to RGB itself
    nx = math.ceil(W / fw)
    out = np.zeros((math.ceil(H / fh) * fh, nx * fw, 3), np.uint8)
    for i, f in enumerate(frames):
        out[(i // nx) * fh:(i // nx + 1) * fh, (i % nx) * fw:(i % nx + 1) * fw] = f
    return out[:H, :W]


def _spacing_um(ds):
    ps = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
    return float(ps[1]) * 1000, float(ps[0]) * 1000  # (column = x, row = y), mm -> um


@pytest.mark.parametrize("rel", [CAMELYON, "slides/dicom/highdicom/sm_image.dcm"])
def test_file_pixels_and_geometry(shared_data, rel):
    p = shared_data / rel
    ds = _read(p)
    s = pk.read_slide(p, allow_implausible_mpp=True) if "camelyon" in rel else pk.read_slide(p)
    assert s.backend == "wsidicom" and s.info()["backend_version"].startswith("wsidicom")
    assert s.dimensions == (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows)
    mx, my = _spacing_um(ds)
    assert s.mpp == pytest.approx((mx + my) / 2) and s.mpp_source == "metadata"
    assert "PixelSpacing" in s.properties["pathkit.mpp-origin"]
    ref = _matrix(ds)
    got = s.read_region((0, 0), 0, s.dimensions)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        # both decode the same JPEG frames; libjpeg-turbo (wsidicom) vs Pillow's libjpeg in pydicom: measured
        # identical here, allow one grey level for IDCT variants
        assert np.abs(got.astype(int) - ref).max() <= 1
    else:
        np.testing.assert_array_equal(got, ref)


def test_camelyon_mpp_is_implausible(shared_data):
    # 28.97 um/px: a real but very low-resolution copy; the plausibility rule holds on DICOM as well
    with pytest.raises(MppError, match=r"28\.9.*PixelSpacing.*allow_implausible_mpp"):
        pk.read_slide(shared_data / CAMELYON)


def test_folder_is_one_slide(shared_data, tmp_path):
    folder = shared_data / "slides/dicom/openslide-python"  # a VOLUME file and a THUMBNAIL file
    s = pk.read_slide(folder)
    assert s.backend == "wsidicom" and s.slide_id == "openslide-python"
    ds = _read(folder / "boxes_0.dcm")
    assert s.dimensions == (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows) == (16, 16)
    assert s.mpp == pytest.approx(0.499)
    ref = ds.pixel_array[:16, :16]
    assert np.abs(s.read_region((0, 0), 0, (16, 16)).astype(int) - ref).max() <= 1
    # optical path and ICC profile reach the properties
    assert s.properties["dicom.optical-path[0].icc-profile-bytes"] == str(len(
        ds.OpticalPathSequence[0].ICCProfile))
    assert s.reader.icc_profiles()[s.properties["dicom.optical-path[0].identifier"]][:4] == \
        bytes(ds.OpticalPathSequence[0].ICCProfile)[:4]
    # the folder's digest covers its files
    other = tmp_path / "copy"
    shutil.copytree(folder, other)
    assert pk.read_slide(other).sha256() == s.sha256()
    (other / "boxes_1.dcm").unlink()  # the thumbnail is not a level: the slide still opens
    assert pk.read_slide(other).sha256() != s.sha256()


def test_lone_instance_without_image_type(shared_data):
    """pathml's DICOM has no ImageType: wsidicom cannot place it; pydicom frames read it."""
    p = shared_data / "slides/pathml_small_dicom.dcm"
    with pytest.raises(MppError, match=r"pathml_small_dicom\.dcm.*no microns-per-pixel.*mpp="):
        pk.read_slide(p)
    s = pk.read_slide(p, mpp=0.5)
    assert s.backend == "pydicom" and "wsidicom" in s.properties["pathkit.dicom-reader"]
    ds = _read(p)
    assert s.dimensions == (3236, 2638) == (ds.TotalPixelMatrixColumns, ds.TotalPixelMatrixRows)
    ref = _matrix(ds)
    for x, y, w, h in [(0, 0, 600, 700), (2900, 2400, 336, 238), (480, 990, 64, 64)]:
        d = np.abs(s.read_region((x, y), 0, (w, h)).astype(int) - ref[y:y + h, x:x + w])
        # imagecodecs' libjpeg-turbo vs the decoder pydicom uses: measured 7 of 1,260,000 samples of the
        # first box differ, by 1 grey level (IDCT rounding); the frame layout is exact
        assert d.max() <= 1 and (d > 0).mean() < 1e-4
    tiles = pk.pp.tile(s, 256, 0.5)
    assert tiles.n_obs > 0 and tiles.uns["slide"]["backend"] == "pydicom"


def _ct_like(path):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID, "CT"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_bad_dicom(shared_data, tmp_path):
    ct = _ct_like(tmp_path / "slice.dcm")
    with pytest.raises(SlideReadError, match=r"slice\.dcm.*CT Image Storage.*modality CT.*not one"):
        pk.read_slide(ct)
    # a series whose only level is missing: the thumbnail alone is not a slide
    lone = tmp_path / "thumb_only"
    lone.mkdir()
    shutil.copy(shared_data / "slides/dicom/openslide-python/boxes_1.dcm", lone)
    with pytest.raises(SlideReadError, match=r"thumb_only.*THUMBNAIL.*folder that holds all"):
        pk.read_slide(lone)
    # a truncated frame: the file is cut inside its pixel data
    data = (shared_data / CAMELYON).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    with pytest.raises(SlideReadError, match=r"cut\.dcm"):
        pk.read_slide(cut, allow_implausible_mpp=True).read_region((0, 0), 0, (1152, 700))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SlideReadError, match=r"empty: a folder, not a slide"):
        pk.read_slide(empty)


def test_missing_extra_named(shared_data, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wsidicom", None)
    with pytest.raises(SlideReadError, match=r'pip install "pathkit\[dicom\]"'):
        pk.read_slide(shared_data / "slides/dicom/highdicom/sm_image.dcm")


def test_cohort_treats_series_folder_as_one_slide(shared_data, tmp_path):
    from pathkit.tl._cohort_inputs import _slides_table

    cohort = tmp_path / "cohort"
    for case in ("case1", "case2"):
        shutil.copytree(shared_data / "slides/dicom/highdicom", cohort / case)
    shutil.copy(shared_data / "slides/dicom/openslide-python/boxes_0.dcm", cohort / "single.dcm")
    (cohort / "notes").mkdir()  # a folder without DICOM files is not a slide
    table = _slides_table(cohort, None)
    assert list(table["slide_id"]) == ["case1", "case2", "single"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights of the test model
        c = pk.tl.embed_cohort(cohort, tmp_path / "out", tile_model="vit_tiny_test", progress=False,
                               tile_kwargs={"tile_px": 16, "mpp": 0.499, "min_tissue": 0.0, "qc": False})
        assert c.obs.loc[["case1", "case2"], "status"].tolist() == ["ok", "ok"]
        assert c.obs.loc["case1", "n_tiles"] == 9  # 50 x 50 px: 3 x 3 tiles of 16 px
        # one digest per series folder (the SEG / annotation files in it included), the same for equal copies
        assert c.obs.loc["case1", "sha256"] == c.obs.loc["case2", "sha256"] == pk.read_slide(cohort / "case1").sha256()
        again = pk.tl.embed_cohort(cohort, tmp_path / "out", tile_model="vit_tiny_test", progress=False,
                                   tile_kwargs={"tile_px": 16, "mpp": 0.499, "min_tissue": 0.0, "qc": False})
    assert again.obs.loc["case1", "status"] == "skipped"
