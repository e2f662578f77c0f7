"""DICOM whole-slide images (VL Whole Slide Microscopy): a file, a folder of one series' files, or a DICOMweb
series, through wsidicom (``pip install "pathkit[dicom]"``).

A single VL WSI instance that wsidicom refuses because it lacks the attributes that place it in a pyramid
(ImageType, DimensionOrganizationType; older converters wrote such files) is read frame by frame with pydicom
(backend name ``"pydicom"``): its frames tile the total pixel matrix row by row (TILED_FULL), each decoded by
imagecodecs; its compressed frames are held in memory (the file's size).
"""
from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import SlideReadError
from ._base import MppMetadata, PixelInfo, SlideBackend, to_rgb_uint8

WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"
_EXTRA = 'pip install "pathkit[dicom]"'


def _imports():
    try:
        import pydicom
        import wsidicom
    except ImportError as exc:
        raise SlideReadError(f"DICOM slides need wsidicom and pydicom: {_EXTRA} ({exc})") from exc
    return wsidicom, pydicom


def dicom_files(folder: Path) -> list[Path]:
    """The files of `folder` that start with a DICOM preamble (any suffix), sorted."""
    out = []
    for p in sorted(folder.iterdir()):
        if p.is_file():
            try:
                with open(p, "rb") as fh:
                    head = fh.read(132)
            except OSError:
                continue
            if head[128:132] == b"DICM":
                out.append(p)
    return out


def _describe(path: Path) -> str:
    """What a DICOM file is (SOP class, modality, image type), for messages."""
    _, pydicom = _imports()
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 - only used to word an error
        return f"unreadable DICOM ({type(exc).__name__}: {exc})"
    sop = ds.get("SOPClassUID")
    name = getattr(sop, "name", str(sop))
    return f"SOP class {name}, modality {ds.get('Modality', '?')}, image type {list(ds.get('ImageType', []))}"


def _not_wsi(path: Path, files: list[Path], exc: Exception) -> SlideReadError:
    what = "; ".join(f"{f.name}: {_describe(f)}" for f in files[:3])
    return SlideReadError(
        f"{path}: no DICOM whole-slide image (VL Whole Slide Microscopy, ImageType ...\\VOLUME) that wsidicom "
        f"can assemble into a pyramid ({what}; wsidicom: {type(exc).__name__}: {exc}). pathkit reads "
        f"microscopy slides; a CT / MR / ultrasound image is not one. For a slide split over several files, "
        f"pass the folder that holds all of them.")


