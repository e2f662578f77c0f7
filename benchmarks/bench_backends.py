"""Slide backends on the same pixels: tiles/s of ``pk.pp.tile`` + ``pk.tl.embed_tiles`` (the 2-block test ViT,
``vit_tiny_test``, CPU) for CMU-1-Small-Region read by tiffslide and by OpenSlide, and its level 0 saved as a
PNG and a JPEG (quality 95) read by the plain-image backend.

    python benchmarks/bench_backends.py [--repeats 3] [--slide PATH]

Repeats are interleaved (backend A, B, C, D, A, B, ...) so that the load of other processes on the machine
spreads over all of them; the table gives the median seconds, tiles/s and the ratio to tiffslide measured in
the same run. Writes benchmarks/results/bench_backends.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--slide", default=str(HERE.parent.parent / "shared/data/slides/CMU-1-Small-Region.svs"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    import numpy as np
    import tiffslide
    from PIL import Image

    import pathkit as pk

    work = Path(tempfile.mkdtemp(prefix="bench_backends_"))
    ts = tiffslide.TiffSlide(args.slide)
    px = ts.read_region((0, 0), 0, ts.dimensions, as_array=True)
    mpp = float(ts.properties["tiffslide.mpp-x"])
    ts.close()
    Image.fromarray(px).save(work / "level0.png")
    Image.fromarray(px).save(work / "level0.jpg", quality=95)
    cases = {"tiffslide (SVS)": (args.slide, {"backend": "tiffslide"}),
             "openslide (SVS)": (args.slide, {"backend": "openslide"}),
             "image (PNG)": (work / "level0.png", {"mpp": mpp}),
             "image (JPEG q95)": (work / "level0.jpg", {"mpp": mpp})}
    # warm-up: torch / timm / the model, once, not timed
    s = pk.read_slide(args.slide)
    t = pk.pp.tile(s, 224, 0.5)[:8].copy()
    pk.tl.embed_tiles(t, s, "vit_tiny_test", device="cpu", num_workers=0, progress=False)
    times = {k: [] for k in cases}
    n_tiles = {}
    for _ in range(args.repeats):
        for name, (path, kw) in cases.items():
            t0 = time.perf_counter()
            s = pk.read_slide(path, **kw)
            tiles = pk.pp.tile(s, 224, 0.5)
            pk.tl.embed_tiles(tiles, s, "vit_tiny_test", device="cpu", num_workers=0, batch_size=32,
                              progress=False)
            times[name].append(time.perf_counter() - t0)
            n_tiles[name] = int(tiles.n_obs)
            s.close()
    base = statistics.median(times["tiffslide (SVS)"])
    rows = []
    print(f"{'backend':<20}{'tiles':>7}{'median s':>10}{'tiles/s':>9}{'vs tiffslide':>14}")
    for name in cases:
        med = statistics.median(times[name])
        rows.append({"backend": name, "tiles": n_tiles[name], "median_s": med, "tiles_per_s": n_tiles[name] / med,
                     "ratio_to_tiffslide": base / med, "runs_s": times[name]})
        print(f"{name:<20}{n_tiles[name]:>7}{med:>10.2f}{n_tiles[name] / med:>9.1f}{base / med:>13.2f}x")
    out = {"slide": str(args.slide), "repeats": args.repeats, "rows": rows, "python": platform.python_version(),
           "machine": platform.processor() or platform.machine(), "pathkit": pk.__version__,
           "note": "open + tile (224 px, 0.5 um/px) + embed (vit_tiny_test, CPU, 1 thread); interleaved repeats",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "numpy": np.__version__}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "bench_backends.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
