"""Speed and memory of `pk.tl.segment_cells` on CPU, per cell segmenter.

    python benchmarks/bench_cells.py [--repeat 3] [--side 2048]

Rows (best of `--repeat` interleaved rounds, this process, one thread):

- baseline: the same segmenter called once on the whole generated image in memory (no tiles, no margins,
  no slide reads): what the tiling costs is the ratio against it;
- pathkit: ``pk.tl.segment_cells`` over 256-px tiles at 0.5 um/px of the same image written as a slide
  (16-um margins read around each tile, border cells merged, outlines kept);
- CMU-1: every tile of the real CMU-1 sample with tissue (min_tissue 0.1).

- instanseg: the same tiles through ``model="instanseg"`` (pathkit's UNet and post-processing, same
  cells path). The released weights are not reachable offline, so the run uses the brightfield_nuclei
  architecture (UNet 256-128-64-32, one 2+2+1 head, pixel classifier 4-10-10-1) with random weights, the seed
  head shifted so that about 0.5 % of pixels pass the seed threshold and a hand-set classifier (discs around
  seeds): the network's cost is the real one; the post-processing's grows with the number of seeds, which
  random weights only approximate. A second table splits one read's time into network and post-processing.

Peak RSS is measured in a fresh subprocess (``resource.getrusage`` maxrss) that opens, tiles and segments a whole
generated slide of ``--big`` px a side (made by another process), outlines streamed to parquet, with the
watershed.

HoVer-Net (``--hovernet-tiles N``, default 0: skipped): ``segment_cells(model="hovernet", weights="random")`` on the
first N tiles of the generated slide, interleaved with ``watershed`` on the same tiles; HoVer-Net reads at
0.25 um/px (4x the pixels) and runs 256-px patches stepped by 164 px, ``--threads`` torch threads. Random
weights: its cell counts are noise, its time is the real network's (same layers), plus the post-processing
of noise maps. ``--device cuda`` times the network on a GPU. The machine is shared by other jobs: ratios
measured in the same run are the figures to trust. Writes benchmarks/results/bench_cells.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

_MAKE = r"""
import sys
from pathkit.cells import synthetic_nuclei, write_rgb_slide
side, folder = int(sys.argv[1]), sys.argv[2]
rgb, truth = synthetic_nuclei(side, side, 0.5, n=side * side // 6000, random_state=1)
write_rgb_slide(folder + "/big.tif", rgb, 0.5)
print(len(truth))
"""

# a fresh process that only opens, tiles and segments, so that its peak RSS is the segmentation's
_RSS = r"""
import resource, sys, time
import pathkit as pk
side, folder, n_true = int(sys.argv[1]), sys.argv[2], sys.argv[3]
truth = [0] * int(n_true)
slide = pk.read_slide(folder + "/big.tif")
tiles = pk.pp.tile(slide, tile_px=256, mpp=0.5, min_tissue=0.0, qc=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
cells = pk.tl.segment_cells(tiles, slide, model="watershed", progress=False,
                            polygons_path=folder + "/big.parquet")
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(cells.n_obs, len(truth), tiles.n_obs, dt, before / 1024, peak / 1024)
"""


def random_instanseg(path, rgb):
    """brightfield_nuclei's layout with random weights (seed bias raised: ~2 % of pixels above threshold)."""
    import json

    import numpy as np
    import torch
    from safetensors.torch import save_file

    from pathkit.cells._instanseg import normalise
    from pathkit.cells._instanseg_net import InstanSegUNet
    from pathkit.cells._instanseg_post import PixelClassifier

    torch.manual_seed(0)
    net, mlp = InstanSegUNet(3, [[2, 2, 1]], (256, 128, 64, 32), "BATCH").eval(), PixelClassifier(4, 10)
    with torch.no_grad():
        seed = net(normalise(rgb[:320, :320])[None])[0, 4] / 15 + 0.5
        # the seed head's BatchNorm shift: 0.5 % of pixels above the seed threshold
        net.decoders[0].final_block[2][1].bias += 15 * (0.7 - float(np.quantile(seed.numpy(), 0.995)))
        # a random classifier makes no instance (or one over everything): discs of ~2.5 um around each seed,
        # logit = 3 - 1.5 |embedding offset|_1, as in tests/fixtures/parity/make_instanseg.py
        for p in mlp.parameters():
            p.zero_()
        for k, (i, sign) in enumerate(((0, 1), (0, -1), (1, 1), (1, -1))):
            mlp.fc1.weight[k, i] = sign
        mlp.fc2.weight[0, :4] = 1.0
        mlp.fc3.weight[0, 0], mlp.fc3.bias[0] = -1.5, 3.0
    sd = {**{f"fcn.{k}": v for k, v in net.state_dict().items()},
          **{f"pixel_classifier.{k}": v for k, v in mlp.state_dict().items()}}
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={
        "format": "pathkit-instanseg-1", "params": "{}",
        "layout": json.dumps({"pixel_size": 0.5, "n_sigma": 2, "dim_coords": 2, "dim_seeds": 1})})
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--side", type=int, default=2048)
    ap.add_argument("--big", type=int, default=4096)
    ap.add_argument("--hovernet-tiles", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--hovernet-only", action="store_true")
    ap.add_argument("--no-rss", action="store_true", help="skip the whole-slide peak-RSS subprocess")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import numpy as np

    import pathkit as pk
    from pathkit.cells import synthetic_nuclei, watershed_nuclei, write_rgb_slide

    tmp = Path(tempfile.mkdtemp(prefix="bench_cells_"))
    rgb, truth = synthetic_nuclei(args.side, args.side, 0.5, n=args.side * args.side // 6000, random_state=0)
    slide = pk.read_slide(write_rgb_slide(tmp / "gen.tif", rgb, 0.5))
    tiles = pk.pp.tile(slide, tile_px=256, mpp=0.5, min_tissue=0.0, qc=False)
    cmu = pk.datasets.cmu1_small()
    cmu_tiles = pk.pp.tile(cmu, tile_px=256, mpp=0.5, min_tissue=0.1, qc=False)
    hovernet = None
    if args.hovernet_tiles:
        hovernet = bench_hovernet(pk, slide, tiles[: args.hovernet_tiles].copy(), args)
    if args.hovernet_only:  # written beside the full run's results, not over them
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "bench_cells_hovernet.json").write_text(json.dumps(
            {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
             "pathkit": pk.__version__, "repeat": args.repeat, "hovernet": hovernet}, indent=1))
        return
    counts = {}
    weights = random_instanseg(tmp / "instanseg_random.safetensors", rgb)

    def base():
        counts["baseline"] = int(watershed_nuclei(rgb, 0.5)[0].max())

    def tiled():
        counts["pathkit"] = pk.tl.segment_cells(tiles, slide, model="watershed", progress=False).n_obs

    def real():
        counts["CMU-1"] = pk.tl.segment_cells(cmu_tiles, cmu, model="watershed", progress=False).n_obs

    def tiled_is():
        counts["instanseg"] = pk.tl.segment_cells(tiles, slide, model="instanseg", weights=weights,
                                                  progress=False).n_obs

    def real_is():
        counts["CMU-1 instanseg"] = pk.tl.segment_cells(cmu_tiles, cmu, model="instanseg", weights=weights,
                                                        progress=False).n_obs

    fns = {"baseline": base, "pathkit": tiled, "CMU-1": real, "instanseg": tiled_is, "CMU-1 instanseg": real_is}
    times = {k: [] for k in fns}
    for _ in range(args.repeat):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    n_tiles = {"baseline": None, "pathkit": tiles.n_obs, "CMU-1": cmu_tiles.n_obs, "instanseg": tiles.n_obs,
               "CMU-1 instanseg": cmu_tiles.n_obs}
    rows = []
    print(f"watershed and instanseg (random weights), one thread; generated image {args.side}x{args.side} px "
          f"({len(truth)} nuclei), CMU-1 {cmu_tiles.n_obs} tiles; best of {args.repeat}; shared machine")
    print(f"{'run':16s} {'s':>8s} {'cells':>7s} {'cells/s':>9s} {'tiles/s':>8s} {'x baseline':>10s}")
    for k in fns:
        t = min(times[k])
        r = {"run": k, "seconds": t, "cells": counts[k], "cells_per_s": counts[k] / t,
             "tiles_per_s": n_tiles[k] / t if n_tiles[k] else None,
             "ratio_vs_baseline": t / min(times["baseline"]) if not k.startswith("CMU-1") else None,
             "x_watershed_tiled": (t / min(times["pathkit"]) if k == "instanseg" else
                                   t / min(times["CMU-1"]) if k == "CMU-1 instanseg" else None)}
        rows.append(r)
        tps = f"{r['tiles_per_s']:8.1f}" if r["tiles_per_s"] else f"{'-':>8s}"
        ratio = f"{r['ratio_vs_baseline']:10.2f}" if r["ratio_vs_baseline"] else f"{'-':>10s}"
        print(f"{k:16s} {t:8.2f} {counts[k]:7d} {r['cells_per_s']:9.0f} {tps} {ratio}")

    from pathkit.cells._instanseg import InstanSegModel

    model, split = InstanSegModel(weights, device="cpu"), {"network": [], "post-processing": []}
    for k in range(args.repeat * 4):
        read = rgb[k * 64 % (args.side - 320):][:320, :320]
        t0 = time.perf_counter()
        out = model.output(read)
        t1 = time.perf_counter()
        lab = model.labels_of_output(out)
        split["network"].append(t1 - t0)
        split["post-processing"].append(time.perf_counter() - t1)
    split = {k: float(np.median(v)) for k, v in split.items()}
    print(f"instanseg, one 320 x 320 read (median of {args.repeat * 4}): network {split['network']:.2f} s, "
          f"post-processing {split['post-processing']:.2f} s ({int(lab.max())} instances in the last read)")
    rows.append({"run": "instanseg read split", **split})
    for k in ("instanseg", "CMU-1 instanseg"):
        print(f"{k}: {rows[list(fns).index(k)]['x_watershed_tiled']:.2f}x the watershed's time on the same tiles")
    rss = None
    if args.no_rss:
        return _write(pk, args, rows, rss, hovernet)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    made = subprocess.run([sys.executable, "-c", _MAKE, str(args.big), str(tmp)], capture_output=True, text=True,
                          env=env, check=True)
    out = subprocess.run([sys.executable, "-c", _RSS, str(args.big), str(tmp), made.stdout.split()[-1]],
                         capture_output=True, text=True, env=env, check=True)
    n, n_true, nt, dt, before, peak = out.stdout.split()[-6:]
    rss = {"side_px": args.big, "cells": int(n), "true_nuclei": int(n_true), "tiles": int(nt),
           "seconds": float(dt), "rss_before_mb": float(before), "peak_rss_mb": float(peak)}
    print(f"whole slide {args.big}x{args.big} px: {n} cells ({n_true} generated) in {nt} tiles, {float(dt):.1f} s, "
          f"peak RSS {float(peak):.0f} MB (before segmenting {float(before):.0f} MB)")
    _write(pk, args, rows, rss, hovernet)


def _write(pk, args, rows, rss, hovernet=None):
    import skimage
    import sklearn
    import torch

    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or
            platform.machine(), "python": platform.python_version(), "scikit-image": skimage.__version__,
            "scikit-learn": sklearn.__version__, "torch": torch.__version__, "pathkit": pk.__version__,
            "repeat": args.repeat, "torch_threads": torch.get_num_threads()}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_cells.json").write_text(json.dumps({"info": info, "rows": rows, "whole_slide": rss,
                                                          **({"hovernet": hovernet} if hovernet
                                                             else {})}, indent=1))


