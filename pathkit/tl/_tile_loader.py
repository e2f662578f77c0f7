"""Reading tiles for the encoder: a Dataset over tile coordinates and its DataLoader."""
from __future__ import annotations

import multiprocessing
import os
import pickle
import warnings

import numpy as np
import torch


class TileDataset(torch.utils.data.Dataset):
    """Tile i of a tile table -> uint8 tensor [tile_px, tile_px, 3] (HWC) read with `Slide.read_tile`.

    Batches stay HWC; the consumer permutes them to CHW as a free view with channels-last strides, the
    layout torch's fast uint8 resize wants."""

    def __init__(self, slide, xs, ys, tile_px: int, mpp: float):
        self.slide = slide
        self.xs = np.asarray(xs, dtype=np.int64)
        self.ys = np.asarray(ys, dtype=np.int64)
        self.tile_px = int(tile_px)
        self.mpp = float(mpp)

    def __len__(self):
        return len(self.xs)

    def __getitem__(self, i):
        tile = self.slide.read_tile(int(self.xs[i]), int(self.ys[i]), tile_px=self.tile_px, mpp=self.mpp)
        if not (tile.flags.writeable and tile.flags.c_contiguous):  # torch wants its own writable memory
            tile = np.array(tile, order="C", copy=True)
        return torch.from_numpy(tile)


def _worker_init(_):
    # A forked worker inherits the parent's open file (and its shared seek offset); give each worker its
    # own handle by a pickle round trip, which reopens the slide lazily.
    info = torch.utils.data.get_worker_info()
    info.dataset.slide = pickle.loads(pickle.dumps(info.dataset.slide))


class _RawBatches(torch.utils.data.Dataset):
    """Batch i of the tile table through the raw-tile fast path (:mod:`pathkit._raw_tiles`): the decoded
    uint8 batch [B, tile_px, tile_px, 3] (decode=True, CPU) or the compressed `RawBatch` that the consumer
    decodes on its GPU."""

    def __init__(self, reader, xs, ys, tile_px: int, batch_size: int, decode: bool):
        self.reader, self.decode = reader, decode
        self.xs, self.ys = np.asarray(xs, dtype=np.int64), np.asarray(ys, dtype=np.int64)
        self.tile_px, self.batch_size = int(tile_px), int(batch_size)

    def __len__(self):
        return (len(self.xs) + self.batch_size - 1) // self.batch_size

    def __getitem__(self, i):
        sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
        if self.decode:
            return self.reader.read_batch(self.xs[sl], self.ys[sl], self.tile_px)
        return self.reader.fetch(self.xs[sl], self.ys[sl], self.tile_px)


def _raw_worker_init(_):  # as _worker_init: a worker's own file handle
    info = torch.utils.data.get_worker_info()
    info.dataset.reader = pickle.loads(pickle.dumps(info.dataset.reader))


class _DecodeOn:
    """Iterates a DataLoader of `RawBatch` and decodes each on `device` (nvJPEG) in the calling process."""

    def __init__(self, loader, reader, device):
        self.loader, self.reader, self.device = loader, reader, device

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for raw in self.loader:
            yield self.reader.decode(raw, self.device)


def _raw_loader(slide, xs, ys, tile_px, mpp, batch_size, num_workers, pin_memory, device, raw_tiles):
    """The raw-path loader, or (None, why) when the level is not eligible (or raw_tiles is off)."""
    from .._raw_tiles import raw_reader

    if raw_tiles is None:
        raw_tiles = os.environ.get("PATHKIT_RAW_TILES", "auto")
    if raw_tiles in (False, "0", "off", "false", "False"):
        return None, "switched off"
    dev = torch.device(device if device is not None else ("cuda" if pin_memory else "cpu"))
    reader, why = raw_reader(slide, tile_px, mpp, device=dev) if dev.type == "cuda" else (None, "")
    decode_here = reader is None
    if decode_here:  # CPU decoding in the readers (also when the GPU's decoder failed its parity probe)
        reader, why_cpu = raw_reader(slide, tile_px, mpp, device="cpu")
        why = "; ".join(w for w in (why, why_cpu) if w)
        if reader is None:
            if raw_tiles is True:
                raise ValueError(f"{slide.path}: raw_tiles=True but the raw-tile path cannot read it: {why}")
            return None, why
    ds = _RawBatches(reader, xs, ys, tile_px, batch_size, decode=decode_here)
    kw = {}
    if num_workers > 0:
        kw = {"worker_init_fn": _raw_worker_init, "prefetch_factor": 2, "persistent_workers": False}
    loader = torch.utils.data.DataLoader(ds, batch_size=None, shuffle=False, num_workers=num_workers,
                                         pin_memory=pin_memory and decode_here, **kw)
    return (loader if decode_here else _DecodeOn(loader, reader, dev)), why


def tile_loader(slide, xs, ys, tile_px, mpp, batch_size=64, num_workers=0, pin_memory=False, *, device=None,
                raw_tiles=None):
    """Batches of uint8 tiles [B, tile_px, tile_px, 3] (HWC) in table order.

    raw_tiles: "auto" (the default; None reads $PATHKIT_RAW_TILES, "auto" when unset) uses the raw-tile fast
    path (:mod:`pathkit._raw_tiles`: batched JPEG decoding of the stored tiles, on `device` when it is a GPU
    whose decoder passes the parity probe, else in the readers on CPU) when the level read is JPEG-tiled at
    the target resolution, and `Slide.read_tile` otherwise; False (or "0"): always `Slide.read_tile`; True:
    the raw path or ValueError. Same pixels either way on CPU. The loader's ``raw_tiles`` attribute says
    which path runs ("" when raw) and ``raw_reason`` why not.
    """
    raw, why = _raw_loader(slide, xs, ys, tile_px, mpp, batch_size, num_workers, pin_memory, device, raw_tiles)
    if raw is not None:
        raw.raw_tiles, raw.raw_reason = True, why
        return raw
    ds = TileDataset(slide, xs, ys, tile_px, mpp)
    kw = {}
    if num_workers > 0:
        kw = {"worker_init_fn": _worker_init, "prefetch_factor": 2, "persistent_workers": False}
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         pin_memory=pin_memory, **kw)
    loader.raw_tiles, loader.raw_reason = False, why
    return loader


def in_daemon_process() -> bool:
    """True inside a daemonic process (Dask's worker processes, ``multiprocessing.Pool`` workers), which may
    not start child processes: DataLoader workers would fail with "daemonic processes are not allowed to
    have children"."""
    return bool(multiprocessing.current_process().daemon)


def default_num_workers() -> int:
    """Reader processes for one slide: min(4, CPUs available); 0 inside a daemonic process, where the slide
    is read in the calling process (a cohort already runs one slide per worker there)."""
    if in_daemon_process():
        return 0
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return min(4, n)


def resolve_num_workers(num_workers, n_tiles: int, batch_size: int) -> int:
    """`num_workers` for a table of `n_tiles`: None -> :func:`default_num_workers`; never more workers than
    batches (starting readers that get nothing costs time); 0 with a warning when more were asked for
    inside a daemonic process."""
    if num_workers is None:
        num_workers = default_num_workers()
    num_workers = int(num_workers)
    if num_workers > 0 and in_daemon_process():
        warnings.warn(f"num_workers={num_workers} ignored: this is a daemonic process (a Dask or "
                      "multiprocessing.Pool worker), which cannot start reader processes; reading tiles in "
                      "this process instead", RuntimeWarning, stacklevel=3)
        num_workers = 0
    return max(0, min(num_workers, -(-n_tiles // int(batch_size))))
