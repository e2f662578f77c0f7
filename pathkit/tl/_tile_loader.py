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


def tile_loader(slide, xs, ys, tile_px, mpp, batch_size=64, num_workers=0, pin_memory=False):
    """A DataLoader of uint8 tile batches [B, tile_px, tile_px, 3] (HWC) in table order."""
    ds = TileDataset(slide, xs, ys, tile_px, mpp)
    kw = {}
    if num_workers > 0:
        kw = {"worker_init_fn": _worker_init, "prefetch_factor": 2, "persistent_workers": False}
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                       pin_memory=pin_memory, **kw)


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
