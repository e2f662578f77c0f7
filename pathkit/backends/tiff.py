"""The TIFF family (SVS, NDPI, generic / pyramidal TIFF, OME-TIFF, QPTIFF) through tiffslide, with pathkit's
own tile decoder (:class:`_DirectReader`) where the layout allows it."""
from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..errors import SlideReadError
from ._base import MppMetadata, PixelInfo, SlideBackend, ome_mpp, to_rgb_uint8

TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _sniff_unreadable(path: Path) -> str | None:
    """A human reason why `path` cannot be a TIFF-based slide, from its first bytes (None if it may be)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return ("it is a DICOM file (DICM magic at byte 128), not a TIFF: open it with backend='auto' or "
                "backend='wsidicom' (pip install \"pathkit[dicom]\")")
    if head[:4] not in TIFF_MAGIC:
        try:
            head[:64].decode("ascii")
            looks = "text"
        except UnicodeDecodeError:
            looks = "not a TIFF"
        return f"it is not a TIFF file (header {head[:8]!r}, looks like {looks}); is the extension lying?"
    return None


def _check_complete(path: Path, tf) -> None:
    """Raise SlideReadError when the image data of any level lies past the end of the file (truncated copy)."""
    size = path.stat().st_size
    for series in tf.series[:1]:
        for level in series.levels:
            for page in level.pages:
                if page is None or not hasattr(page, "dataoffsets"):
                    continue
                offs = np.asarray(page.dataoffsets, dtype=np.int64)
                cnts = np.asarray(page.databytecounts, dtype=np.int64)
                if offs.size and int((offs + cnts).max()) > size:
                    raise SlideReadError(
                        f"{path}: the file is truncated: its image data needs {int((offs + cnts).max()):,} "
                        f"bytes but the file has {size:,}; copy or download it again")


def _check_layout(path: Path, tf) -> None:
    """Raise SlideReadError when a page's geometry does not fit its own pixel data: a size of 0, or fewer (or
    more) stored tiles / strips than its size needs (a patched or damaged IFD). tiffslide would divide by
    zero or fail on a later read with an IndexError naming nothing."""
    for i, page in enumerate(tf.pages):
        if not hasattr(page, "dataoffsets"):
            continue
        w, h = int(page.imagewidth), int(page.imagelength)
        what = "tiles" if page.is_tiled else "strips"
        if w <= 0 or h <= 0:
            raise SlideReadError(f"{path}: the file is corrupt: page {i} (an image of the pyramid or an associated "
                                 f"image) is {w} x {h} px; copy or download it again")
        try:
            need = int(np.prod(page.chunked))
        except (ArithmeticError, ValueError, TypeError):
            continue  # a layout tifffile cannot count: its own reader decides
        have = len(page.dataoffsets)
        if have != need:
            raise SlideReadError(f"{path}: the file is corrupt: page {i} is {w} x {h} px, which needs {need} "
                                 f"{what}, but its IFD lists {have}; copy or download it again")


class _DirectReader:
    """Decodes the TIFF tiles (or strips) of each level straight from the file with tifffile's decoder and
    keeps recently decoded ones in an LRU cache.

    tiffslide's zarr v3 path costs ~3 ms of overhead per call and funnels every thread through one event
    loop; neighbouring tiles of a grid that is not aligned with the file's tiles (240-px SVS tiles, NDPI
    8-row strips) would also decode the same segments again and again.
    """

    _JPEG = frozenset({6, 7, 34892, 33007})

    def __init__(self, tf, series_index: int, cache_bytes: int = 96 << 20, path=None):
        self.path = path
        self.fh = tf.filehandle
        # tifffile's file handle has no lock unless asked: seek + read from several threads would interleave
        self.fh.set_lock(True)
        self.levels = []
        for lvl in tf.series[series_index].levels:
            pages = [p for p in lvl.pages]
            if len(pages) != 1 or pages[0] is None:
                raise NotImplementedError("levels with several pages")
            page = pages[0]
            kf = page.keyframe
            if kf.planarconfig != 1 and kf.samplesperpixel > 1:
                raise NotImplementedError("planar (separate) samples")
            if kf.imagedepth != 1:
                raise NotImplementedError("volumetric pages")
            h, w = int(kf.imagelength), int(kf.imagewidth)
            if kf.is_tiled:
                seg_h, seg_w, full = int(kf.tilelength), int(kf.tilewidth), True
            else:
                seg_h, seg_w, full = int(kf.rowsperstrip), w, False
            args = {"_fullsize": full}
            if kf.compression in self._JPEG:
                args["jpegtables"] = page.jpegtables
                args["jpegheader"] = kf.jpegheader
            # each segment of a TIFF-JPEG (compression 7) level is a whole JPEG stream, SOI ... EOI; NDPI's
            # segments (a jpegheader) are restart intervals of one stream and carry no markers of their own
            whole_jpeg = kf.compression == 7 and kf.jpegheader is None
            self.levels.append({"page": page, "decode": kf.decode, "args": args, "h": h, "w": w,
                                "seg_h": min(seg_h, h), "seg_w": seg_w, "nx": math.ceil(w / seg_w),
                                "spp": int(kf.samplesperpixel), "dtype": kf.dtype, "whole_jpeg": whole_jpeg,
                                "offsets": page.dataoffsets, "counts": page.databytecounts})
        self.cache: OrderedDict = OrderedDict()
        self.cache_bytes = cache_bytes
        self.used = 0
        self.lock = threading.Lock()

    def _segment(self, level: int, index: int):
        key = (level, index)
        with self.lock:
            hit = self.cache.get(key)
            if hit is not None:
                self.cache.move_to_end(key)
                return hit
        lv = self.levels[level]
        off, cnt = int(lv["offsets"][index]), int(lv["counts"][index])
        data = None
        if cnt > 0:
            with self.fh.lock:
                self.fh.seek(off)
                data = self.fh.read(cnt)
            if lv["whole_jpeg"]:
                self._check_jpeg(level, index, data)
        try:
            seg, pos, shape = lv["decode"](data, index, **lv["args"])
        except Exception as exc:
            if not lv["whole_jpeg"] or data is None:  # e.g. a codec that is not installed: said as it is
                raise
            raise self._error(level, index, f"JPEG decode failed: {exc}") from exc
        if seg is None:  # a missing tile: background
            seg = np.full(shape, 255, lv["dtype"])
        seg = seg.reshape(seg.shape[-3:])  # (length, width, samples)
        item = (int(pos[-3]), int(pos[-2]), seg)
        with self.lock:
            if key not in self.cache:
                self.cache[key] = item
                self.used += seg.nbytes
                while self.used > self.cache_bytes and len(self.cache) > 1:
                    _, (_, _, old) = self.cache.popitem(last=False)
                    self.used -= old.nbytes
        return item

    def _check_jpeg(self, level: int, index: int, data: bytes) -> None:
        """Refuse a stored JPEG tile whose stream does not run from SOI to EOI. libjpeg decodes a tile whose
        second half was zeroed or cut off with only a warning (grey or smeared pixels), so a damaged file
        would give features of garbage without an error; the raw-JPEG path refuses the same tile."""
        if data[:2] != b"\xff\xd8":
            raise self._error(level, index, "its stored bytes are not a JPEG stream (no SOI marker)")
        # a writer may pad a tile with zero bytes after its EOI; a zero-filled or cut tile has no EOI at all
        if data[-2:] != b"\xff\xd9" and data.rstrip(b"\0")[-2:] != b"\xff\xd9":
            raise self._error(level, index, "its JPEG stream has no end (EOI) marker: the tile is cut short or "
                                            "zero-filled")

    def _error(self, level: int, index: int, why: str) -> SlideReadError:
        """The one-line SlideReadError of a bad stored tile, worded as the raw-JPEG path's (pathkit._raw_tiles)."""
        lv = self.levels[level]
        tx, ty = index % lv["nx"], index // lv["nx"]
        why = " ".join(str(why).split())  # one line: decoders' messages may span several
        err = SlideReadError(f"{self.path}: failed to read level {level} region at ({tx * lv['seg_w']}, "
                             f"{ty * lv['seg_h']}) size {lv['seg_w']}x{lv['seg_h']} (stored tile {index}): {why}. "
                             "The file is corrupt there; copy or download it again")
        err.stored_tile = (level, index)  # Slide passes it on as it is: it names the region already
        return err

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels [x0, x1) x [y0, y1) of `level` (inside the image), (h, w, samples)."""
        lv = self.levels[level]
        out = np.empty((y1 - y0, x1 - x0, lv["spp"]), lv["dtype"])
        sh, sw = lv["seg_h"], lv["seg_w"]
        for ty in range(y0 // sh, (y1 - 1) // sh + 1):
            for tx in range(x0 // sw, (x1 - 1) // sw + 1):
                py, px, seg = self._segment(level, ty * lv["nx"] + tx)
                ya, yb = max(y0, py), min(y1, py + seg.shape[0])
                xa, xb = max(x0, px), min(x1, px + seg.shape[1])
                if yb > ya and xb > xa:
                    out[ya - y0:yb - y0, xa - x0:xb - x0] = seg[ya - py:yb - py, xa - px:xb - px]
        return out


class _TifffileLog(logging.Handler):
    """Collects tifffile's complaints about offsets past the end of the file."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        msg = record.getMessage()
        if "offset" in msg:
            self.messages.append(msg.split("> ", 1)[-1])


