"""Slides: one `Slide` over several backends (tiffslide, plain images, ...) with mpp resolution and sanity
checks, white-padded regions, tiles at a target mpp, thumbnails at any size.

    slide = pk.read_slide("CMU-1.svs")            # mpp from the file's metadata
    slide = pk.read_slide("frozen.svs", mpp=0.25) # the file has none: say it
    slide = pk.read_slide("he.jpg", mpp=0.7)      # a plain image
    tile = slide.read_tile(x, y, tile_px=256, mpp=0.5)
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import warnings
from typing import Any

import numpy as np
from PIL import Image

from ._hashing import sha256_path
from ._ids import is_slide_file, slide_id_from_path
from .backends import BACKENDS, MppMetadata, PixelInfo, check_path, open_backend
from .backends.dicomweb import is_dicomweb_url, open_dicomweb, parse_url, sha256_url
from .errors import MppError, NotBrightfieldError, SlideReadError

# Plausible scanning resolutions: 40x scanners are ~0.25 um/px, 5x overviews ~2 um/px. Anything coarser
# than 5 um/px or finer than 0.05 um/px is a unit mix-up, not a microscope.
MPP_MAX = 5.0
MPP_MIN = 0.05
# Two levels (or a level and a target) whose mpp agree within this share are treated as the same.
MPP_TOLERANCE = 0.01


def _parse_mpp(meta: MppMetadata, path) -> tuple[float, float]:
    """The metadata's mpp as two floats; MppError when it is not a number or not a positive finite one."""
    vals = []
    for axis, raw in (("x", meta.x), ("y", meta.y)):
        try:
            v = float(raw)
        except (TypeError, ValueError):
            raise MppError(f"{path}: the file's mpp ({meta.origin}) is {raw!r} ({axis}), not a number. "
                           f"Pass the real value: pk.read_slide(path, mpp=0.25) for a 40x scan, mpp=0.5 for "
                           f"20x (CLI: --mpp).") from None
        vals.append(v)
    if not all(math.isfinite(v) and v > 0 for v in vals):
        raise MppError(f"{path}: the file's mpp ({meta.origin}) is invalid (x {vals[0]!r}, y {vals[1]!r}: "
                       f"not a positive finite number of um per pixel). Pass the real value: "
                       f"pk.read_slide(path, mpp=0.25) for a 40x scan, mpp=0.5 for 20x (CLI: --mpp).")
    return vals[0], vals[1]


