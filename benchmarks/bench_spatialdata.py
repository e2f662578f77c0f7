"""`pk.io.to_spatialdata` on the ~100k-tile synthetic slide: time and peak memory.

    python benchmarks/bench_spatialdata.py     # generates the slide once into benchmarks/results/cache/

The slide: `pk.datasets.synthetic_slide`, 81,920 x 81,920 px at 0.5 mpp (the slide of bench_tissue.py and
bench_memory.py), tiled at 256 px / 0.5 mpp (~100k tiles) with a 384-d float32 feature per tile (as a
ViT-S encoder gives). Each row runs in a fresh subprocess (peak RSS = VmHWM of that process minus its RSS
before the step, i.e. beyond the tiles AnnData and the imports):

- h5ad (baseline): ``tiles.write_h5ad`` of the same AnnData;
- build: ``to_spatialdata(tiles, slide)`` (the H&E as a lazy multiscale image, squares, the table);
- write, no image: ``to_spatialdata(tiles, image=False).write``;
- write, image at N um/px: ``to_spatialdata(tiles, slide, image_mpp=N).write`` (the full-resolution
  81,920^2 image is 20 GB of pixels: streaming it costs disk and hours here, not memory).

Rows are interleaved over ``--repeat`` rounds and the best time is kept; the machine is shared (other jobs
run), so ratios against the h5ad baseline of the same run matter more than seconds. Writes
benchmarks/results/bench_spatialdata.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _slide100k import BLOBS, CACHE, RESULTS, SIDE, SLIDE  # the shared 100k-tile slide

TILES = CACHE / "synthetic_100k_tiles.h5ad"


def _rss_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


def worker(step: str, out: Path, image_mpp: float) -> None:
    """One measured step in this (fresh) process; prints a JSON line."""
    import anndata as ad

    import pathkit as pk

    tiles = ad.read_h5ad(TILES)
    slide = pk.read_slide(SLIDE)
    import spatialdata  # noqa: F401  (import cost outside the measured step)

    before = _rss_mb("VmRSS")
    t0 = time.perf_counter()
    if step == "h5ad":
        tiles.write_h5ad(out / "t.h5ad")
    elif step == "build":
        sd = pk.io.to_spatialdata(tiles, slide)
        assert sd.images["he"]["scale0"]["image"].shape == (3, SIDE, SIDE)
    elif step == "write_noimage":
        pk.io.to_spatialdata(tiles, image=False).write(out / "x.zarr")
    elif step == "write_image":
        pk.io.to_spatialdata(tiles, slide, image_mpp=image_mpp).write(out / "x.zarr")
    dt = time.perf_counter() - t0
    print(json.dumps({"step": step, "seconds": dt, "peak_beyond_mb": _rss_mb("VmHWM") - before,
                      "rss_before_mb": before, "n_tiles": tiles.n_obs}), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--image-mpp", type=float, default=4.0)
    ap.add_argument("--worker", nargs=2, metavar=("STEP", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker[0], Path(args.worker[1]), args.image_mpp)
    import numpy as np

    import pathkit as pk

    if not SLIDE.exists():
        print(f"generating {SLIDE} ({SIDE} x {SIDE} px, ~3.3 GB) ...", flush=True)
        SLIDE.parent.mkdir(parents=True, exist_ok=True)
        pk.datasets.synthetic_slide(SLIDE, width=SIDE, height=SIDE, mpp=0.5, blobs=BLOBS, seed=2, progress=True)
    if not TILES.exists():
        slide = pk.read_slide(SLIDE)
        tiles = pk.pp.tile(slide, tile_px=256, mpp=0.5, min_tissue=0.0, qc=False)
        tiles.obsm["X_vits"] = np.random.default_rng(0).normal(size=(tiles.n_obs, 384)).astype(np.float32)
        tiles.write_h5ad(TILES)
    steps = ["h5ad", "build", "write_noimage", "write_image"]
    runs = {s: [] for s in steps}
    for _ in range(args.repeat):
        for s in steps:
            tmp = Path(tempfile.mkdtemp(prefix="bench-sdata-"))
            try:
                r = subprocess.run([sys.executable, __file__, "--worker", s, str(tmp), "--image-mpp",
                                    str(args.image_mpp)], capture_output=True, text=True, check=True)
                runs[s].append(json.loads(r.stdout.strip().splitlines()[-1]))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    best = {s: min(v, key=lambda d: d["seconds"]) | {"peak_beyond_mb": max(d["peak_beyond_mb"] for d in v)}
            for s, v in runs.items()}
    base = best["h5ad"]["seconds"]
    print(f"{'step':<16}{'seconds':>10}{'x h5ad':>9}{'peak MB beyond':>17}")
    for s in steps:
        b = best[s]
        print(f"{s:<16}{b['seconds']:>10.2f}{b['seconds'] / base:>9.2f}{b['peak_beyond_mb']:>17.0f}")
    from importlib.metadata import version

    out = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor(),
           "cpu_count": os.cpu_count(), "load_1min": os.getloadavg()[0], "n_tiles": best["h5ad"]["n_tiles"],
           "image_mpp": args.image_mpp, "repeat": args.repeat, "pathkit": pk.__version__,
           "spatialdata": version("spatialdata"), "anndata": version("anndata"), "python": platform.python_version(),
           "results": best}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_spatialdata.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