def _open_tiffslide(path: Path):
    import tiffslide

    reason = _sniff_unreadable(path)
    if reason:
        raise SlideReadError(f"{path}: cannot read this slide: {reason}")
    # tifffile only logs (does not raise) when an IFD offset points past the end of a cut file
    logged = _TifffileLog()
    tlog = logging.getLogger("tifffile")
    tlog.addHandler(logged)
    ts = None
    try:
        with warnings.catch_warnings():
            # tiffslide warns that its NDPI metadata parsing is partial; pathkit checks what it uses
            warnings.filterwarnings("ignore", message=".*metadata parsing only partially.*")
            ts = tiffslide.TiffSlide(str(path))
            _check_layout(path, ts.ts_tifffile)
            _ = ts.properties
            _check_complete(path, ts.ts_tifffile)
    except Exception as exc:
        if ts is not None:  # a slide that fails while opening must not keep its file open
            ts.close()
        if isinstance(exc, SlideReadError):
            raise
        if logged.messages:  # tifffile saw broken offsets: the usual sign of a cut-off copy
            raise SlideReadError(
                f"{path}: the file is truncated or corrupt (tifffile: {logged.messages[0]}); "
                f"copy or download it again") from exc
        raise SlideReadError(f"{path}: cannot read this slide: {type(exc).__name__}: {exc}") from exc
    finally:
        tlog.removeHandler(logged)
    if logged.messages:
        ts.close()
        raise SlideReadError(f"{path}: the file is truncated or corrupt (tifffile: {logged.messages[0]}); "
                             f"copy or download it again")
    return ts


