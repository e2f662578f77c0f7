"""Peak memory of tiling and tile embedding on a generated ~100k-tile slide, against a naive baseline.

    python benchmarks/bench_memory.py                      # defaults below
    python benchmarks/bench_memory.py --ns 2000 5000 --naive-ns 500 1000 --workers 2

The slide: `pk.datasets.synthetic_slide`, 81,920 x 81,920 px at 0.5 mpp, JPEG tiles, a tissue rectangle
that leaves a one-tile margin -> 101,124 tiles of 256 px at 0.5 mpp (generated once into
benchmarks/results/cache/, ~3.3 GB, under a minute).

Each measurement runs in a fresh Python process. Memory is the PSS (proportional set size) summed over the
process and its DataLoader worker processes, sampled every 20 ms with psutil: PSS counts pages shared
between the parent and its forked workers once, so the sum is the machine's real memory use (the RSS sum is
recorded too; it counts torch's shared libraries once per worker). The figure reported is
peak - baseline, where the baseline is taken after the slide is open, the tile table made and the model
loaded: the memory the embedding itself needs, beyond the model.

Rows:
- tiling: `pp.tile` (tissue mask + grid + occupancy) of the whole slide; baseline after `read_slide`.
- pathkit N: `pk.tl.embed_tiles` on the first N tiles of the table (vit_tiny_test, float32, CPU). On this
  CPU all 100k tiles would take long, so memory is shown to be flat in N instead (default N = 2k and 8k;
  --ns 5000 20000 on a quieter machine).
- naive N: what a notebook loop often does: read every tile into one uint8 array, preprocess the whole
  array into one float tensor, then run the model batch by batch. Grows ~0.8 MB per tile.

Writes benchmarks/results/bench_memory.json.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

from _slide100k import BLOBS, CACHE, RESULTS, ROOT, SIDE, SLIDE  # noqa: F401  (shared slide)
MODEL = "vit_tiny_test"
MB = 1 << 20


# ---------------------------------------------------------------------------------------------- sampling
class Sampler:
    """Samples PSS and RSS of this process plus its descendants in a thread; keeps the peaks."""

    def __init__(self, interval: float = 0.02):
        import psutil

        self.me = psutil.Process()
        self.interval = interval
        self.peak_pss = self.peak_rss = 0
        self.max_children = 0
        self.t0 = time.perf_counter()
        self.at_peak = {}  # where the PSS peak was: main / workers share and seconds from the start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def measure(self) -> tuple[int, int]:
        import psutil

        procs = [self.me]
        try:
            procs += self.me.children(recursive=True)
        except psutil.Error:
            pass
        pss = rss = main = 0
        n = 0
        for p in procs:
            try:
                m = p.memory_full_info()
            except psutil.Error:  # a worker that just exited
                continue
            pss += m.pss
            rss += m.rss
            if p.pid == self.me.pid:
                main = m.pss
            n += 1
        self.max_children = max(self.max_children, n - 1)
        if pss > self.peak_pss:
            self.at_peak = {"main_pss": main, "workers_pss": pss - main, "n_workers": n - 1,
                            "seconds": round(time.perf_counter() - self.t0, 2)}
        return pss, rss

    def _run(self):
        while not self._stop.is_set():
            pss, rss = self.measure()
            self.peak_pss = max(self.peak_pss, pss)
            self.peak_rss = max(self.peak_rss, rss)
            self._stop.wait(self.interval)

    def __enter__(self):
        self.t0 = time.perf_counter()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        pss, rss = self.measure()
        self.peak_pss = max(self.peak_pss, pss)
        self.peak_rss = max(self.peak_rss, rss)


def _baseline() -> tuple[int, int]:
    gc.collect()
    time.sleep(0.2)
    return Sampler().measure()


# ---------------------------------------------------------------------------------------------- children
def _table_cache(slide) -> Path:
    return Path(str(slide.path) + ".tiles.h5ad")


def _tiles(slide, n=None):
    """The slide's tiles AnnData (the tiling child saves it next to the slide; embedding children reuse it)."""
    import anndata as ad

    import pathkit as pk

    cache = _table_cache(slide)
    tiles = ad.read_h5ad(cache) if n is not None and cache.is_file() else None
    if tiles is None or tiles.uns["slide"]["sha256"] != slide.sha256():
        tiles = pk.pp.tile(slide)
        tiles.write_h5ad(cache)
    return tiles if n is None else tiles[:n].copy()


