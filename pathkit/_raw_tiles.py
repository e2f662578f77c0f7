"""Raw-tile fast path: tiles of a JPEG-tiled pyramid level decoded in batches by torchvision (nvJPEG on CUDA,
libjpeg-turbo on CPU) instead of one by one through tifffile.

    reader = raw_reader(slide, tile_px=256, mpp=0.5)           # None (with a reason) when not eligible
    batch = reader.read_batch(xs, ys, 256)                      # uint8 [B, 256, 256, 3], like read_tile

Eligible when the level that `Slide.read_tile` reads needs no resize (its mpp is the target within 1 %) and
is a tiled, 3-sample, 8-bit, JPEG-compressed (TIFF compression 7) level in RGB or YCbCr - most SVS files at
20x / 0.5 mpp. Anything else (JPEG 2000, stripped levels such as NDPI, LZW/zlib, a resize) is read by
`Slide.read_tile` as before.

The compressed bytes of the stored tiles a batch needs are read once each (a 256-px output tile straddles up
to four 240-px Aperio tiles; neighbours share them), made into self-contained JPEG streams and decoded in one
call; output tiles are assembled from the decoded pieces, white beyond the image, as `read_tile` does.

Two JPEG details of TIFF files:
- Aperio (and other writers) store *abbreviated* streams: the quantisation and Huffman tables live once in
  the JPEGTables tag. The tables (minus their EOI) are spliced in front of each tile (minus its SOI).
- Photometric RGB tiles (Aperio) hold RGB samples without a colour transform, but their component ids are
  0, 1, 2 and there is no JFIF/Adobe marker, so a decoder assumes YCbCr and converts. An Adobe APP14 marker
  with transform 0 is inserted after SOI, which tells libjpeg the samples are RGB.
Decoders may differ in IDCT and chroma upsampling, so before a reader is used on a device its output for
a few stored tiles is compared with tifffile's decode (the pixels `read_tile` returns); a reader whose
decode disagrees beyond JPEG rounding (see `PROBE_MEAN_MAX`, `PROBE_P999_MAX`) is refused for that device
with the reason, and callers fall back to `read_tile`.
"""
from __future__ import annotations

import math
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

# TIFF tags
_JPEG = 7
_RGB, _YCBCR = 2, 6
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"  # APP14, version 100, transform 0
# A decoder passes the probe when, over the probed stored tiles, its mean absolute difference from tifffile's
# decode is at most PROBE_MEAN_MAX grey levels and 99.9 % of samples differ by at most PROBE_P999_MAX. A
# colour-space mix-up gives mean differences of tens of levels; IDCT / upsampling differences give < 1.
PROBE_MEAN_MAX = 1.0
PROBE_P999_MAX = 12


class RawTilesUnsupported(Exception):
    """The level cannot be read by the raw path; ``str(exc)`` says why."""


def _decode_jpeg(streams: list, device) -> list:
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        # torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they still work
        warnings.filterwarnings("ignore", message=".*image decoding and encoding capabilities.*",
                                category=DeprecationWarning)
        return decode_jpeg(streams, mode=ImageReadMode.RGB, device=device)


@dataclass
class RawBatch:
    """The compressed stored tiles one batch needs and where their pixels go. Picklable and cheap to send
    from a DataLoader worker: one uint8 tensor holds every stream.

    ``data[bounds[u]:bounds[u+1]]`` is stream u (a self-contained JPEG); ``place`` rows are
    (b, u, sy, sx, dy, dx, h, w): output tile b gets rows dy:dy+h, cols dx:dx+w from stream u's decoded
    pixels sy:sy+h, sx:sx+w. u = -1 marks a missing stored tile (white)."""

    data: torch.Tensor
    bounds: np.ndarray
    place: np.ndarray
    n: int
    tile_px: int
    error: str = ""  # a read error met in a DataLoader worker, raised (one line) where the batch is decoded
    tiles: tuple = ()  # stored-tile index of each stream, to name the one that fails to decode

    def streams(self) -> list:
        b = self.bounds
        return [self.data[int(b[i]):int(b[i + 1])] for i in range(len(b) - 1)]