class TiffBackend(SlideBackend):
    """tiffslide; pixels through :class:`_DirectReader` for plain YXS layouts (bit-identical, faster),
    tiffslide's own reader otherwise (or with ``PATHKIT_TIFFSLIDE_READS=1``)."""

    name = "tiffslide"

    def __init__(self, path: Path):
        import tiffslide

        self.version = str(tiffslide.__version__)
        self.path = path
        ts = self.ts = _open_tiffslide(path)
        self._direct = None
        props = dict(ts.properties)
        axes = str(props.get("tiffslide.series-axes", ""))
        if axes == "YXS" and os.environ.get("PATHKIT_TIFFSLIDE_READS") != "1":
            try:
                self._direct = _DirectReader(ts.ts_tifffile, int(props.get("tiffslide.series-index", 0)),
                                             path=path)
                if len(self._direct.levels) != ts.level_count:
                    self._direct = None
            except Exception:  # noqa: BLE001 - unusual layouts: tiffslide's general path reads them
                self._direct = None
        self._props = props
        self.properties = {k: v for k, v in props.items() if not k.startswith("tiffslide.level[")}
        self.dimensions = tuple(int(v) for v in ts.dimensions)
        self.level_dimensions = [tuple(int(v) for v in d) for d in ts.level_dimensions]
        self.level_downsamples = [float(d) for d in ts.level_downsamples]
        tf = ts.ts_tifffile
        self._axes = str(props.get("tiffslide.series-axes", "YXS"))
        vendor = props.get("tiffslide.vendor")
        if vendor is None and getattr(tf, "is_qpi", False):
            vendor = "perkinelmer-qptiff"
        self.vendor = vendor
        mag = props.get("tiffslide.objective-power") or props.get("aperio.AppMag")
        try:
            self.magnification = float(mag) if mag is not None else None
        except (TypeError, ValueError):
            self.magnification = None

    def mpp_metadata(self) -> MppMetadata | None:
        props = self._props
        mx, my = props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y")
        if "aperio.MPP" in props:
            # tiffslide drops an Aperio MPP it cannot parse; the raw text goes to Slide, which says what is wrong
            raw = props["aperio.MPP"]
            return MppMetadata(raw if mx is None else mx, raw if my is None else my,
                               "aperio MPP in the ImageDescription")
        if mx is None or my is None:
            tf = self.ts.ts_tifffile
            # tiffslide reads OME PhysicalSizeX/Y only in um; other units (nm, mm) are converted here
            return ome_mpp(tf.ome_metadata) if getattr(tf, "is_ome", False) and tf.ome_metadata else None
        if "tiff.XResolution" in props:
            unit = str(props.get("tiff.ResolutionUnit", "?"))
            dpi = float(props["tiff.XResolution"]) if unit.upper() == "INCH" else None
            return MppMetadata(mx, my, f"TIFF resolution tags ({props.get('tiff.XResolution'):g} px per "
                                       f"{unit.lower()})", dpi)
        return MppMetadata(mx, my, f"{self.vendor or 'file'} metadata")

    def pixel_info(self) -> PixelInfo:
        tf = self.ts.ts_tifffile
        series = tf.series[0]
        if self._axes == "YXS" and series.dtype == np.uint8:
            return PixelInfo(rgb8=True)
        chans = series.shape[0] if self._axes.startswith("C") else (1 if self._axes == "YX" else series.shape[-1])
        what = "PerkinElmer QPTIFF" if getattr(tf, "is_qpi", False) else "image"
        return PixelInfo(rgb8=False, channels=int(chans), axes=self._axes, dtype=str(series.dtype), what=what)

    def read(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        if self._direct is not None:
            arr = self._direct.read(level, x0, y0, x1, y1)
        else:
            ds = self.level_downsamples[level]
            # tiffslide maps level-0 locations with int(x / ds); pick the level-0 integer that lands on x0
            loc = (x0 if level == 0 else math.ceil(x0 * ds - 1e-7),
                   y0 if level == 0 else math.ceil(y0 * ds - 1e-7))
            arr = self.ts.read_region(loc, level, (x1 - x0, y1 - y0), as_array=True, padding=False)
        return to_rgb_uint8(np.asarray(arr))

    def associated_images(self) -> dict:
        return {k: v.convert("RGB") for k, v in self.ts.associated_images.items()}

    def close(self) -> None:
        self._direct = None
        self.ts.close()