class Slide:
    """A whole-slide image (or a plain image) opened through a backend. Build it with :func:`read_slide`.

    Attributes: ``path``, ``slide_id``, ``backend`` (its name), ``backend_version``, ``dimensions`` (w, h at
    level 0), ``level_count``, ``level_dimensions``, ``level_downsamples``, ``vendor``, ``mpp`` (um/px at
    level 0), ``mpp_source`` ("metadata" or "user"), ``magnification``, ``properties`` (the file's metadata).

    Picklable: a pickle holds the path and the options; the file is reopened lazily in the new process.
    """

    def __init__(self, path, mpp=None, *, backend="auto", allow_implausible_mpp=False,
                 allow_non_brightfield=False, **backend_options):
        if backend != "auto" and backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is not one of 'auto', {', '.join(map(repr, BACKENDS))}")
        self._url = is_dicomweb_url(path)
        if not self._url and isinstance(path, str) and path.strip().lower().startswith(("http://", "https://")):
            parse_url(path)  # any other URL: SlideReadError saying which URLs are read
        if self._url and backend not in ("auto", "wsidicom"):
            raise ValueError(f"{path}: a DICOMweb URL is read by backend='wsidicom', not {backend!r}")
        if backend_options and not self._url:
            raise TypeError(f"{path}: options {sorted(backend_options)} are for DICOMweb URLs only")
        self._backend_options = backend_options
        self.path = path.strip() if self._url else check_path(path)
        self._mpp_override = None if mpp is None else float(mpp)
        self._allow_implausible_mpp = bool(allow_implausible_mpp)
        self._allow_non_brightfield = bool(allow_non_brightfield)
        self._backend = None
        self.backend = backend
        self._lock = threading.Lock()
        self._sha256 = None
        # a file's last suffix is its format even when _ids does not list it (.btf, .jp2 ...)
        if self._url:  # the series UID names a DICOMweb slide
            self.slide_id = parse_url(self.path)[2]
        else:
            self.slide_id = (self.path.name if self.path.is_dir() else
                             slide_id_from_path(self.path) if is_slide_file(self.path) else self.path.stem)
        self._name = self.path if self._url else self.path.name
        self._open(check=True)

    # ---------------------------------------------------------------- opening and metadata
    def _open(self, check: bool) -> None:
        be = (open_dicomweb(self.path, **self._backend_options) if self._url else
              open_backend(self.path, self.backend))
        self._backend = be
        if not check:
            return
        try:
            self.backend = be.name
            self.backend_version = be.version
            self.properties: dict[str, Any] = dict(be.properties)
            self.dimensions = tuple(int(v) for v in be.dimensions)
            self.level_dimensions = [tuple(int(v) for v in d) for d in be.level_dimensions]
            self.level_count = len(self.level_dimensions)
            self.level_downsamples = [float(d) for d in be.level_downsamples]
            self.vendor = be.vendor
            self.magnification = be.magnification
            self._resolve_mpp(be.mpp_metadata())
            self._check_brightfield(be.pixel_info())
        except BaseException:
            self.close()  # a slide refused while opening must not keep its file open
            raise

    def _resolve_mpp(self, meta: MppMetadata | None) -> None:
        meta_mpp = origin = None
        if meta is not None:
            try:
                mx, my = _parse_mpp(meta, self.path)
            except MppError as exc:
                if self._mpp_override is None:
                    raise
                # the user's mpp replaces a broken one: say so, do not refuse the slide
                warnings.warn(f"{str(exc).split(' Pass the real value')[0]} Using mpp={self._mpp_override:g} given "
                              f"by you.", stacklevel=5)
                meta = None
        if meta is not None:
            meta_mpp, origin = (mx + my) / 2.0, meta.origin
            if abs(mx - my) / meta_mpp > 0.02:
                warnings.warn(f"{self._name}: pixels are not square (mpp x {mx:g}, y {my:g}); "
                              f"pathkit uses their mean {meta_mpp:g}", stacklevel=5)
        self._mpp_metadata = meta_mpp
        if self._mpp_override is not None:
            mpp = self._mpp_override
            if not math.isfinite(mpp) or mpp <= 0:
                raise MppError(f"{self.path}: mpp={self._mpp_override!r} is not a positive number of um per pixel")
            if meta_mpp is not None and abs(mpp - meta_mpp) / meta_mpp > 0.1:
                warnings.warn(f"{self._name}: using mpp={mpp:g} given by you; the file's metadata says "
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
        if meta.dpi is not None and meta.dpi <= 1200:
            msg = (f"{self.path}: mpp {meta_mpp:g} comes from a {meta.dpi:g}-dpi resolution "
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
        n_tiles = (self.dimensions[0] * mpp / 128.0) * (self.dimensions[1] * mpp / 128.0)
        if n_tiles > 1e6:  # the grid at 0.5 um/px would take hours and memory before any warning of tile()
            msg += (f" At 0.5 um/px this {self.dimensions[0]}x{self.dimensions[1]}-px image would be "
                    f"{self.dimensions[0] * mpp / 1000:.4g} x {self.dimensions[1] * mpp / 1000:.4g} mm, about "
                    f"{n_tiles:,.0f} tiles of 256 px: tile at a coarser mpp or check the value.")
        warnings.warn(msg + " Used anyway (allow_implausible_mpp=True).", stacklevel=6)

    def _check_brightfield(self, pix: PixelInfo) -> None:
        reason = None
        if not pix.rgb8:
            kind = "multiplex" if pix.channels > 1 else "single-channel"
            reason = (f"it is a {kind} {pix.what} ({pix.channels} channel plane(s), axes {pix.axes}, "
                      f"{pix.dtype}), not an RGB brightfield (H&E) scan")
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
        warnings.warn(f"{self._name}: {reason}; read anyway (allow_non_brightfield=True).", stacklevel=5)

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
        state["_backend"] = None
        state["_lock"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def reader(self):
        """The open backend (a ``pathkit.backends.SlideBackend``; reopened lazily, e.g. after unpickling)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._open(check=False)
        return self._backend

    @property
    def ts(self):
        """The underlying ``tiffslide.TiffSlide`` (tiffslide backend only)."""
        if self.backend != "tiffslide":
            raise AttributeError(f"{self.slide_id}: read by the {self.backend!r} backend, not tiffslide")
        return self.reader.ts

    def associated_images(self) -> dict:
        """The label / macro / thumbnail images stored with the slide, as RGB PIL images by name (empty when
        the format has none)."""
        return self.reader.associated_images()

    def close(self) -> None:
        be, self._backend = self._backend, None
        if be is not None:
            be.close()

    def __del__(self):  # a slide dropped without close() must not leak its file handle
        with contextlib.suppress(Exception):
            self.close()

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
            try:
                arr = self.reader.read(level, x0, y0, x1, y1)
            except Exception as exc:
                if getattr(exc, "stored_tile", None) is not None:  # the backend named the stored tile already
                    raise
                raise SlideReadError(f"{self.path}: failed to read level {level} region at ({x0}, {y0}) size "
                                     f"{x1 - x0}x{y1 - y0}: {type(exc).__name__}: {exc}") from exc
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
        """sha256 of the file (computed once, then cached); for a DICOM series folder, the sha256 of its
        files' names and sha256s; for a DICOMweb series, of its URL and instance UIDs
        (``pathkit.backends.dicomweb.sha256_url``)."""
        if self._sha256 is None:
            self._sha256 = sha256_url(self.path, self.reader) if self._url else sha256_path(self.path)
        return self._sha256

    def info(self) -> dict:
        """What goes in ``adata.uns["slide"]``."""
        return {
            "path": str(self.path),
            "slide_id": self.slide_id,
            "sha256": self.sha256(),
            "vendor": self.vendor,
            "backend": self.backend,
            "backend_version": self.backend_version,
            "dimensions": [int(v) for v in self.dimensions],
            "level_count": int(self.level_count),
            "level_downsamples": [float(v) for v in self.level_downsamples],
            "mpp": float(self.mpp),
            "mpp_source": self.mpp_source,
        }


def read_slide(path, mpp: float | None = None, *, backend: str = "auto", allow_implausible_mpp: bool = False,
               allow_non_brightfield: bool = False, **backend_options) -> Slide:
    """Open a whole-slide image (SVS, NDPI, generic / pyramidal TIFF, OME-TIFF, QPTIFF) or a plain image
    (JPEG, PNG).

    Parameters
    ----------
    path
        The slide file, a folder of one DICOM series, or a DICOMweb series URL
        ``http(s)://HOST[/PREFIX]/studies/<StudyInstanceUID>/series/<SeriesInstanceUID>`` (read by
        ``"wsidicom"``; ``slide_id`` is the series UID).
    mpp
        Microns per pixel at level 0. Overrides the metadata (``mpp_source="user"``); needed when the file
        has none (plain JPEG / PNG images never have one).
    backend
        ``"auto"`` picks the reader from the file's content (its first bytes), not its suffix: TIFF ->
        ``"tiffslide"``, JPEG / PNG -> ``"image"``. Name one to override the choice. The backend and its
        version are recorded in :meth:`Slide.info` (``uns["slide"]``). A plain image is decoded once and
        kept in memory (``3 * width * height`` bytes; see ``pathkit.backends.image``).
    allow_implausible_mpp
        Use an mpp outside 0.05-5 um/px, or one derived from a screen dpi tag, with a warning instead of
        raising :class:`~pathkit.errors.MppError`.
    allow_non_brightfield
        Read fluorescence / multiplex images with a warning instead of raising
        :class:`~pathkit.errors.NotBrightfieldError`.
    **backend_options
        For a DICOMweb URL only: ``session`` (a ``requests.Session`` carrying the credentials), ``client`` (a
        ready ``wsidicom.WsiDicomWebClient`` or ``dicomweb_client.DICOMwebClient``), ``timeout`` (seconds per
        request, default 20) and ``retries`` (default 2); see ``pathkit.backends.dicomweb``. They are kept
        in pickles (the slide reopens from the URL with them).

    Raises
    ------
    SlideReadError
        The file is missing, a dangling link or a symlink loop, not readable, empty, truncated, of a format
        no backend reads or otherwise unreadable; a DICOMweb server that refuses the credentials (401 / 403),
        does not hold the study / series (404) or does not answer within the timeout and retries.
    MppError
        No mpp in the metadata (pass ``mpp=``) or an implausible one.
    NotBrightfieldError
        Fluorescence or multiplex image.
    """
    if isinstance(path, Slide):
        return path
    return Slide(path, mpp, backend=backend, allow_implausible_mpp=allow_implausible_mpp,
                 allow_non_brightfield=allow_non_brightfield, **backend_options)


def slide_of_tiles(tiles, slide=None) -> Slide:
    """The slide `tiles` (the AnnData of ``pk.pp.tile``) were cut from: `slide` when given (a Slide or a
    path), else the file in ``tiles.uns["slide"]["path"]``, opened with the mpp the tiles were made with when
    the user had given it."""
    from .errors import TableError

    if slide is not None:
        return read_slide(slide)
    info = tiles.uns.get("slide") or {}
    path = info.get("path")
    if not path or not (os.path.exists(path) or is_dicomweb_url(path)):
        raise TableError(f"no slide given and tiles.uns['slide']['path'] ({path!r}) is not a file here: pass the "
                         "slide, e.g. slide=pk.read_slide(path)")
    backend = info.get("backend", "auto")
    return read_slide(path, mpp=info.get("mpp") if info.get("mpp_source") == "user" else None,
                      backend=backend if backend in BACKENDS else "auto")