class DicomBackend(SlideBackend):
    """A DICOM WSI read by wsidicom: `source` is a file, a folder, or an open ``WsiDicom`` (DICOMweb)."""

    name = "wsidicom"

    def __init__(self, path: Path, wsi=None):
        wsidicom, _ = _imports()
        self.version = f"wsidicom {wsidicom.__version__}"
        self.path = path
        if wsi is None:
            files = dicom_files(path) if path.is_dir() else [path]
            if not files:
                raise SlideReadError(f"{path}: a folder without DICOM files (none starts with the DICM "
                                     f"preamble); pass a slide file or a folder of one DICOM series")
            try:
                wsi = wsidicom.WsiDicom.open(files if path.is_dir() else path)
            except Exception as exc:
                raise _not_wsi(path, files, exc) from exc
        self.wsi = wsi
        try:
            self._setup()
        except Exception:
            wsi.close()
            raise

    def _setup(self):
        wsi = self.wsi
        levels = list(wsi.levels)
        base = levels[0]
        self._levels = [lv.level for lv in levels]
        self.dimensions = (int(base.size.width), int(base.size.height))
        self.level_dimensions = [(int(lv.size.width), int(lv.size.height)) for lv in levels]
        self.level_downsamples = [float(np.mean([self.dimensions[0] / w, self.dimensions[1] / h]))
                                  for w, h in self.level_dimensions]
        ds0 = base.datasets[0]
        self._ds0 = ds0
        full = ds0.as_dataset()
        props = {
            "dicom.SOPClassUID": str(full.get("SOPClassUID", "")),
            "dicom.StudyInstanceUID": str(full.get("StudyInstanceUID", "")),
            "dicom.SeriesInstanceUID": str(full.get("SeriesInstanceUID", "")),
            "dicom.PhotometricInterpretation": str(ds0.photometric_interpretation),
            "dicom.ImageType": str(ds0.image_type),
            "dicom.TransferSyntaxUID": str(getattr(getattr(full, "file_meta", None), "TransferSyntaxUID", "")),
        }
        for key in ("Manufacturer", "ManufacturerModelName", "ContainerIdentifier", "SpecimenDescriptionSequence"):
            if key in full and key != "SpecimenDescriptionSequence":
                props[f"dicom.{key}"] = str(full.get(key))
        self._icc = {}
        for i, op in enumerate(full.get("OpticalPathSequence", []) or []):
            ident = str(op.get("OpticalPathIdentifier", i))
            props[f"dicom.optical-path[{i}].identifier"] = ident
            if "ObjectiveLensPower" in op:
                props[f"dicom.optical-path[{i}].objective-lens-power"] = str(op.ObjectiveLensPower)
            for seq, name in (("IlluminationTypeCodeSequence", "illumination-type"),
                              ("IlluminationColorCodeSequence", "illumination-color")):
                if op.get(seq):
                    props[f"dicom.optical-path[{i}].{name}"] = str(op.get(seq)[0].get("CodeMeaning", ""))
            if "ICCProfile" in op:
                self._icc[ident] = bytes(op.ICCProfile)
                props[f"dicom.optical-path[{i}].icc-profile-bytes"] = str(len(op.ICCProfile))
        self.properties = props
        self.vendor = str(full.get("Manufacturer")) if full.get("Manufacturer") else "dicom"
        mags = [props[k] for k in props if k.endswith("objective-lens-power")]
        try:
            self.magnification = float(mags[0]) if mags else None
        except ValueError:
            self.magnification = None

    def icc_profiles(self) -> dict:
        """The ICC profiles of the optical paths, raw bytes by optical path identifier."""
        return dict(self._icc)

    def mpp_metadata(self) -> MppMetadata | None:
        ps = self._ds0.pixel_spacing
        if ps is None:
            return None
        # PixelSpacing is in mm: (row spacing = height, column spacing = width)
        return MppMetadata(float(ps.width) * 1000.0, float(ps.height) * 1000.0,
                           "DICOM PixelSpacing (Pixel Measures functional group)")

    def pixel_info(self) -> PixelInfo:
        ds = self._ds0
        if int(ds.samples_per_pixel) == 3 and int(ds.bits) == 8:
            return PixelInfo(rgb8=True)
        return PixelInfo(rgb8=False, channels=int(ds.samples_per_pixel), axes="YXS",
                         dtype=f"{ds.bits}-bit {ds.photometric_interpretation}", what="DICOM image")

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        arr = self.wsi.read_region((x0, y0), self._levels[level], (x1 - x0, y1 - y0), as_array=True)
        return to_rgb_uint8(np.asarray(arr))

    def associated_images(self) -> dict:
        out = {}
        for name, attr, reader in (("label", "labels", "read_label"), ("overview", "overviews", "read_overview")):
            if getattr(self.wsi, attr, None):
                out[name] = getattr(self.wsi, reader)().convert("RGB")
        return out

    def close(self) -> None:
        self.wsi.close()


