"""CPU inference engines vs torch eager for tile encoders, end to end, side by side in one run (issue 27).

    python benchmarks/bench_engines.py                      # ViT-S/16, ViT-B/16, ViT-L/16, ViT-g recipe
    python benchmarks/bench_engines.py --models vit_s,vit_b --rounds 3 --synth-tiles 64

What is timed: ``pk.tl.embed_tiles(tiles, slide, model, engine=E, dtype="float32")`` from the slide file to the
feature matrix (read + decode + resize + normalise + forward), on CMU-1-Small-Region.svs (all 49 tissue
tiles) and `--synth-tiles` tiles from the middle of the generated 40,000-tile slide of bench_embed.py. Each
(model, engine) runs in its own process (peak RSS is per process), after an untimed first call on 2 tiles
that exports (first export into an empty cache: its time is reported), compiles and checks parity; the
processes of a round run engine after engine and rounds rotate the order; the median over rounds is
reported (the machine is shared: loadavg is recorded). Random weights (seed 0, the same in every process),
float32. The ViT-g row is the Prov-GigaPath recipe (width 1536, 24 heads, mlp 5.33, patch 16) at
`--vitg-depth` of its 40 blocks (the whole 4.5 GB network does not fit a shared 24 GB machine three times
over); every block is the same, so the ratio carries over.

LazySlide (``lazyslide`` row, when its venv exists: ``--make-lazyslide-venv`` makes it, see bench_embed.py)
runs in its own process on the same tile corners, with the same timm network and random init built once
before the timing, an untimed first call on 2 tiles, then `zs.tl.feature_extraction` per input, at its best
CPU setting: float32 here (bf16 autocast only where the CPU computes bf16 natively), DataLoader readers as
many as pathkit's default. Its features are not compared (its own resize and crop). ``vs LS`` is each row's
tiles/s over LazySlide's.

Also the thread split (2 processes x 1 thread, each on half the tiles, vs 1 process x 2 threads) for
`--threads-model` on OpenVINO. Writes benchmarks/results/bench_engines_<timestamp>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))

MODELS = {  # name -> (registry entry or timm:, kwargs replaced for the benchmark)
    "vit_s": ("timm:vit_small_patch16_224", None),
    "vit_b": ("timm:vit_base_patch16_224", None),
    "vit_l": ("timm:vit_large_patch16_224", None),
    "vit_g_recipe": ("gigapath_tile", "depth"),
}
ENGINES = ("torch", "openvino", "onnxruntime", "lazyslide")

# LazySlide 0.13 on the same tiles, in its own venv (bench_embed.lazyslide_python): the same timm network and
# random init built once outside the timed part, its own reader and transform, float32 on this CPU or bf16
# autocast where the CPU computes bf16 natively (its best CPU setting), its default torch threads.
LAZY_ENGINE_SCRIPT = """
import json, resource, sys, time, warnings
import numpy as np
warnings.simplefilter("ignore")
import torch
import lazyslide as zs
from lazyslide_models import TimmModel
from wsidata import TileSpec
from wsidata.io import add_tiles

cfg = json.loads(sys.argv[1])
if cfg.get("threads"):
    torch.set_num_threads(int(cfg["threads"]))
torch.manual_seed(0)
model = TimmModel(cfg["arch"], pretrained=False, **cfg["kwargs"])
kw = dict(device="cpu", batch_size=cfg["batch_size"], num_workers=cfg["num_workers"], pbar=False,
          return_features=True)
if cfg["bf16"]:
    kw.update(amp=True, autocast_dtype=torch.bfloat16)

def run(slide, xy):
    wsi = zs.open_wsi(slide)
    spec = TileSpec.from_wsidata(wsi, tile_px=256, mpp=0.5)
    add_tiles(wsi, "tiles", xy, spec, tissue_ids=np.zeros(len(xy), dtype=int))
    t0 = time.perf_counter()
    feats = zs.tl.feature_extraction(wsi, model, **kw)
    return time.perf_counter() - t0, np.asarray(feats)

out = {"model": cfg["model"], "engine": "lazyslide"}
first = cfg["inputs"][0]
t0 = time.perf_counter()
run(cfg["slides"][first], np.load(cfg["coords"][first])[:2])
out["first_call_s"] = time.perf_counter() - t0
for which in cfg["inputs"]:
    xy = np.load(cfg["coords"][which])
    dt, feats = run(cfg["slides"][which], xy)
    out[which] = {"seconds": dt, "tiles": len(xy), "tiles_per_s": len(xy) / dt, "dim": int(feats.shape[1])}
