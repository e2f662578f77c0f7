"""Slides: a tiffslide wrapper with mpp resolution and sanity checks, white-padded regions, tiles at a
target mpp, thumbnails at any size.

    slide = pk.read_slide("CMU-1.svs")            # mpp from the file's metadata
    slide = pk.read_slide("frozen.svs", mpp=0.25) # the file has none: say it
    tile = slide.read_tile(x, y, tile_px=256, mpp=0.5)
"""
from __future__ import annotations

import logging
import math
import os
import threading
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ._hashing import sha256_file
from ._ids import is_slide_file, slide_id_from_path
from .errors import MppError, NotBrightfieldError, SlideReadError

# Plausible scanning resolutions: 40x scanners are ~0.25 um/px, 5x overviews ~2 um/px. Anything coarser
# than 5 um/px or finer than 0.05 um/px is a unit mix-up, not a microscope.
MPP_MAX = 5.0
MPP_MIN = 0.05
# Two levels (or a level and a target) whose mpp agree within this share are treated as the same.
MPP_TOLERANCE = 0.01

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


def _sniff_unreadable(path: Path) -> str | None:
    """A human reason why `path` cannot be a TIFF-based slide, from its first bytes (None if it may be)."""
    size = path.stat().st_size
    if size == 0:
        return "the file is empty (0 bytes)"
    with open(path, "rb") as fh:
        head = fh.read(132)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return ("it is a DICOM file (DICM magic at byte 128); pathkit reads TIFF-based slides (SVS, NDPI, "
                "generic/pyramidal TIFF, QPTIFF) through tiffslide; convert it to a pyramidal TIFF first "
                "(e.g. with QuPath, bfconvert or wsidicomizer)")
    if head[:4] not in _TIFF_MAGIC:
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


