"""Plain images (JPEG, PNG, a single-image TIFF / OME-TIFF) as one-level slides with a small pyramid.

The full image is decoded once, on the first read of level 0, and kept in memory as an (h, w, 3) uint8 array:
``w * h * 3`` bytes (a 9274 x 9911 JPEG: 276 MB, 1.2 s). The downsampled levels (4x and 16x, about 7 % more)
are built on first use: for a JPEG straight from the file by libjpeg's scaled decode, without the full image
(0.6 s for that JPEG), otherwise from the level above by area averaging. Opening the slide, its thumbnail and
its tissue mask therefore stay cheap; cutting tiles at the full resolution pays for the decode once. Slides of the same file
(same path, size and modification time) opened in one process share the decoded array while any of them
holds it. Pickling drops it: a process that unpickles the slide decodes the file again on its first read.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SlideReadError
from ._base import MppMetadata, PixelInfo, SlideBackend, ome_mpp, to_rgb_uint8

# decoded level-0 arrays by (path, size, mtime): shared between Slides of one file, freed with the last one
_DECODED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_DECODE_LOCK = threading.Lock()
_PIL_LOCK = threading.Lock()
_RGB_MODES = {"RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "P", "LA", "PA"}


def _open_pil(path: Path) -> Image.Image:
    """PIL's lazy open (header only). Whole-slide images are far above PIL's decompression-bomb limit, which
    guards web servers against hostile uploads, not a user opening their own slide."""
    with _PIL_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        old = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = old


class ImageBackend(SlideBackend):
    """A plain image file read with Pillow (JPEG, PNG, TIFF with one image); see the module docstring for
    its memory use."""

    name = "image"

    def __init__(self, path: Path):
        import PIL

        self.version = f"pillow {PIL.__version__}"
        self.path = path
        try:
            with _open_pil(path) as im:
                fmt, mode, (w, h) = im.format, im.mode, im.size
                frames = getattr(im, "n_frames", 1)
                info = dict(im.info)
                desc = ""
                if fmt == "TIFF":
                    desc = str(im.tag_v2.get(270, ""))
                    with contextlib.suppress(UnicodeError):  # PIL reads ASCII tags as latin-1; OME-XML is UTF-8
                        desc = desc.encode("latin-1").decode("utf-8")
        except Exception as exc:  # any decoder complaint: unreadable
            raise SlideReadError(f"{path}: cannot read this image: {type(exc).__name__}: {exc}; is it a "
                                 f"complete JPEG / PNG / TIFF file?") from exc
        if frames != 1:
            raise SlideReadError(f"{path}: a {fmt} with {frames} images is not a plain image; open it with "
                                 f"backend='tiffslide' (pyramids) or save the image you want as its own file")
        self.format, self.mode = fmt, mode
        self.dimensions = (int(w), int(h))
        factors = [1]
        while max(w, h) // (factors[-1] * 4) >= 512 and len(factors) < 3:
            factors.append(factors[-1] * 4)
        self.level_dimensions = [(w // f, h // f) for f in factors]
        self.level_downsamples = [float(f) for f in factors]
        self.properties = {"image.format": fmt, "image.mode": mode}
        self._mpp = ome_mpp(desc) if desc.lstrip().startswith("<") else None
        if self._mpp is None and "dpi" in info:
            # JPEG JFIF / PNG pHYs density: kept as a property but not used as mpp (it is nearly always a
            # 72/96/300-dpi screen or print setting, not the microscope's)
            self.properties["image.dpi"] = str(info["dpi"])
        self._key = (str(path), path.stat().st_size, path.stat().st_mtime_ns)
        self._levels: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def mpp_metadata(self) -> MppMetadata | None:
        return self._mpp

    def pixel_info(self) -> PixelInfo:
        if self.mode in _RGB_MODES:
            return PixelInfo(rgb8=True)
        chans = {"L": 1, "1": 1, "I": 1, "F": 1}.get(self.mode.split(";")[0], 1)
        return PixelInfo(rgb8=False, channels=chans, axes="YX", dtype=f"mode {self.mode}", what=self.format)

    def _decode(self) -> np.ndarray:
        with _DECODE_LOCK:
            arr = _DECODED.get(self._key)
            if arr is None:
                try:
                    arr = self._decode_file()
                except Exception as exc:
                    raise SlideReadError(f"{self.path}: cannot decode this image: {type(exc).__name__}: {exc}; "
                                         f"the file may be truncated: copy it again") from exc
                if arr.shape[:2] != (self.dimensions[1], self.dimensions[0]):
                    raise SlideReadError(f"{self.path}: decoded {arr.shape[1]}x{arr.shape[0]} px, the header "
                                         f"says {self.dimensions[0]}x{self.dimensions[1]}")
                arr.setflags(write=False)
                _DECODED[self._key] = arr
        return arr

    def _decode_file(self) -> np.ndarray:
        if self.format == "JPEG" and self.mode == "RGB":
            import imagecodecs

            # libjpeg-turbo straight into one array: ~4x faster than PIL + its copy, the same pixels
            arr = imagecodecs.jpeg8_decode(self.path.read_bytes())
            if arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
                return arr
        with _open_pil(self.path) as im:
            im.load()
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                # transparent pixels are background: white, as outside the slide
                rgba = im.convert("RGBA")
                bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                return np.asarray(Image.alpha_composite(bg, rgba).convert("RGB"))
            if im.mode in _RGB_MODES or im.mode == "L":
                return np.asarray(im.convert("RGB"))
            return to_rgb_uint8(np.asarray(im))

    def _build_level(self, level: int) -> np.ndarray:
        f = int(self.level_downsamples[level])
        w, h = self.level_dimensions[level]
        if self.format == "JPEG" and f <= 8 and 0 not in self._levels:
            # libjpeg's DCT scaling decodes at 1/f directly: thumbnails and tissue masks never need the
            # full image (a 92-Mpx JPEG: 0.6 s instead of 1.2 s + 276 MB)
            with _open_pil(self.path) as im:
                im.draft("RGB", (w, h))  # PIL picks the largest scale whose result is at least (w, h)
                im.load()
                if im.size[0] >= w and im.size[1] >= h and im.size[0] <= -(-self.dimensions[0] // f):
                    return np.asarray(im.convert("RGB").crop((0, 0, w, h)))
        above = self._level(level - 1)
        r = round(self.level_downsamples[level] / self.level_downsamples[level - 1])
        out = np.empty((h, w, 3), np.uint8)
        rows = max(1, (16 << 20) // (3 * r * r * max(w, 1)))  # strips of ~16 MB of the level above
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            strip = Image.fromarray(np.ascontiguousarray(above[r0 * r:r1 * r]))
            out[r0:r1] = np.asarray(strip.reduce(r, box=(0, 0, w * r, (r1 - r0) * r)))
        return out

    def _level(self, level: int) -> np.ndarray:
        arr = self._levels.get(level)
        if arr is not None:
            return arr
        arr = self._decode() if level == 0 else self._build_level(level)
        with self._lock:
            self._levels.setdefault(level, arr)
        return self._levels[level]

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        return self._level(level)[y0:y1, x0:x1]

    def close(self) -> None:
        self._levels = {}
