"""Stain normalisation overhead in end-to-end tile embedding on CPU: tiles/s of pk.tl.embed_tiles with a
ViT-S/16 (registry entry ``lunit_vits16``, random weights: the speed is the architecture's) without
normalisation, with Macenko, Reinhard and Vahadane, on real tiles of CMU-1-Small-Region (224 px at 0.5 mpp).

    python benchmarks/bench_stain.py [--repeats 3] [--tiles 64] [--methods macenko,reinhard,vahadane,macenko_loop]

``macenko_loop`` is the previous path (torchstain's torch Macenko one tile at a time), for the before/after.
Runs are interleaved (none, macenko, reinhard, vahadane, macenko_loop, none, ...) so load from other processes hits each
alike; ratios are taken against the no-normalisation runs of the same execution (median over repeats, and the
median of the per-round ratios). The normaliser alone is timed on the same tiles, interleaved, as the median
of `repeats` runs. Writes benchmarks/results/bench_stain.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

DATA = Path(os.environ.get("PATHKIT_TEST_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def _torchstain_loop_class():
    import torch
    import torchstain.torch.normalizers as tsn

    import pathkit as pk

    class TorchstainLoop(pk.pp.StainNormalizer):
        """The previous path, for the before/after figure: torchstain's torch Macenko one tile at a time."""

        @classmethod
        def of(cls, target):
            fitted = pk.pp.fit_stain(target, "macenko")
            return cls("macenko", fitted.params, info=fitted.info)

        def transform_batch(self, batch):
            norm = tsn.TorchMacenkoNormalizer()
            norm.HERef = torch.tensor(self.params["stain_matrix"], dtype=torch.float32)
            norm.maxCRef = torch.tensor(self.params["max_concentrations"], dtype=torch.float32)
            with torch.inference_mode():
                return torch.stack([norm.normalize(t.permute(2, 0, 1), Io=self.Io, alpha=self.alpha, beta=self.beta,
                                                   stains=False)[0].clamp_(0, 255).to(torch.uint8) for t in batch])

    return TorchstainLoop


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tiles", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--methods", default="macenko,reinhard,vahadane,macenko_loop")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    import numpy as np
    import torch
    from PIL import Image

    import pathkit as pk

    loop_cls = _torchstain_loop_class()
    slide = pk.read_slide(DATA / "slides" / "CMU-1-Small-Region.svs")
    tiles = pk.pp.tile(slide, tile_px=224, mpp=0.5)
    tiles = tiles[: args.tiles].copy()
    target = np.array(Image.open(DATA / "stain" / "torchstain" / "target.png").convert("RGB"))
    norms = {"none": None}
    fit_s = {}
    for m in args.methods.split(","):
        t0 = time.perf_counter()
        norms[m] = pk.pp.fit_stain(target, m) if m != "macenko_loop" else loop_cls.of(target)
        fit_s[m] = time.perf_counter() - t0
    kw = {"device": "cpu", "dtype": "float32", "batch_size": args.batch_size, "num_workers": 0, "progress": False}
    pk.tl.embed_tiles(tiles, slide, "lunit_vits16", weights="random", key_added="warm", **kw)  # model load
    times = {k: [] for k in norms}
    for _ in range(args.repeats):
        for name, norm in norms.items():
            t0 = time.perf_counter()
            pk.tl.embed_tiles(tiles, slide, "lunit_vits16", weights="random", key_added=f"X_{name}", stain=norm,
                              **kw)
            times[name].append(time.perf_counter() - t0)
    # the normaliser alone on the same tiles, for the share of the time it takes
    imgs = torch.from_numpy(np.stack([slide.read_tile(int(x), int(y), 224, 0.5)
                                      for x, y in zip(tiles.obs["x"], tiles.obs["y"])]))
    alone = {k: [] for k in norms if norms[k] is not None}
    for _ in range(args.repeats):
        for name, runs in alone.items():
            for i in range(0, len(imgs), args.batch_size):
                t0 = time.perf_counter()
                norms[name].transform_batch(imgs[i:i + args.batch_size])
                runs.append(time.perf_counter() - t0)
    n_batches = -(-len(imgs) // args.batch_size)
    base = float(np.median(times["none"]))
    rows = []
    print(f"{'stain':10s} {'tiles/s':>8s} {'median s':>9s} {'overhead':>9s} {'per-round':>10s} "
          f"{'normaliser alone ms/tile':>25s}")
    for name in norms:
        med = float(np.median(times[name]))
        paired = float(np.median([t / b for t, b in zip(times[name], times["none"])])) - 1
        ms = (1000 * float(np.median(alone[name])) * n_batches / len(tiles)) if name in alone else None
        row = {"stain": name, "tiles_per_s": len(tiles) / med, "median_s": med, "overhead": med / base - 1,
               "overhead_per_round_median": paired, "runs_s": times[name], "normaliser_ms_per_tile": ms,
               "fit_s": fit_s.get(name)}
        rows.append(row)
        print(f"{name:10s} {row['tiles_per_s']:8.2f} {med:9.2f} {row['overhead']:9.1%} {paired:10.1%} "
              f"{'' if ms is None else format(ms, '.1f'):>25s}")
    print("load average:", os.getloadavg())
    out = {"rows": rows, "n_tiles": len(tiles), "repeats": args.repeats, "batch_size": args.batch_size,
           "model": "lunit_vits16 (ViT-S/16, random weights)", "torch_threads": torch.get_num_threads(),
           "machine": platform.processor() or platform.machine(), "python": platform.python_version(),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "loadavg": os.getloadavg()}
    res = Path(__file__).resolve().parent / "results"
    res.mkdir(exist_ok=True)
    (res / "bench_stain.json").write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