def _to_rgb_uint8(arr: np.ndarray) -> np.ndarray:
    """(h, w, c) of any dtype -> (h, w, 3) uint8 (first three channels; gray replicated)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer):
            arr = (arr.astype(np.float64) * (255.0 / np.iinfo(arr.dtype).max)).round().astype(np.uint8)
        else:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
    c = arr.shape[2]
    if c == 3:
        return arr
    if c == 1:
        return np.repeat(arr, 3, axis=2)
    if c == 2:
        return np.concatenate([arr, np.zeros_like(arr[..., :1])], axis=2)
    return np.ascontiguousarray(arr[..., :3])


class _DirectReader:
    """Decodes the TIFF tiles (or strips) of each level straight from the file with tifffile's decoder and
    keeps recently decoded ones in an LRU cache.

    tiffslide's zarr v3 path costs ~3 ms of overhead per call and funnels every thread through one event
    loop; neighbouring tiles of a grid that is not aligned with the file's tiles (240-px SVS tiles, NDPI
    8-row strips) would also decode the same segments again and again.
    """

    _JPEG = frozenset({6, 7, 34892, 33007})

    def __init__(self, tf, series_index: int, cache_bytes: int = 96 << 20):
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
            self.levels.append({"page": page, "decode": kf.decode, "args": args, "h": h, "w": w,
                                "seg_h": min(seg_h, h), "seg_w": seg_w, "nx": math.ceil(w / seg_w),
                                "spp": int(kf.samplesperpixel), "dtype": kf.dtype,
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
        seg, pos, shape = lv["decode"](data, index, **lv["args"])
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


class Slide:
    """A whole-slide image opened with tiffslide. Build it with :func:`read_slide`.

    Attributes: ``path``, ``slide_id``, ``dimensions`` (w, h at level 0), ``level_count``,
    ``level_dimensions``, ``level_downsamples``, ``vendor``, ``mpp`` (um/px at level 0), ``mpp_source``
    ("metadata" or "user"), ``magnification``, ``properties`` (the file's metadata).

    Picklable: a pickle holds the path and the options; the file is reopened lazily in the new process.
    """

    def __init__(self, path, mpp=None, *, allow_implausible_mpp=False, allow_non_brightfield=False):
        self.path = Path(path).expanduser().resolve()
        self._mpp_override = None if mpp is None else float(mpp)
        self._allow_implausible_mpp = bool(allow_implausible_mpp)
        self._allow_non_brightfield = bool(allow_non_brightfield)
        self._ts = None
        self._lock = threading.Lock()
        self._sha256 = None
        # a file's last suffix is its format even when _ids does not list it (.btf, .jp2 ...)
        self.slide_id = slide_id_from_path(self.path) if is_slide_file(self.path) else self.path.stem
        self._open(check=True)

    # ---------------------------------------------------------------- opening and metadata
    def _open_tiffslide(self):
        import tiffslide

        path = self.path
        if not path.exists():
            raise SlideReadError(f"{path}: no such file")
        if not path.is_file():
            raise SlideReadError(f"{path}: not a file")
        reason = _sniff_unreadable(path)
        if reason:
            raise SlideReadError(f"{path}: cannot read this slide: {reason}")
        # tifffile only logs (does not raise) when an IFD offset points past the end of a cut file
        logged = _TifffileLog()
        tlog = logging.getLogger("tifffile")
        tlog.addHandler(logged)
        try:
            with warnings.catch_warnings():
                # tiffslide warns that its NDPI metadata parsing is partial; pathkit checks what it uses
                warnings.filterwarnings("ignore", message=".*metadata parsing only partially.*")
                ts = tiffslide.TiffSlide(str(path))
                _ = ts.properties
                _check_complete(path, ts.ts_tifffile)
        except SlideReadError:
            raise
        except Exception as exc:
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

    def _open(self, check: bool) -> None:
        ts = self._open_tiffslide()
        self._ts = ts
        self._direct = None
        axes = str(ts.properties.get("tiffslide.series-axes", ""))
        if axes == "YXS" and os.environ.get("PATHKIT_TIFFSLIDE_READS") != "1":
            try:
                self._direct = _DirectReader(ts.ts_tifffile, int(ts.properties.get("tiffslide.series-index", 0)))
                if len(self._direct.levels) != ts.level_count:
                    self._direct = None
            except Exception:  # noqa: BLE001 - unusual layouts: tiffslide's general path reads them
                self._direct = None
        if not check:
            return
        props = dict(ts.properties)
        self.properties: dict[str, Any] = {k: v for k, v in props.items() if not k.startswith("tiffslide.level[")}
        self.dimensions = tuple(int(v) for v in ts.dimensions)
        self.level_count = int(ts.level_count)
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
        self._resolve_mpp(props, tf)
        self._check_brightfield(tf)

    def _resolve_mpp(self, props: dict, tf) -> None:
        mx, my = props.get("tiffslide.mpp-x"), props.get("tiffslide.mpp-y")
        meta_mpp = None
        origin = None
        if mx is not None and my is not None and float(mx) > 0 and float(my) > 0:
            mx, my = float(mx), float(my)
            meta_mpp = (mx + my) / 2.0
            if "aperio.MPP" in props:
                origin = "aperio MPP in the ImageDescription"
            elif "tiff.XResolution" in props:
                origin = f"TIFF resolution tags ({props.get('tiff.XResolution'):g} px per " \
                         f"{str(props.get('tiff.ResolutionUnit', '?')).lower()})"
            else:
                origin = f"{self.vendor or 'file'} metadata"
            if abs(mx - my) / meta_mpp > 0.02:
                warnings.warn(f"{self.path.name}: pixels are not square (mpp x {mx:g}, y {my:g}); "
                              f"pathkit uses their mean {meta_mpp:g}", stacklevel=5)
        self._mpp_metadata = meta_mpp
        if self._mpp_override is not None:
            mpp = self._mpp_override
            if not math.isfinite(mpp) or mpp <= 0:
                raise MppError(f"{self.path}: mpp={self._mpp_override!r} is not a positive number of um per pixel")
            if meta_mpp is not None and abs(mpp - meta_mpp) / meta_mpp > 0.1:
                warnings.warn(f"{self.path.name}: using mpp={mpp:g} given by you; the file's metadata says "
                              f"{meta_mpp:g} ({origin})", stacklevel=5)
            self.mpp, self.mpp_source = mpp, "user"
            self.properties["pathkit.mpp-origin"] = "user"
            self._check_plausible(mpp, "given as mpp=", user=True)
            return
        if meta_mpp is None:
            raise MppError(
                f"{self.path}: the file's metadata has no microns-per-pixel (mpp), so tiles cannot be cut at a "
                f"physical resolution. Pass it: pk.read_slide(path, mpp=0.25) for a 40x scan, mpp=0.5 for 20x "
                f"(CLI: --mpp).")
        self.mpp, self.mpp_source = meta_mpp, "metadata"
        self.properties["pathkit.mpp-origin"] = origin
        unit = str(props.get("tiff.ResolutionUnit", "")).upper()
        dpi_like = ("TIFF resolution tags" in origin and unit == "INCH"
                    and float(props.get("tiff.XResolution", 0)) <= 1200)
        if dpi_like:
            msg = (f"{self.path}: mpp {meta_mpp:g} comes from a {props.get('tiff.XResolution'):g}-dpi resolution "
                   f"tag, a screen/print setting, not a microscope's resolution.")
            if not self._allow_implausible_mpp:
                raise MppError(msg + " Pass the real value, e.g. mpp=0.5, or allow_implausible_mpp=True.")
            warnings.warn(msg + " Used anyway (allow_implausible_mpp=True).", stacklevel=5)
            return
        self._check_plausible(meta_mpp, f"read from {origin}", user=False)

    def _check_plausible(self, mpp: float, where: str, user: bool) -> None:
        if MPP_MIN <= mpp <= MPP_MAX:
            return
        hint = " (that looks like a magnification, not um per pixel)" if mpp in (2.5, 5, 10, 20, 40, 60, 80) \
            else ""
        msg = (f"{self.path}: mpp {mpp:g} um/px {where} is implausible for a slide scan (expected "
               f"{MPP_MIN}..{MPP_MAX}){hint}.")
        if not self._allow_implausible_mpp:
            fix = "Check the value" if user else "Pass the real value, e.g. mpp=0.5,"
            raise MppError(f"{msg} {fix} or pass allow_implausible_mpp=True to use it anyway.")
        warnings.warn(msg + " Used anyway (allow_implausible_mpp=True).", stacklevel=6)

    def _check_brightfield(self, tf) -> None:
        reason = None
        series = tf.series[0]
        if self._axes not in ("YXS",) or series.dtype != np.uint8:
            chans = series.shape[0] if self._axes.startswith("C") else (1 if self._axes == "YX" else
                                                                        series.shape[-1])
            kind = "multiplex" if chans > 1 else "single-channel"
            what = "PerkinElmer QPTIFF" if getattr(tf, "is_qpi", False) else "image"
            reason = (f"it is a {kind} {what} ({chans} channel plane(s), axes {self._axes}, "
                      f"{series.dtype}), not an RGB brightfield (H&E) scan")
        else:
            img = self._probe_image()
            lum = img.astype(np.float32).mean(axis=2)
            med = float(np.median(lum))
            if med < 80:
                reason = (f"it looks like fluorescence: its median brightness is {med:.0f}/255 (brightfield "
                          f"slides have a bright background)")
        if reason is None:
            self.properties["pathkit.modality"] = "brightfield"
            return
        self.properties["pathkit.modality"] = "non-brightfield"
        if not self._allow_non_brightfield:
            raise NotBrightfieldError(
                f"{self.path}: {reason}. H&E tile models would give meaningless features. Pass "
                f"allow_non_brightfield=True to read it anyway (channels are shown as RGB).")
        warnings.warn(f"{self.path.name}: {reason}; read anyway (allow_non_brightfield=True).", stacklevel=5)

    def _probe_image(self) -> np.ndarray:
        """A small image of the whole slide, cheap even for single-level giants (sampled patches)."""
        lvl = self.level_count - 1
        w, h = self.level_dimensions[lvl]
        if w * h <= 16_000_000:
            return self._read_box((0.0, 0.0, float(w), float(h)), lvl, self._fit(w, h, 256))
        patches = []
        for fy in np.linspace(0, 1, 8, endpoint=False) + 1 / 16:
            for fx in np.linspace(0, 1, 8, endpoint=False) + 1 / 16:
                patches.append(self._read_level(lvl, int(fx * w) - 16, int(fy * h) - 16, 32, 32))
        return np.concatenate(patches, axis=0)

    # ---------------------------------------------------------------- pickling
    def __getstate__(self):
        state = self.__dict__.copy()
        state["_ts"] = None
        state["_lock"] = None
        state["_direct"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def ts(self):
        """The underlying ``tiffslide.TiffSlide`` (opened lazily, e.g. after unpickling)."""
        if self._ts is None:
            with self._lock:
                if self._ts is None:
                    self._open(check=False)
        return self._ts

    def close(self) -> None:
        if self._ts is not None:
            self._direct = None
            self._ts.close()
            self._ts = None

    def __del__(self):  # a slide dropped without close() must not leak its file handle
        try:
            self.close()
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        w, h = self.dimensions
        return (f"Slide({self.slide_id!r}, {w}x{h}, levels={self.level_count}, mpp={self.mpp:.4g} "
                f"({self.mpp_source}), vendor={self.vendor!r})")

    # ---------------------------------------------------------------- geometry
    def level_mpp(self, level: int) -> float:
        """um per pixel at `level`."""
        return self.mpp * self.level_downsamples[level]

    def best_level(self, target_mpp: float) -> int:
        """The coarsest level whose mpp is at or finer than `target_mpp` (1% tolerance); 0 if none."""
        best = 0
        for lvl in range(self.level_count):
            fine_enough = self.level_mpp(lvl) <= target_mpp * (1 + MPP_TOLERANCE)
            if fine_enough and self.level_mpp(lvl) >= self.level_mpp(best):
                best = lvl
        return best

    def _level_for_downsample(self, downsample: float) -> int:
        best = 0
        for lvl, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + MPP_TOLERANCE) and ds >= self.level_downsamples[best]:
                best = lvl
        return best

    @staticmethod
    def _fit(w: float, h: float, size: int) -> tuple[int, int]:
        s = size / max(w, h)
        return max(1, round(w * s)), max(1, round(h * s))

    # ---------------------------------------------------------------- pixels
    def _read_level(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """(h, w, 3) uint8 RGB of level `level` pixels [lx, lx+w) x [ly, ly+h); white outside the image."""
        lw, lh = self.level_dimensions[level]
        out = None
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if x1 > x0 and y1 > y0:
            ds = self.level_downsamples[level]
            # tiffslide maps level-0 locations with int(x / ds); pick the level-0 integer that lands on x0
            loc = (x0 if level == 0 else math.ceil(x0 * ds - 1e-7),
                   y0 if level == 0 else math.ceil(y0 * ds - 1e-7))
            try:
                ts = self.ts
                if self._direct is not None:
                    arr = self._direct.read(level, x0, y0, x1, y1)
                else:
                    arr = ts.read_region(loc, level, (x1 - x0, y1 - y0), as_array=True, padding=False)
            except Exception as exc:
                raise SlideReadError(f"{self.path}: failed to read level {level} region at ({x0}, {y0}) size "
                                     f"{x1 - x0}x{y1 - y0}: {type(exc).__name__}: {exc}") from exc
            arr = _to_rgb_uint8(np.asarray(arr))
            if (x0, y0, x1, y1) == (lx, ly, lx + w, ly + h) and arr.shape[:2] == (h, w):
                return arr
            out = np.full((h, w, 3), 255, np.uint8)
            ah, aw = arr.shape[:2]
            out[y0 - ly:y0 - ly + ah, x0 - lx:x0 - lx + aw] = arr
            return out
        return np.full((h, w, 3), 255, np.uint8)

    def read_region(self, location=(0, 0), level: int = 0, size=(256, 256)) -> np.ndarray:
        """RGB uint8 array (h, w, 3) of `size` (w, h) pixels at `level`, top-left `location` in level-0 px.

        Areas outside the image are white.
        """
        if not 0 <= level < self.level_count:
            raise IndexError(f"{self.slide_id}: level {level} out of range (the slide has {self.level_count})")
        ds = self.level_downsamples[level]
        x, y = location
        lx = math.floor(x / ds + 1e-9)
        ly = math.floor(y / ds + 1e-9)
        return self._read_level(level, lx, ly, int(size[0]), int(size[1]))

    def _read_box(self, box, level: int, out_size, resample=Image.BOX) -> np.ndarray:
        """Resample the float `box` (x0, y0, x1, y1) in `level` px to `out_size` (w, h), in row strips so
        that a single-level giant never sits in memory whole."""
        x0, y0, x1, y1 = box
        ow, oh = out_size
        fy = (y1 - y0) / oh
        ix0, ix1 = math.floor(x0), math.ceil(x1)
        max_px = 64_000_000  # about 192 MB of RGB per strip
        rows_per_strip = max(1, int(max_px / max(1, ix1 - ix0) / max(fy, 1e-9)))
        out = np.empty((oh, ow, 3), np.uint8)
        for r0 in range(0, oh, rows_per_strip):
            r1 = min(oh, r0 + rows_per_strip)
            sy0, sy1 = y0 + r0 * fy, y0 + r1 * fy
            iy0, iy1 = math.floor(sy0), math.ceil(sy1)
            region = self._read_level(level, ix0, iy0, ix1 - ix0, iy1 - iy0)
            img = Image.fromarray(region)
            part = img.resize((ow, r1 - r0), resample, box=(x0 - ix0, sy0 - iy0, x1 - ix0, sy1 - iy0))
            out[r0:r1] = np.asarray(part)
        return out

    def read_level0_box(self, box, out_size, resample=Image.BOX) -> np.ndarray:
        """Resample the level-0 box (x0, y0, x1, y1) (floats; white beyond the image) to `out_size` (w, h),
        read from the coarsest level that is still at least as fine as the output."""
        x0, y0, x1, y1 = box
        ds = min((x1 - x0) / out_size[0], (y1 - y0) / out_size[1])
        level = self._level_for_downsample(ds)
        d = self.level_downsamples[level]
        return self._read_box((x0 / d, y0 / d, x1 / d, y1 / d), level, out_size, resample)

    def thumbnail(self, size: int = 1024) -> Image.Image:
        """RGB PIL image of the whole slide, longest side `size` px (area-averaged from the best level)."""
        w, h = self.dimensions
        out = self._fit(w, h, int(size))
        return Image.fromarray(self.read_level0_box((0.0, 0.0, float(w), float(h)), out))

    def read_tile(self, x: int, y: int, tile_px: int = 256, mpp: float = 0.5) -> np.ndarray:
        """(tile_px, tile_px, 3) uint8: the square of side ``tile_px * mpp / slide.mpp`` level-0 px at (x, y).

        Read from ``best_level(mpp)``; when that level's mpp is within 1% of `mpp` the pixels are taken as
        they are, otherwise the region is resized (bilinear with antialiasing) to `tile_px`.
        """
        level = self.best_level(mpp)
        ds = self.level_downsamples[level]
        if abs(self.level_mpp(level) / mpp - 1) <= MPP_TOLERANCE:
            return self._read_level(level, round(x / ds), round(y / ds), tile_px, tile_px)
        side = tile_px * mpp / self.mpp / ds
        lx, ly = x / ds, y / ds
        return self._read_box((lx, ly, lx + side, ly + side), level, (tile_px, tile_px), Image.BILINEAR)

    def tile_geometry(self, tile_px: int = 256, mpp: float = 0.5) -> tuple[int, float, bool]:
        """(level, level-0 px per output px, resized?) that :meth:`read_tile` uses for this target."""
        level = self.best_level(mpp)
        if abs(self.level_mpp(level) / mpp - 1) <= MPP_TOLERANCE:
            return level, self.level_downsamples[level], False
        return level, mpp / self.mpp, True

    # ---------------------------------------------------------------- provenance
    def sha256(self) -> str:
        """sha256 of the file (computed once, then cached)."""
        if self._sha256 is None:
            self._sha256 = sha256_file(self.path)
        return self._sha256

    def info(self) -> dict:
        """What goes in ``adata.uns["slide"]``."""
        return {
            "path": str(self.path),
            "slide_id": self.slide_id,
            "sha256": self.sha256(),
            "vendor": self.vendor,
            "dimensions": [int(v) for v in self.dimensions],
            "level_count": int(self.level_count),
            "level_downsamples": [float(v) for v in self.level_downsamples],
            "mpp": float(self.mpp),
            "mpp_source": self.mpp_source,
        }


def read_slide(path, mpp: float | None = None, *, allow_implausible_mpp: bool = False,
               allow_non_brightfield: bool = False) -> Slide:
    """Open a whole-slide image (SVS, NDPI, generic / pyramidal TIFF, ... anything tiffslide reads).

    Parameters
    ----------
    path
        The slide file.
    mpp
        Microns per pixel at level 0. Overrides the metadata (``mpp_source="user"``); needed when the file
        has none.
    allow_implausible_mpp
        Use an mpp outside 0.05-5 um/px, or one derived from a screen dpi tag, with a warning instead of
        raising :class:`~pathkit.errors.MppError`.
    allow_non_brightfield
        Read fluorescence / multiplex images with a warning instead of raising
        :class:`~pathkit.errors.NotBrightfieldError`.

    Raises
    ------
    SlideReadError
        The file is missing, empty, truncated, not TIFF-based (e.g. DICOM) or otherwise unreadable.
    MppError
        No mpp in the metadata (pass ``mpp=``) or an implausible one.
    NotBrightfieldError
        Fluorescence or multiplex image.
    """
    if isinstance(path, Slide):
        return path
    return Slide(path, mpp, allow_implausible_mpp=allow_implausible_mpp,
                 allow_non_brightfield=allow_non_brightfield)


def slide_of_tiles(tiles, slide=None) -> Slide:
    """The slide `tiles` (the AnnData of ``pk.pp.tile``) were cut from: `slide` when given (a Slide or a
    path), else the file in ``tiles.uns["slide"]["path"]``, opened with the mpp the tiles were made with when
    the user had given it."""
    from .errors import TableError

    if slide is not None:
        return read_slide(slide)
    info = tiles.uns.get("slide") or {}
    path = info.get("path")
    if not path or not os.path.exists(path):
        raise TableError(f"no slide given and tiles.uns['slide']['path'] ({path!r}) is not a file here: pass the "
                         "slide, e.g. slide=pk.read_slide(path)")
    return read_slide(path, mpp=info.get("mpp") if info.get("mpp_source") == "user" else None)
