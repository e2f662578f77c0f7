"""OpenSlide 4 (``openslide-bin`` + ``openslide-python``, no system library): MRXS, SCN, BIF, VMS / VMU, NDPI,
generic tiled TIFF, SVS and DICOM (``pip install "pathkit[openslide]"``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import SlideReadError
from ._base import MppMetadata, PixelInfo, SlideBackend


def _import():
    try:
        import openslide
    except ImportError as exc:
        raise SlideReadError(f"the OpenSlide backend needs openslide-python and openslide-bin: "
                             f"pip install \"pathkit[openslide]\" ({exc})") from exc
    return openslide


class OpenSlideBackend(SlideBackend):
    """A slide read by OpenSlide. Regions come as premultiplied RGBA; transparent pixels (areas the
    scanner did not image, e.g. between MRXS / VMS tiles) are blended onto white, as outside the slide."""

    name = "openslide"

    def __init__(self, path: Path):
        openslide = _import()
        self.version = f"openslide-python {openslide.__version__}, OpenSlide {openslide.__library_version__}"
        self.path = path
        try:
            fmt = openslide.OpenSlide.detect_format(str(path))
        except Exception as exc:  # noqa: BLE001 - detect_format raises on some unreadable files
            fmt, why = None, f"{type(exc).__name__}: {exc}"
        else:
            why = "OpenSlide does not recognise the format"
        if fmt is None:
            raise SlideReadError(f"{path}: cannot read this slide with OpenSlide ({why}); formats it reads: "
                                 "MRXS, SCN, BIF, VMS/VMU, NDPI, SVS, tiled TIFF, DICOM")
        try:
            osr = openslide.OpenSlide(str(path))
        except Exception as exc:
            raise SlideReadError(f"{path}: OpenSlide ({fmt}) cannot open it: {type(exc).__name__}: {exc}; the "
                                 f"file (or, for MRXS / VMS, the files beside it) may be incomplete") from exc
        self.osr = osr
        self.format = fmt
        props = dict(osr.properties)
        self.properties = {k: v for k, v in props.items() if not k.startswith("openslide.level[")}
        self.dimensions = tuple(int(v) for v in osr.dimensions)
        self.level_dimensions = [tuple(int(v) for v in d) for d in osr.level_dimensions]
        self.level_downsamples = [float(d) for d in osr.level_downsamples]
        self.vendor = props.get("openslide.vendor") or fmt
        mag = props.get("openslide.objective-power")
        try:
            self.magnification = float(mag) if mag is not None else None
        except ValueError:
            self.magnification = None
        self._props = props

    def mpp_metadata(self) -> MppMetadata | None:
        p = self._props
        mx, my = p.get("openslide.mpp-x"), p.get("openslide.mpp-y")
        if self.vendor == "aperio" and "aperio.MPP" in p:
            raw = p["aperio.MPP"]
            return MppMetadata(raw if mx is None else mx, raw if my is None else my,
                               "aperio MPP in the ImageDescription")
        if mx is None or my is None:
            return None
        unit = str(p.get("tiff.ResolutionUnit", "")).lower()
        if "tiff.XResolution" in p and self.vendor in ("generic-tiff",):
            dpi = float(p["tiff.XResolution"]) if unit == "inch" else None
            return MppMetadata(mx, my, f"TIFF resolution tags ({float(p['tiff.XResolution']):g} px per "
                                       f"{unit or '?'})", dpi)
        return MppMetadata(mx, my, f"{self.vendor} metadata (openslide.mpp-x/y)")

    def pixel_info(self) -> PixelInfo:
        return PixelInfo(rgb8=True)  # OpenSlide renders every format as 8-bit RGBA

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        loc = (x0, y0) if level == 0 else (round(x0 * ds), round(y0 * ds))
        rgba = np.asarray(self.osr.read_region(loc, level, (x1 - x0, y1 - y0)))
        rgb, a = rgba[..., :3], rgba[..., 3:]
        if (a == 255).all():
            return np.ascontiguousarray(rgb)
        # openslide-python un-premultiplies; blend what is left onto white
        af = a.astype(np.float32) / 255.0
        return (rgb * af + 255.0 * (1.0 - af)).round().astype(np.uint8)

    def associated_images(self) -> dict:
        return {k: v.convert("RGB") for k, v in self.osr.associated_images.items()}

    def close(self) -> None:
        self.osr.close()