import lazyslide
out["info"] = {"engine": "lazyslide", "engine_version": lazyslide.__version__,
               "dtype": "bfloat16" if cfg["bf16"] else "float32", "num_workers": cfg["num_workers"],
               "threads": torch.get_num_threads()}
out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print("RESULT " + json.dumps(out), flush=True)
"""


def _spec(model: str, vitg_depth: int):
    import dataclasses

    from pathkit.models import get_spec

    entry, change = MODELS[model]
    spec = get_spec(entry)
    if change == "depth":
        spec = dataclasses.replace(spec, name=f"gigapath_tile_depth{vitg_depth}", weights=(), n_params=None,
                                   kwargs={**spec.kwargs, "depth": int(vitg_depth)})
    return spec


def _tiles(which: str, n: int | None):
    import pathkit as pk

    if which == "cmu1":
        from bench_embed import cmu1_path

        slide = pk.read_slide(cmu1_path())
        tiles = pk.pp.tile(slide)
        return slide, (tiles if not n else tiles[:n].copy())
    from bench_embed import synthetic_path

    slide = pk.read_slide(synthetic_path())
    tiles = pk.pp.tile(slide)
    mid = tiles.n_obs // 2
    return slide, tiles[mid:mid + n].copy()


def worker(cfg: dict) -> dict:
    """One (model, engine) in this process: first call (export/compile/parity), then the timed runs."""
    import torch

    import pathkit as pk

    if cfg.get("threads"):
        torch.set_num_threads(int(cfg["threads"]))
    spec = _spec(cfg["model"], cfg["vitg_depth"])
    kw = {"device": "cpu", "dtype": "float32", "batch_size": cfg["batch_size"], "progress": False,
          "key_added": "X_b", "weights": "random", "engine": cfg["engine"], "num_threads": cfg.get("threads")}
    out = {"model": cfg["model"], "engine": cfg["engine"]}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slide, tiles = _tiles("cmu1", 0)
        t0 = time.perf_counter()
        pk.tl.embed_tiles(tiles[:2].copy(), slide, spec, num_workers=0, **kw)
        out["first_call_s"] = time.perf_counter() - t0
        for which in cfg["inputs"]:
            slide, tiles = _tiles(which, cfg["synth_tiles"] if which == "synthetic" else cfg.get("cmu1_tiles"))
            if cfg.get("part") is not None:
                k, n = cfg["part"]
                tiles = tiles[k::n].copy()
            t0 = time.perf_counter()
            pk.tl.embed_tiles(tiles, slide, spec, **kw)
            dt = time.perf_counter() - t0
            out[which] = {"seconds": dt, "tiles": tiles.n_obs, "tiles_per_s": tiles.n_obs / dt}
            np.save(Path(cfg["out"]) / f"{cfg['model']}_{cfg['engine']}_{which}.npy", tiles.obsm["X_b"])
        info = dict(tiles.uns["models"]["X_b"])
    out["info"] = {k: info.get(k) for k in ("engine", "engine_version", "engine_reason", "export_seconds",
                                            "parity_max_abs_err", "num_threads", "dtype")}
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _lazy_inputs(cfg: dict) -> dict:
    """The slide paths and the tile corners (level 0) that pathkit embeds, for LazySlide (made once per
    input and tile count)."""
    slides, coords = {}, {}
    for which in cfg["inputs"]:
        n = cfg["synth_tiles"] if which == "synthetic" else cfg.get("cmu1_tiles")
        f = Path(cfg["out"]) / f"xy_{which}_{n}.npy"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            slide, tiles = _tiles(which, n)
        if not f.is_file():
            np.save(f, tiles.obs[["x", "y"]].to_numpy(dtype=np.int64))
        slides[which], coords[which] = str(Path(slide.path)), str(f)
    return {"slides": slides, "coords": coords}


def _run_lazyslide(cfg: dict) -> dict:
    from bench_embed import lazyslide_python

    from pathkit._device import cpu_has_native_bf16
    from pathkit.tl._tile_loader import default_num_workers

    py, why = lazyslide_python()
    if py is None:
        return {"model": cfg["model"], "engine": "lazyslide", "error": why}
    spec = _spec(cfg["model"], cfg["vitg_depth"])
    arch = spec.arch.removeprefix("timm:")
    kwargs = {k: v for k, v in spec.kwargs.items() if k not in ("num_classes", "pretrained")}
    lcfg = {**cfg, **_lazy_inputs(cfg), "arch": arch, "kwargs": kwargs, "bf16": cpu_has_native_bf16(),
            "num_workers": default_num_workers()}
    r = subprocess.run([str(py), "-c", LAZY_ENGINE_SCRIPT, json.dumps(lcfg)], capture_output=True, text=True,
                       check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"}, cwd=cfg["out"])
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"model": cfg["model"], "engine": "lazyslide", "error": r.stderr.strip()[-1500:]}


def _run(cfg: dict) -> dict:
    if cfg["engine"] == "lazyslide":
        return _run_lazyslide(cfg)
    r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                       check=False, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"model": cfg["model"], "engine": cfg["engine"], "error": r.stderr.strip()[-1500:]}


def _threads_split(base: dict, engine: str) -> dict:
    """2 processes x 1 thread (half the tiles each, at the same time) vs 1 process x 2 threads."""
    res = {}
    cfg = {**base, "engine": engine, "inputs": ["synthetic"]}
    t0 = time.perf_counter()
    one = _run({**cfg, "threads": 2})
    res["1x2_wall_s"] = time.perf_counter() - t0
    res["1x2_timed_s"] = one.get("synthetic", {}).get("seconds")
    procs, t0 = [], time.perf_counter()
    for k in range(2):
        c = {**cfg, "threads": 1, "part": [k, 2]}
        procs.append(subprocess.Popen([sys.executable, __file__, "--worker", json.dumps(c)], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate()[0] for p in procs]
    res["2x1_wall_s"] = time.perf_counter() - t0
    timed = [json.loads(ln[7:]) for o in outs for ln in o.splitlines() if ln.startswith("RESULT ")]
    res["2x1_timed_s"] = max(t["synthetic"]["seconds"] for t in timed) if len(timed) == 2 else None
    if res["1x2_timed_s"] and res["2x1_timed_s"]:
        res["speedup_2x1_over_1x2"] = res["1x2_timed_s"] / res["2x1_timed_s"]
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="vit_s,vit_b,vit_l,vit_g_recipe")
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--rounds", type=int, default=3, help="rounds for ViT-S/B (ViT-L and ViT-g: --big-rounds)")
    ap.add_argument("--big-rounds", type=int, default=1)
    ap.add_argument("--synth-tiles", type=int, default=64)
    ap.add_argument("--cmu1-tiles", type=int, default=0, help="first N tiles of CMU-1 (0: all 49-50)")
    ap.add_argument("--big-tiles", default="16,8", help="CMU-1,synthetic tiles for ViT-L and ViT-g")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--vitg-depth", type=int, default=6)
    ap.add_argument("--no-threads", action="store_true", help="skip the 2x1 vs 1x2 thread split")
    ap.add_argument("--threads-model", default="vit_b", help="model of the thread split")
    ap.add_argument("--make-lazyslide-venv", action="store_true",
                    help="create benchmarks/.venv-lazyslide first (pip install lazyslide==0.13.0)")
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    import torch

    import pathkit as pk
    from pathkit.engines import engine_version

    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tmp = Path(tempfile.mkdtemp(prefix="bench_engines_"))
    os.environ["PATHKIT_CACHE"] = str(tmp / "cache")  # an empty cache: first exports are timed
    from bench_embed import synthetic_path

    synthetic_path()  # made once, outside the timing
    engines = args.engines.split(",")
    lazy_note = "not asked for"
    if "lazyslide" in engines:
        from bench_embed import lazyslide_python

        py, why = lazyslide_python(make=args.make_lazyslide_venv)
        lazy_note = str(py) if py is not None else why
        if py is None:
            print("LazySlide row skipped:", why, flush=True)
            engines.remove("lazyslide")
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "pathkit": pk.__version__, "loadavg_start": os.getloadavg(),
            "engines": {e: engine_version(e) for e in engines if e in ("openvino", "onnxruntime")},
            "lazyslide": lazy_note,
            "batch_size": args.batch_size, "synth_tiles": args.synth_tiles, "vitg_depth": args.vitg_depth}
    rows = []
    for model in args.models.split(","):
        small = model in ("vit_s", "vit_b")
        rounds = args.rounds if small else args.big_rounds
        n_cmu1, n_synth = (args.cmu1_tiles, args.synth_tiles) if small else map(int, args.big_tiles.split(","))
        for r in range(rounds):
            order = engines[r % len(engines):] + engines[:r % len(engines)]
            for engine in order:
                cfg = {"model": model, "engine": engine, "batch_size": args.batch_size, "out": str(tmp),
                       "synth_tiles": n_synth, "cmu1_tiles": n_cmu1, "vitg_depth": args.vitg_depth,
                       "inputs": ["cmu1", "synthetic"]}
                res = _run(cfg)
                res["round"] = r
                rows.append(res)
                print(json.dumps({k: v for k, v in res.items() if k != "info"}), flush=True)
    table = _summarise(rows, engines, tmp)
    threads = None if args.no_threads else _threads_split(
        {"model": args.threads_model, "batch_size": args.batch_size, "out": str(tmp), "synth_tiles": args.synth_tiles,
         "vitg_depth": args.vitg_depth}, "openvino")
    meta["loadavg_end"] = os.getloadavg()
    _print(table, threads, meta)
    out = RESULTS / f"bench_engines_{stamp}.json"
    out.write_text(json.dumps({"meta": meta, "table": table, "threads": threads, "runs": rows}, indent=1,
                              default=str))
    print(f"wrote {out}")
    return 0


def _summarise(rows, engines, tmp) -> list[dict]:
    table = []
    for model in dict.fromkeys(r["model"] for r in rows):
        base = {}
        for engine in engines:
            runs = [r for r in rows if r["model"] == model and r["engine"] == engine and "error" not in r]
            errs = [r["error"] for r in rows if r["model"] == model and r["engine"] == engine and "error" in r]
            row = {"model": model, "engine": engine, "rounds": len(runs)}
            if not runs:
                row["error"] = errs[0][-300:] if errs else "not run"
                table.append(row)
                continue
            for which in ("cmu1", "synthetic"):
                row[f"{which}_tiles_per_s"] = float(np.median([r[which]["tiles_per_s"] for r in runs]))
                if engine == "torch":
                    base[which] = row[f"{which}_tiles_per_s"]
                if base.get(which):
                    row[f"{which}_ratio"] = row[f"{which}_tiles_per_s"] / base[which]
                if engine == "torch":
                    continue  # the reference itself
                ref = tmp / f"{model}_torch_{which}.npy"
                mine = tmp / f"{model}_{engine}_{which}.npy"
                if ref.is_file() and mine.is_file():
                    row[f"{which}_max_abs_err"] = float(np.abs(np.load(ref) - np.load(mine)).max())
            row["peak_rss_mb"] = float(np.median([r["peak_rss_mb"] for r in runs]))
            row["first_call_s"] = max(r["first_call_s"] for r in runs)  # the round that exported
            row["export_s"] = runs[0]["info"].get("export_seconds")
            row["ran_on"] = runs[0]["info"].get("engine")
            row["dtype"] = runs[0]["info"].get("dtype")
            table.append(row)
    for row in table:  # every row against LazySlide's best CPU setting, measured in the same run
        lazy = next((r for r in table if r["model"] == row["model"] and r["engine"] == "lazyslide"
                     and "error" not in r), None)
        for which in ("cmu1", "synthetic"):
            if lazy is not None and "error" not in row:
                row[f"{which}_vs_lazyslide"] = row[f"{which}_tiles_per_s"] / lazy[f"{which}_tiles_per_s"]
    return table


def _print(table, threads, meta):
    print(f"\nCPU engines vs torch eager, float32, batch {meta['batch_size']} (median over rounds; "
          f"loadavg {meta['loadavg_start']} -> {meta['loadavg_end']}: shared machine)")
    head = ("model", "engine", "CMU-1 t/s", "ratio", "vs LS", "synth t/s", "ratio", "vs LS", "max abs err",
            "RSS MB", "export s")
    print("{:<14}{:<13}{:>10}{:>7}{:>7}{:>10}{:>7}{:>7}{:>12}{:>8}{:>9}".format(*head))
    for r in table:
        if "error" in r:
            print(f"{r['model']:<14}{r['engine']:<13} error: {r['error'][-120:]}")
            continue
        errs = [r[k] for k in ("cmu1_max_abs_err", "synthetic_max_abs_err") if k in r]
        err = f"{max(errs):.1e}" if errs else "-"  # LazySlide: its own resize and crop, not comparable
        cells = []
        for which in ("cmu1", "synthetic"):
            ls = r.get(f"{which}_vs_lazyslide")
            cells.append(f"{r[f'{which}_tiles_per_s']:>10.2f}{r.get(f'{which}_ratio', 0):>7.2f}"
                         + (f"{ls:>7.2f}" if ls is not None else f"{'-':>7}"))
        export = f"{r['export_s']:.1f}" if r.get("export_s") else "-"
        print(f"{r['model']:<14}{r['engine']:<13}{cells[0]}{cells[1]}{err:>12}{r['peak_rss_mb']:>8.0f}{export:>9}")
    if threads:
        print("threads (openvino, synthetic tiles):", json.dumps(threads))


if __name__ == "__main__":
    sys.exit(main())