class FramesBackend(SlideBackend):
    """One VL WSI instance read frame by frame with pydicom + imagecodecs (see the module docstring)."""

    name = "pydicom"

    def __init__(self, path: Path, why: str = ""):
        import imagecodecs

        _, pydicom = _imports()
        from pydicom.encaps import generate_frames

        self.version = f"pydicom {pydicom.__version__}"
        self.path = path
        try:
            ds = pydicom.dcmread(path)
            n = int(ds.get("NumberOfFrames", 1))
            W, H = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
            fw, fh = int(ds.Columns), int(ds.Rows)
            encapsulated = ds.file_meta.TransferSyntaxUID.is_encapsulated
            frames = list(generate_frames(ds.PixelData, number_of_frames=n)) if encapsulated else None
        except Exception as exc:
            raise SlideReadError(f"{path}: cannot read this DICOM slide ({type(exc).__name__}: {exc})") from exc
        nx, ny = math.ceil(W / fw), math.ceil(H / fh)
        if frames is None or n != nx * ny or ds.get("PerFrameFunctionalGroupsSequence") is not None:
            raise SlideReadError(
                f"{path}: wsidicom cannot place its frames ({why}) and they are not a compressed row-by-row "
                f"tiling of the {W}x{H} pixel matrix ({n} frames of {fw}x{fh}); convert it with wsidicomizer")
        self._ds, self._frames, self._grid = ds, frames, (nx, fw, fh)
        self._decode = imagecodecs.imread
        self.dimensions = (W, H)
        self.level_dimensions = [(W, H)]
        self.level_downsamples = [1.0]
        self.properties = {"dicom.SOPClassUID": str(ds.SOPClassUID),
                           "dicom.SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "")),
                           "dicom.PhotometricInterpretation": str(ds.PhotometricInterpretation),
                           "pathkit.dicom-reader": f"pydicom frames (wsidicom: {why})"}
        self.vendor = str(ds.get("Manufacturer")) if ds.get("Manufacturer") else "dicom"
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def mpp_metadata(self) -> MppMetadata | None:
        sfg = self._ds.get("SharedFunctionalGroupsSequence")
        try:
            ps = sfg[0].PixelMeasuresSequence[0].PixelSpacing
        except (TypeError, AttributeError, IndexError, KeyError):
            return None
        return MppMetadata(float(ps[1]) * 1000.0, float(ps[0]) * 1000.0, "DICOM PixelSpacing")

    def pixel_info(self) -> PixelInfo:
        ds = self._ds
        if int(ds.SamplesPerPixel) == 3 and int(ds.BitsAllocated) == 8:
            return PixelInfo(rgb8=True)
        return PixelInfo(rgb8=False, channels=int(ds.SamplesPerPixel), dtype=f"{ds.BitsAllocated}-bit",
                         what="DICOM image")

    def _frame(self, i: int) -> np.ndarray:
        with self._lock:
            hit = self._cache.get(i)
            if hit is not None:
                self._cache.move_to_end(i)
                return hit
        arr = to_rgb_uint8(np.asarray(self._decode(self._frames[i])))
        with self._lock:
            self._cache[i] = arr
            while len(self._cache) > 64:
                self._cache.popitem(last=False)
        return arr

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        nx, fw, fh = self._grid
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for ty in range(y0 // fh, (y1 - 1) // fh + 1):
            for tx in range(x0 // fw, (x1 - 1) // fw + 1):
                f = self._frame(ty * nx + tx)
                py, px = ty * fh, tx * fw
                ya, yb = max(y0, py), min(y1, py + f.shape[0])
                xa, xb = max(x0, px), min(x1, px + f.shape[1])
                out[ya - y0:yb - y0, xa - x0:xb - x0] = f[ya - py:yb - py, xa - px:xb - px]
        return out


def open_dicom(path: Path) -> SlideBackend:
    """wsidicom, or the frame reader for a lone VL WSI instance wsidicom cannot place."""
    # pydicom validates values lazily, on first access, and warns about the file's own flaws (a UID of 65
    # characters) under every read: one filter around the whole opening, every reader inside it
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The value length", category=UserWarning)
        return _open_dicom(path)


def _open_dicom(path: Path) -> SlideBackend:
    try:
        return DicomBackend(path)
    except SlideReadError as exc:
        cause = exc.__cause__
        if path.is_file() and cause is not None and type(cause).__name__ == "WsiDicomNotFoundError":
            _, pydicom = _imports()
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if str(ds.get("SOPClassUID")) == WSI_SOP_CLASS and "ImageType" not in ds:
                return FramesBackend(path, why=f"{cause}")
        raise