class RawTileReader:
    """Batched reads of 256-px (any size) tiles of one JPEG-tiled level of a `Slide`.

    Parameters
    ----------
    slide
        A `pathkit.Slide` (picklable: the reader reopens it lazily in a new process).
    level
        The pyramid level; output pixels are that level's pixels as they are (no resize).
    device
        Where `read_batch` decodes: "cpu" or "cuda[:i]".
    cache_bytes
        On CPU, decoded stored tiles are kept (LRU) so that the next batch's row of output tiles does not
        decode the shared stored row again. 0 disables it.

    Raises
    ------
    RawTilesUnsupported
        The level is not a tiled 8-bit RGB/YCbCr JPEG level.
    """

    def __init__(self, slide, level: int, device="cpu", cache_bytes: int = 64 << 20):
        self.slide = slide
        self.level = int(level)
        self.device = torch.device(device)
        self.cache_bytes = int(cache_bytes)
        self._state = None
        self._load()

    # ------------------------------------------------------------------ file layout
    def _load(self):
        ts = self.slide.ts
        tf = ts.ts_tifffile
        series = tf.series[int(ts.properties.get("tiffslide.series-index", 0))]
        if self.level >= len(series.levels):
            raise RawTilesUnsupported(f"level {self.level} is not a level of series {series.index}")
        pages = list(series.levels[self.level].pages)
        if len(pages) != 1 or pages[0] is None:
            raise RawTilesUnsupported("the level has several pages")
        page = pages[0]
        kf = page.keyframe
        why = None
        if kf.compression != _JPEG:
            why = f"compression {kf.compression!s} is not JPEG (7)"
        elif not kf.is_tiled:
            why = "the level is stored in strips, not tiles"
        elif kf.samplesperpixel != 3 or kf.dtype != np.uint8:
            why = f"{kf.samplesperpixel} samples of {kf.dtype}, not 3 x uint8"
        elif kf.planarconfig != 1 or kf.imagedepth != 1:
            why = "planar or volumetric layout"
        elif kf.photometric not in (_RGB, _YCBCR):
            why = f"photometric {kf.photometric!s} is neither RGB nor YCbCr"
        if why:
            raise RawTilesUnsupported(why)
        tables = page.jpegtables
        if tables is not None and (bytes(tables[:2]) != b"\xff\xd8" or bytes(tables[-2:]) != b"\xff\xd9"):
            raise RawTilesUnsupported("JPEGTables is not an SOI ... EOI table stream")
        self._state = {
            "fh": tf.filehandle, "w": int(kf.imagewidth), "h": int(kf.imagelength),
            "tw": int(kf.tilewidth), "th": int(kf.tilelength),
            "offsets": np.asarray(page.dataoffsets, dtype=np.int64),
            "counts": np.asarray(page.databytecounts, dtype=np.int64),
            "head": b"\xff\xd8" + (_ADOBE_RGB if kf.photometric == _RGB else b"")
            + (bytes(tables[2:-2]) if tables is not None else b""),
            "decode": kf.decode, "jpegtables": tables, "jpegheader": kf.jpegheader,
            "cache": OrderedDict(), "used": 0, "lock": threading.Lock(), "probed": {},
        }
        self._state["nx"] = math.ceil(self._state["w"] / self._state["tw"])
        self._state["fh"].set_lock(True)

    def __getstate__(self):
        return {"slide": self.slide, "level": self.level, "device": str(self.device),
                "cache_bytes": self.cache_bytes}

    def __setstate__(self, state):
        self.slide = state["slide"]
        self.level = state["level"]
        self.device = torch.device(state["device"])
        self.cache_bytes = state["cache_bytes"]
        self._state = None

    @property
    def st(self) -> dict:
        if self._state is None:
            self._load()
        return self._state

    @property
    def downsample(self) -> float:
        return float(self.slide.level_downsamples[self.level])

    # ------------------------------------------------------------------ reading bytes
    def _stream(self, index: int) -> bytes | None:
        st = self.st
        cnt = int(st["counts"][index])
        if cnt <= 0:
            return None
        fh = st["fh"]
        with fh.lock:
            fh.seek(int(st["offsets"][index]))
            data = fh.read(cnt)
        if data[:2] != b"\xff\xd8":
            raise self._error(index, "its stored bytes are not a JPEG stream (no SOI marker)")
        # as the tifffile path (backends/tiff.py): a zero-filled or cut tile has no EOI; padding may follow it
        if data[-2:] != b"\xff\xd9" and data.rstrip(b"\0")[-2:] != b"\xff\xd9":
            raise self._error(index, "its JPEG stream has no end (EOI) marker: the tile is cut short or zero-filled")
        return st["head"] + data[2:]

    def _error(self, index: int, why: str):
        """The SlideReadError read_tile (tifffile) gives for a bad region, naming the stored tile."""
        from .errors import SlideReadError

        st = self.st
        tx, ty = index % st["nx"], index // st["nx"]
        return SlideReadError(f"{self.slide.path}: failed to read level {self.level} region at ({tx * st['tw']}, "
                              f"{ty * st['th']}) size {st['tw']}x{st['th']} (stored tile {index}): {why}. The file is "
                              "corrupt there; copy or download it again")

    def _decode(self, streams: list, device, tiles) -> list:
        """Decode a batch; a stream the decoder refuses raises the SlideReadError naming its tile."""
        try:
            return _decode_jpeg(streams, device)
        except RuntimeError:
            for s, idx in zip(streams, tiles):
                try:
                    _decode_jpeg([s], device)
                except RuntimeError as exc:
                    why = str(exc).rsplit(",", 1)[-1].strip() or type(exc).__name__
                    raise self._error(int(idx), f"JPEG decode failed: {why}") from None
            raise

    def _layout(self, xs, ys, tile_px: int):
        """Stored tiles needed (in first-use order) and placements with u indexing that list."""
        st = self.st
        ds = self.downsample
        w, h, tw, th, nx = st["w"], st["h"], st["tw"], st["th"], st["nx"]
        order: dict[int, int] = {}
        rows = []
        for b, (x, y) in enumerate(zip(np.asarray(xs).tolist(), np.asarray(ys).tolist())):
            lx, ly = round(x / ds), round(y / ds)  # as Slide.read_tile
            x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + tile_px, w), min(ly + tile_px, h)
            if x1 <= x0 or y1 <= y0:
                continue
            for ty in range(y0 // th, (y1 - 1) // th + 1):
                for tx in range(x0 // tw, (x1 - 1) // tw + 1):
                    idx = ty * nx + tx
                    u = order.setdefault(idx, len(order))
                    px, py = tx * tw, ty * th
                    ya, yb = max(y0, py), min(y1, py + th)
                    xa, xb = max(x0, px), min(x1, px + tw)
                    rows.append((b, u, ya - py, xa - px, ya - ly, xa - lx, yb - ya, xb - xa))
        place = np.asarray(rows, dtype=np.int64).reshape(-1, 8)
        return list(order), place

    def fetch(self, xs, ys, tile_px: int) -> RawBatch:
        """Read (not decode) what tiles at level-0 (xs, ys) need: cheap enough for a DataLoader worker."""
        from .errors import SlideReadError

        tiles, place = self._layout(xs, ys, int(tile_px))
        chunks, bounds, keep, used = [], [0], {}, []
        for u, idx in enumerate(tiles):
            try:
                s = self._stream(idx)
            except SlideReadError as exc:  # raised by decode, in the main process, without a worker traceback
                return RawBatch(data=torch.empty(0, dtype=torch.uint8), bounds=np.zeros(1, np.int64),
                                place=np.zeros((0, 8), np.int64), n=len(xs), tile_px=int(tile_px), error=str(exc))
            if s is None:
                keep[u] = -1
                continue
            keep[u] = len(chunks)
            chunks.append(s)
            used.append(idx)
            bounds.append(bounds[-1] + len(s))
        if len(place):
            place[:, 1] = [keep[int(u)] for u in place[:, 1]]
        buf = bytearray(b"".join(chunks))
        data = torch.frombuffer(buf, dtype=torch.uint8) if buf else torch.empty(0, dtype=torch.uint8)
        return RawBatch(data=data, bounds=np.asarray(bounds, dtype=np.int64), place=place, n=len(xs),
                        tile_px=int(tile_px), tiles=tuple(used))

    # ------------------------------------------------------------------ decoding
    def decode(self, batch: RawBatch, device=None) -> torch.Tensor:
        """uint8 [B, tile_px, tile_px, 3] on `device` (default: the reader's) from a `fetch` result."""
        from .errors import SlideReadError

        if batch.error:
            raise SlideReadError(batch.error)
        dev = self.device if device is None else torch.device(device)
        self.check_device(dev)
        streams = batch.streams()
        decoded = self._decode(streams, dev, batch.tiles) if streams else []
        return _assemble(decoded, batch.place, batch.n, batch.tile_px, dev)

    def read_batch(self, xs, ys, tile_px: int = 256) -> torch.Tensor:
        """uint8 [B, tile_px, tile_px, 3] of the tiles with level-0 top-left corners (xs, ys), on the reader's
        device; the same pixels as ``slide.read_tile(x, y, tile_px, mpp)`` (within decoder rounding on CUDA)."""
        if self.device.type != "cpu" or self.cache_bytes <= 0:
            return self.decode(self.fetch(xs, ys, tile_px))
        self.check_device(self.device)
        tiles, place = self._layout(xs, ys, int(tile_px))
        st = self.st
        cache = st["cache"]
        decoded: list = [None] * len(tiles)
        todo, streams = [], []
        with st["lock"]:
            for u, idx in enumerate(tiles):
                hit = cache.get(idx)
                if hit is not None:
                    cache.move_to_end(idx)
                    decoded[u] = hit
        for u, idx in enumerate(tiles):
            if decoded[u] is None:
                s = self._stream(idx)
                if s is None:
                    decoded[u] = False
                else:
                    todo.append(u)
                    streams.append(torch.frombuffer(bytearray(s), dtype=torch.uint8))
        if streams:
            for u, img in zip(todo, self._decode(streams, "cpu", [tiles[u] for u in todo])):
                decoded[u] = img
            with st["lock"]:
                for u in todo:
                    idx = tiles[u]
                    if idx not in cache:
                        cache[idx] = decoded[u]
                        st["used"] += decoded[u].numel()
                while st["used"] > self.cache_bytes and len(cache) > 1:
                    _, old = cache.popitem(last=False)
                    st["used"] -= old.numel()
        missing = [u for u, d in enumerate(decoded) if d is False]
        if missing:  # re-index so that missing stored tiles are u = -1 (white)
            keep, out = {}, []
            for u, d in enumerate(decoded):
                keep[u] = -1 if d is False else len(out)
                if d is not False:
                    out.append(d)
            place = place.copy()
            place[:, 1] = [keep[int(u)] for u in place[:, 1]]
            decoded = out
        return _assemble(decoded, place, len(xs), int(tile_px), self.device)

    # ------------------------------------------------------------------ parity probe
    def probe(self, device) -> dict:
        """Compare the decoder on `device` with tifffile's (the pixels `read_tile` returns) on up to three
        stored tiles (first, middle, last non-empty): {"ok", "mean_abs", "p999_abs", "max_abs", "device"}."""
        st = self.st
        nonempty = np.flatnonzero(st["counts"] > 0)
        if nonempty.size == 0:
            return {"ok": True, "mean_abs": 0.0, "p999_abs": 0.0, "max_abs": 0, "device": str(device)}
        picks = sorted({int(nonempty[0]), int(nonempty[nonempty.size // 2]), int(nonempty[-1])})
        streams = [torch.frombuffer(bytearray(self._stream(i)), dtype=torch.uint8) for i in picks]
        ours = _decode_jpeg(streams, torch.device(device))
        diffs = []
        fh = st["fh"]
        for i, img in zip(picks, ours):
            with fh.lock:
                fh.seek(int(st["offsets"][i]))
                raw = fh.read(int(st["counts"][i]))
            ref, _, _ = st["decode"](raw, i, jpegtables=st["jpegtables"], jpegheader=st["jpegheader"],
                                     _fullsize=True)
            ref = ref.reshape(ref.shape[-3:])
            got = img.permute(1, 2, 0).cpu().numpy()
            if got.shape != ref.shape:
                return {"ok": False, "device": str(device),
                        "reason": f"decoded tile {i} is {got.shape}, tifffile's {ref.shape}"}
            diffs.append(np.abs(got.astype(np.int16) - ref.astype(np.int16)).ravel())
        d = np.concatenate(diffs)
        res = {"mean_abs": float(d.mean()), "p999_abs": float(np.quantile(d, 0.999)), "max_abs": int(d.max()),
               "device": str(device)}
        res["ok"] = res["mean_abs"] <= PROBE_MEAN_MAX and res["p999_abs"] <= PROBE_P999_MAX
        if not res["ok"]:
            res["reason"] = (f"torchvision's decode on {device} differs from tifffile's: mean "
                             f"{res['mean_abs']:.2f}, 99.9th percentile {res['p999_abs']:.0f}, max "
                             f"{res['max_abs']} grey levels")
        return res

    def check_device(self, device) -> dict:
        """The probe result for `device` (computed once); raises RawTilesUnsupported when it failed."""
        key = str(torch.device(device))
        probed = self.st["probed"]
        if key not in probed:
            probed[key] = self.probe(device)
        res = probed[key]
        if not res["ok"]:
            raise RawTilesUnsupported(res["reason"])
        return res


def _assemble(decoded: list, place: np.ndarray, n: int, tile_px: int, device) -> torch.Tensor:
    hwc = [d.permute(1, 2, 0) for d in decoded]  # torchvision returns CHW (views of HWC buffers on CPU)
    if (len(place) == n and n > 0 and (place[:, 0] == np.arange(n)).all() and (place[:, 1] >= 0).all()
            and not place[:, 2:6].any() and (place[:, 6:8] == tile_px).all()
            and all(tuple(hwc[u].shape[:2]) == (tile_px, tile_px) for u in place[:, 1].tolist())):
        # each output tile is one whole stored tile (a grid aligned with the file's tiles): one copy
        return torch.stack([hwc[u] for u in place[:, 1].tolist()])
    out = torch.full((n, tile_px, tile_px, 3), 255, dtype=torch.uint8, device=device)
    for b, u, sy, sx, dy, dx, h, w in place.tolist():
        if u >= 0:
            out[b, dy:dy + h, dx:dx + w] = hwc[u][sy:sy + h, sx:sx + w]
    return out


def raw_reader(slide, tile_px: int, mpp: float, device="cpu") -> tuple[RawTileReader | None, str]:
    """(reader, "") when tiles of `tile_px` at `mpp` can be read by the raw path on `device`, else
    (None, why). The decoder on `device` is probed against tifffile's before a reader is returned."""
    backend = getattr(slide, "backend", "tiffslide")
    if backend != "tiffslide":  # the raw path reads the JPEG bytes of TIFF tiles: other backends have none
        return None, f"the {backend!r} backend has no raw JPEG tiles"
    level, _, resized = slide.tile_geometry(tile_px, mpp)
    if resized:
        return None, (f"level {level} is at {slide.level_mpp(level):.4g} mpp, not {mpp:g}: tiles are resized")
    try:
        import torchvision.io  # noqa: F401
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency through timm
        return None, f"torchvision is not importable: {exc}"
    try:
        reader = RawTileReader(slide, level, device=device)
        reader.check_device(device)
    except RawTilesUnsupported as exc:
        return None, f"level {level}: {exc}"
    except Exception as exc:  # noqa: BLE001 - an unusual file or a decoder that refuses it: read_tile reads it
        return None, f"level {level}: {type(exc).__name__}: {exc}"
    return reader, ""