def child_tiling(args) -> dict:
    import pathkit as pk

    slide = pk.read_slide(args.slide)
    base_pss, base_rss = _baseline()
    t0 = time.perf_counter()
    with Sampler() as s:
        tiles = _tiles(slide)
    return {"n_tiles": len(tiles), "seconds": time.perf_counter() - t0, "base_pss": base_pss,
            "peak_pss": s.peak_pss, "base_rss": base_rss, "peak_rss": s.peak_rss, "workers": s.max_children,
            "at_peak": s.at_peak}


def _load_model():
    import warnings

    import torch

    import pathkit as pk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RANDOM weights, on purpose
        torch.manual_seed(0)
        enc, _ = pk.models.load_tile_encoder(MODEL)
    return enc.eval()


def _patch_malloc_trim(every: int = 20) -> None:
    """The proposed fix, tried from outside: return the glibc heap's free pages to the OS every `every`
    batches (the main process otherwise keeps the per-batch resize / normalise buffers' pages)."""
    import ctypes

    from pathkit.tl import embed as E

    libc = ctypes.CDLL("libc.so.6")
    orig, count = E.TilePreprocess.forward, [0]

    def forward(self, *a, **k):
        count[0] += 1
        if count[0] % every == 0:
            libc.malloc_trim(0)
        return orig(self, *a, **k)

    E.TilePreprocess.forward = forward


def child_pathkit(args) -> dict:
    import warnings

    import torch

    import pathkit as pk

    if args.malloc_trim:
        _patch_malloc_trim()
    torch.set_num_threads(args.threads)
    slide = pk.read_slide(args.slide)
    tiles = _tiles(slide, args.n)
    enc = _load_model()  # the model once loaded (timm imported, weights in memory): part of the baseline
    base_pss, base_rss = _baseline()
    t0 = time.perf_counter()
    with Sampler() as s, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.tl.embed_tiles(tiles, slide, MODEL, dtype="float32", num_workers=args.workers,
                          batch_size=args.batch_size, progress=False)
    del enc
    X = tiles.obsm[f"X_{MODEL}"]
    return {"n_tiles": int(tiles.n_obs), "dim": int(X.shape[1]), "seconds": time.perf_counter() - t0,
            "base_pss": base_pss, "peak_pss": s.peak_pss, "base_rss": base_rss, "peak_rss": s.peak_rss,
            "workers": s.max_children, "output_bytes": int(X.nbytes), "at_peak": s.at_peak}


def child_naive(args) -> dict:
    import numpy as np
    import torch

    import pathkit as pk
    from pathkit.tl._preprocess import TilePreprocess

    torch.set_num_threads(args.threads)
    slide = pk.read_slide(args.slide)
    tiles = _tiles(slide, args.n)
    enc = _load_model()
    pre = TilePreprocess(enc.spec)
    base_pss, base_rss = _baseline()
    t0 = time.perf_counter()
    with Sampler() as s, torch.inference_mode():
        pixels = np.stack([slide.read_tile(int(x), int(y), tile_px=256, mpp=0.5)
                           for x, y in zip(tiles.obs["x"], tiles.obs["y"])])          # N x 256 x 256 x 3 uint8
        x = pre(torch.from_numpy(pixels), channels_last_input=True)          # N x 3 x 224 x 224 float32
        feats = torch.cat([enc(x[i:i + args.batch_size]) for i in range(0, len(x), args.batch_size)]).numpy()
    return {"n_tiles": len(feats), "dim": int(feats.shape[1]), "seconds": time.perf_counter() - t0,
            "base_pss": base_pss, "peak_pss": s.peak_pss, "base_rss": base_rss, "peak_rss": s.peak_rss,
            "workers": s.max_children, "pixels_bytes": int(pixels.nbytes), "tensor_bytes": int(x.nbytes),
            "at_peak": s.at_peak}


CHILDREN = {"tiling": child_tiling, "pathkit": child_pathkit, "naive": child_naive}


# ---------------------------------------------------------------------------------------------- driver
def ensure_slide(path: Path) -> float | None:
    if path.is_file() and path.with_name(path.name + ".json").is_file():
        return None
    import pathkit as pk

    print(f"generating {path} ({SIDE} x {SIDE} px, ~3.3 GB) ...", flush=True)
    t0 = time.perf_counter()
    pk.datasets.synthetic_slide(path, width=SIDE, height=SIDE, mpp=0.5, blobs=BLOBS, seed=2, progress=True)
    return time.perf_counter() - t0


