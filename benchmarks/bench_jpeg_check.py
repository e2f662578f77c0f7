"""Cost of the stored-JPEG-tile check on the tifffile read path (issue 28, item 8): every stored tile must
run from SOI to EOI (a zero-filled or cut tile has no EOI and libjpeg would decode it with a warning only).

    python benchmarks/bench_jpeg_check.py [--repeats 7] [--slide PATH]

Each repeat opens the slide afresh (empty decode cache) and reads every 256-px tile of level 0 at its own
mpp through ``Slide.read_tile``, once with the check and once with it turned off, interleaved (on, off, on,
off, ...) so that the load of other processes spreads over both. The table gives the median seconds, tiles/s
and the ratio to the unchecked read measured in the same run. Writes benchmarks/results/bench_jpeg_check.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent


def _read_all(path: str, check: bool) -> tuple[float, int]:
    import pathkit as pk

    s = pk.read_slide(path)
    direct = s.reader._direct
    if direct is None:
        raise SystemExit(f"{path}: not read by pathkit's direct TIFF reader; nothing to measure")
    if not check:
        for lv in direct.levels:
            lv["whole_jpeg"] = False
    mpp = s.mpp
    w, h = s.dimensions
    n = 0
    t0 = time.perf_counter()
    for y in range(0, h, 256):
        for x in range(0, w, 256):
            s.read_tile(x, y, 256, mpp)
            n += 1
    dt = time.perf_counter() - t0
    s.close()
    return dt, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--slide", default=str(HERE.parent.parent / "shared/data/slides/CMU-1-Small-Region.svs"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import pathkit as pk

    _read_all(args.slide, True)  # warm-up: imports, page cache
    times = {"with check": [], "without check": []}
    n = 0
    for _ in range(args.repeats):
        for name, ts in times.items():
            dt, n = _read_all(args.slide, name == "with check")
            ts.append(dt)
    base = statistics.median(times["without check"])
    rows = []
    print(f"{Path(args.slide).name}: {n} tiles of 256 px at level 0, {args.repeats} interleaved repeats")
    print(f"{'read path':<16} {'median s':>9} {'tiles/s':>9} {'ratio':>7}")
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"case": name, "median_s": med, "tiles_per_s": n / med, "ratio_to_unchecked": med / base,
                     "times_s": ts})
        print(f"{name:<16} {med:>9.4f} {n / med:>9.0f} {med / base:>7.3f}")
    # the check alone, on every stored tile's bytes of level 0, against tifffile's decode of the same bytes
    s = pk.read_slide(args.slide)
    d = s.reader._direct
    lv = d.levels[0]
    blobs = []
    for i, (off, cnt) in enumerate(zip(lv["offsets"], lv["counts"])):
        d.fh.seek(int(off))
        blobs.append((i, d.fh.read(int(cnt))))
    loops = 200
    t0 = time.perf_counter()
    for _ in range(loops):
        for i, b in blobs:
            d._check_jpeg(0, i, b)
    check_us = (time.perf_counter() - t0) / (loops * len(blobs)) * 1e6
    t0 = time.perf_counter()
    for i, b in blobs:
        lv["decode"](b, i, **lv["args"])
    decode_us = (time.perf_counter() - t0) / len(blobs) * 1e6
    s.close()
    print(f"check alone: {check_us:.2f} us per stored tile; tifffile decode: {decode_us:.0f} us per stored tile "
          f"({check_us / decode_us:.2e} of it)")
    cpu = subprocess.run(["bash", "-c", "lscpu | grep 'Model name'"], capture_output=True, text=True,
                         check=False).stdout.strip()
    out = {"slide": args.slide, "n_tiles": n, "repeats": args.repeats, "rows": rows, "cpu": cpu,
           "check_us_per_stored_tile": check_us, "decode_us_per_stored_tile": decode_us,
           "python": platform.python_version(), "pathkit": pk.__version__,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "note": "shared 2-core machine, other processes running; interleaved repeats"}
    res = HERE / "results"
    res.mkdir(exist_ok=True)
    (res / "bench_jpeg_check.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