def bench_hovernet(pk, slide, tiles, args):
    """HoVer-Net (random weights) and watershed on the same tiles, interleaved; the network alone too."""
    import warnings

    import numpy as np
    import torch

    from pathkit.cells._models import cell_segmenter

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
    seg = cell_segmenter("hovernet", weights="random", device=args.device)
    counts, times = {}, {"hovernet": [], "watershed": [], "hovernet network only": []}
    n_patch = 2
    patch = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (n_patch, 3, 256, 256))).float()
    patch = patch.to(seg.device)

    def net_only():
        with torch.no_grad():
            seg.model(patch)
        if seg.device.type == "cuda":
            torch.cuda.synchronize()

    net_only()  # warm-up (cuDNN autotuning, allocator)
    for _ in range(args.repeat):
        for k in ("hovernet", "watershed", "hovernet network only"):
            t0 = time.perf_counter()
            if k == "hovernet network only":
                net_only()
            else:
                counts[k] = pk.tl.segment_cells(tiles, slide, model=k, weights="random" if k == "hovernet" else None,
                                                device=args.device, progress=False).n_obs
            times[k].append(time.perf_counter() - t0)
    rows = []
    print(f"HoVer-Net (random weights, {args.device}, {args.threads} torch thread(s)) vs watershed on the same "
          f"{tiles.n_obs} tiles of 256 px at 0.5 um/px; best of {args.repeat}; shared machine")
    print(f"{'run':24s} {'s':>8s} {'cells':>7s} {'cells/s':>9s} {'tiles/s':>8s} {'x watershed':>11s}")
    for k, ts in times.items():
        t = min(ts)
        if k == "hovernet network only":
            r = {"run": k, "seconds": t, "patches_per_s": n_patch / t}
            print(f"{k:24s} {t:8.2f} {'-':>7s} {'-':>9s} {'-':>8s} {'-':>11s}  ({n_patch / t:.2f} patches of "
                  "256 px/s)")
        else:
            r = {"run": k, "seconds": t, "cells": counts[k], "cells_per_s": counts[k] / t,
                 "tiles_per_s": tiles.n_obs / t, "ratio_vs_watershed": t / min(times["watershed"])}
            print(f"{k:24s} {t:8.2f} {counts[k]:7d} {counts[k] / t:9.1f} {tiles.n_obs / t:8.2f} "
                  f"{r['ratio_vs_watershed']:11.1f}")
        rows.append(r)
    return {"device": args.device, "threads": args.threads, "tiles": int(tiles.n_obs),
            "torch": torch.__version__, "rows": rows}


if __name__ == "__main__":
    main()