def run_child(kind: str, args, n=None) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--slide", str(args.slide), "--workers", str(args.workers),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    if n is not None:
        cmd += ["--n", str(n)]
    if args.malloc_trim:
        cmd += ["--malloc-trim"]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} n={n} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res.update(kind=kind, n=n, delta_pss_mb=(res["peak_pss"] - res["base_pss"]) / MB,
               delta_rss_mb=(res["peak_rss"] - res["base_rss"]) / MB, base_pss_mb=res["base_pss"] / MB)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slide", type=Path, default=SLIDE)
    ap.add_argument("--ns", type=int, nargs="+", default=[2000, 8000], help="tiles embedded by pathkit")
    ap.add_argument("--naive-ns", type=int, nargs="+", default=[500, 1000], help="tiles of the naive run")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--malloc-trim", action="store_true",
                    help="pathkit rows: call glibc malloc_trim(0) every 20 batches (the proposed fix)")
    ap.add_argument("--child", choices=sorted(CHILDREN))
    ap.add_argument("--n", type=int)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0

    import psutil
    import torch

    import pathkit as pk

    gen_s = ensure_slide(args.slide)
    rows = [run_child("tiling", args)]
    print(f"tiling: {rows[0]['n_tiles']} tiles in {rows[0]['seconds']:.1f} s, "
          f"+{rows[0]['delta_pss_mb']:.0f} MB", flush=True)
    for n in args.ns:
        rows.append(run_child("pathkit", args, n))
        print(f"pathkit {n}: +{rows[-1]['delta_pss_mb']:.0f} MB in {rows[-1]['seconds']:.0f} s", flush=True)
    for n in args.naive_ns:
        rows.append(run_child("naive", args, n))
        print(f"naive {n}: +{rows[-1]['delta_pss_mb']:.0f} MB in {rows[-1]['seconds']:.0f} s", flush=True)

    naive = [r for r in rows if r["kind"] == "naive"]
    pkr = [r for r in rows if r["kind"] == "pathkit"]
    # the naive run grows linearly: its per-tile cost from the two sizes, extrapolated to the whole slide
    per_tile = None
    if len(naive) >= 2:
        a, b = naive[0], naive[-1]
        per_tile = (b["delta_pss_mb"] - a["delta_pss_mb"]) / (b["n"] - a["n"])
    n_all = rows[0]["n_tiles"]
    print()
    print(f"{'run':<22}{'tiles':>9}{'seconds':>9}{'tiles/s':>9}{'+PSS MB':>10}{'+RSS MB':>10}{'workers':>9}")
    for r in rows:
        name = r["kind"] if r["kind"] == "tiling" else f"{r['kind']} (first N)"
        rate = r["n_tiles"] / r["seconds"] if r["kind"] != "tiling" else float("nan")
        print(f"{name:<22}{r['n_tiles']:>9}{r['seconds']:>9.1f}{rate:>9.0f}{r['delta_pss_mb']:>10.0f}"
              f"{r['delta_rss_mb']:>10.0f}{r['workers']:>9}")
    summary = {}
    if pkr:
        summary["pathkit_max_delta_mb"] = max(r["delta_pss_mb"] for r in pkr)
        summary["pathkit_growth_mb_per_1k_tiles"] = (
            (pkr[-1]["delta_pss_mb"] - pkr[0]["delta_pss_mb"]) / (pkr[-1]["n"] - pkr[0]["n"]) * 1000
            if len(pkr) >= 2 and pkr[-1]["n"] != pkr[0]["n"] else None)
    if per_tile is not None:
        summary["naive_mb_per_tile"] = per_tile
        summary["naive_extrapolated_all_tiles_gb"] = per_tile * n_all / 1024
    if pkr and naive:
        same = [(p, q) for p in pkr for q in naive if p["n"] == q["n"]]
        ref = naive[-1]
        summary["ratio_naive_over_pathkit_at_naive_n"] = ref["delta_pss_mb"] / max(1.0, pkr[0]["delta_pss_mb"])
        if same:
            summary["ratio_same_n"] = same[0][1]["delta_pss_mb"] / max(1.0, same[0][0]["delta_pss_mb"])
    print()
    for k, v in summary.items():
        print(f"{k}: {v:.3f}" if isinstance(v, float) else f"{k}: {v}")

    RESULTS.mkdir(parents=True, exist_ok=True)
    out = {"date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.platform(),
           "cpu_count": os.cpu_count(), "memory_gb": psutil.virtual_memory().total / 1024 ** 3,
           "python": platform.python_version(), "torch": torch.__version__, "pathkit": pk.__version__,
           "slide": str(args.slide), "slide_bytes": args.slide.stat().st_size, "generation_seconds": gen_s,
           "model": MODEL, "malloc_trim": args.malloc_trim, "workers": args.workers, "batch_size": args.batch_size, "threads": args.threads,
           "rows": rows, "summary": summary}
    tmp = RESULTS / f".bench_memory.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(out, indent=1))
    os.replace(tmp, RESULTS / "bench_memory.json")
    print(f"\nwrote {RESULTS / 'bench_memory.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
