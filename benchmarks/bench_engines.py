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
ENGINES = ("torch", "openvino", "onnxruntime")


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


def _run(cfg: dict) -> dict:
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
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "pathkit": pk.__version__, "loadavg_start": os.getloadavg(),
            "engines": {e: engine_version(e) for e in engines if e != "torch"},
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
                ref = tmp / f"{model}_torch_{which}.npy"
                mine = tmp / f"{model}_{engine}_{which}.npy"
                if ref.is_file() and mine.is_file():
                    row[f"{which}_max_abs_err"] = float(np.abs(np.load(ref) - np.load(mine)).max())
            row["peak_rss_mb"] = float(np.median([r["peak_rss_mb"] for r in runs]))
            row["first_call_s"] = max(r["first_call_s"] for r in runs)  # the round that exported
            row["export_s"] = runs[0]["info"].get("export_seconds")
            row["ran_on"] = runs[0]["info"].get("engine")
            table.append(row)
    return table


def _print(table, threads, meta):
    print(f"\nCPU engines vs torch eager, float32, batch {meta['batch_size']} (median over rounds; "
          f"loadavg {meta['loadavg_start']} -> {meta['loadavg_end']}: shared machine)")
    head = ("model", "engine", "CMU-1 t/s", "ratio", "synth t/s", "ratio", "max abs err", "RSS MB", "export s")
    print("{:<14}{:<13}{:>10}{:>7}{:>10}{:>7}{:>12}{:>8}{:>9}".format(*head))
    for r in table:
        if "error" in r:
            print(f"{r['model']:<14}{r['engine']:<13} error: {r['error'][-120:]}")
            continue
        err = max(r.get("cmu1_max_abs_err", 0), r.get("synthetic_max_abs_err", 0))
        print(f"{r['model']:<14}{r['engine']:<13}{r['cmu1_tiles_per_s']:>10.2f}{r.get('cmu1_ratio', 0):>7.2f}"
              f"{r['synthetic_tiles_per_s']:>10.2f}{r.get('synthetic_ratio', 0):>7.2f}{err:>12.1e}"
              f"{r['peak_rss_mb']:>8.0f}{(r['export_s'] or 0):>9.1f}")
    if threads:
        print("threads (openvino, synthetic tiles):", json.dumps(threads))


if __name__ == "__main__":
    sys.exit(main())
