"""Cost of pen removal (and of the mask cleaning) in `pk.pp.find_tissue` on a ~100k-tile synthetic slide.

    python benchmarks/bench_tissue.py            # generates the slide once into benchmarks/results/cache/

The slide: `pk.datasets.synthetic_slide`, 81,920 x 81,920 px at 0.5 mpp (101,124 tiles of 256 px at 0.5 mpp,
the slide of bench_memory.py, ~3.3 GB). `find_tissue` at its default 8 um/px reads a 5,120 x 5,120 mask
image (26 M px) from the pyramid. Rows (each the best of `--repeat` interleaved runs, in this process):

- otsu: ``pen=False, despeckle_um=0, fill_holes_um2=0, min_object_um2=0`` (the Otsu mask of before);
- otsu + cleaning: ``pen=False`` (closing, holes and islands by area: the defaults);
- otsu + cleaning + pen: the defaults (pen removal on);
- pen on an inked image: ``tissue_mask_from_rgb`` with and without pen on a 5,120 x 5,120 image tiled from
  the real diagnostic thumbnail circled in ink (../shared/data/patches/pen/), where the red hysteresis runs.

The figure that matters: (cleaning + pen) / (cleaning) - 1, the time pen removal adds. Writes
benchmarks/results/bench_tissue.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from _slide100k import BLOBS, CACHE, RESULTS, ROOT, SIDE, SLIDE  # noqa: F401  (shared slide)
RAW = {"pen": False, "despeckle_um": 0, "fill_holes_um2": 0, "min_object_um2": 0}


def best(fns: dict, repeat: int) -> dict:
    """Best time of each function over `repeat` rounds, the functions interleaved within a round so that a
    busy machine slows all of them alike."""
    times = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def main():
    import pathkit as pk
    from pathkit.pp.tissue import tissue_mask_from_rgb

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--slide", type=Path, default=SLIDE)
    args = ap.parse_args()
    if not args.slide.exists():
        print(f"generating {args.slide} ({SIDE} x {SIDE} px, ~3.3 GB) ...", flush=True)
        args.slide.parent.mkdir(parents=True, exist_ok=True)
        pk.datasets.synthetic_slide(args.slide, width=SIDE, height=SIDE, mpp=0.5, blobs=BLOBS, seed=2,
                                    progress=True)
    slide = pk.read_slide(args.slide)
    n_tiles = len(pk.pp.tile(slide, tissue=pk.pp.find_tissue(slide, **RAW), min_tissue=0.0, qc=False))
    pk.pp.find_tissue(slide)  # warm the reader and the pen lookup table
    rows = best({
        "otsu": lambda: pk.pp.find_tissue(slide, **RAW),
        "otsu + cleaning": lambda: pk.pp.find_tissue(slide, pen=False),
        "otsu + cleaning + pen (default)": lambda: pk.pp.find_tissue(slide),
    }, args.repeat)
    tm = pk.pp.find_tissue(slide)
    info = {"slide": str(args.slide), "dimensions": list(slide.dimensions), "n_tiles_256_at_05": n_tiles,
            "mask_shape": list(tm.mask.shape), "mask_px": int(tm.mask.size), "pen_fraction": tm.pen}
    data = Path(os.environ.get("PATHKIT_TEST_DATA", ROOT.parent / "shared" / "data"))
    thumb = data / "patches" / "pen" / "diagnostic-slide-thumb-rgb.png"
    if thumb.exists():
        from PIL import Image

        small = np.asarray(Image.open(thumb).convert("RGB"))
        reps = (-(-tm.mask.shape[0] // small.shape[0]), -(-tm.mask.shape[1] // small.shape[1]), 1)
        inked = np.ascontiguousarray(np.tile(small, reps)[: tm.mask.shape[0], : tm.mask.shape[1]])
        rows.update(best({"inked image, pen=False": lambda: tissue_mask_from_rgb(inked, pen=False),
                          "inked image, pen=True": lambda: tissue_mask_from_rgb(inked)}, args.repeat))
        info["inked_pen_fraction"] = tissue_mask_from_rgb(inked).pen
    pen_extra = rows["otsu + cleaning + pen (default)"] / rows["otsu + cleaning"] - 1
    out = {"rows_s": rows, "pen_extra": pen_extra, "info": info, "machine": platform.platform(),
           "cpus": os.cpu_count(), "repeat": args.repeat}
    if "inked image, pen=True" in rows:
        out["pen_extra_inked"] = rows["inked image, pen=True"] / rows["inked image, pen=False"] - 1
    print(f"{'row':40s} {'seconds':>8s}")
    for k, v in rows.items():
        print(f"{k:40s} {v:8.3f}")
    print(f"pen removal adds {pen_extra:+.1%} to find_tissue ({info['mask_px'] / 1e6:.1f} M mask px, "
          f"{n_tiles} tiles)")
    if "pen_extra_inked" in out:
        print(f"on an inked image it adds {out['pen_extra_inked']:+.1%} to tissue_mask_from_rgb")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_tissue.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
