"""Peak RSS of `pk.tl.embed_tiles` per CPU engine, each in its own process (issue 27: "peak RSS not above
torch's").

    python benchmarks/bench_engine_memory.py                       # ViT-B/16, 32 CMU-1 tiles, batch 32
    python benchmarks/bench_engine_memory.py --model timm:vit_small_patch16_224 --tiles 16

For each engine (torch, openvino, onnxruntime) two fresh processes run one `embed_tiles` call on the first
`--tiles` tiles of CMU-1-Small-Region.svs (random weights, float32, `num_workers=0` so that the tile reading
is in the measured process, as it is for every engine):

- ``first``: an empty export cache, so the call exports the encoder to ONNX, compiles it and checks parity
  on the first tiles (the first session on a machine);
- ``cached``: the export and its parity record are in the cache (every later session, every Dask worker).

Figures: ``ru_maxrss`` of the process (the whole life: imports, slide, tiling, load, export, compile, run)
and the peak of each phase (VmHWM of /proc/self/status, reset before each phase through
/proc/self/clear_refs), relative to the RSS before the model is loaded. The torch encoder's parameters are
also checked to be released after the engine took over. Writes benchmarks/results/bench_engine_memory_<ts>.json.
The machine may be shared: peaks of RSS do not depend on load, times do.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))
MB = 1 << 20


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class Phases:
    """Peak RSS (MB) of each wrapped call, the peak reset before it; overall peak kept across resets."""

    def __init__(self):
        self.peaks: dict[str, float] = {}
        self.active: list[str] = []  # phases run inside others (compile and parity inside run)
        self.overall = _status("VmHWM")

    def wrap(self, owner, name: str, label: str):
        fn = getattr(owner, name)

        def wrapped(*a, **k):
            self.overall = max(self.overall, _status("VmHWM"))
            for outer in self.active:
                self.peaks[outer] = max(self.peaks.get(outer, 0.0), _status("VmHWM"))
            _reset_peak()
            self.active.append(label)
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.active.remove(label)
                peak = _status("VmHWM")
                self.overall = max(self.overall, peak)
                for lab in (label, *self.active):
                    self.peaks[lab] = max(self.peaks.get(lab, 0.0), peak)
                self.peaks[label + "_s"] = round(time.perf_counter() - t0, 2)
                _reset_peak()

        setattr(owner, name, wrapped)


def worker(cfg: dict) -> dict:
    import torch
    from bench_embed import cmu1_path

    import pathkit as pk
    from pathkit.engines import _runners, _select
    from pathkit.tl import embed as _embed

    torch.set_num_threads(int(cfg["threads"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        slide = pk.read_slide(cmu1_path())
        tiles = pk.pp.tile(slide)[: cfg["tiles"]].copy()
    ph = Phases()
    base = _status("VmRSS")
    ph.wrap(_embed, "_cached_encoder", "load")
    ph.wrap(_select, "ensure_export", "export")  # the name prepare_encoder calls
    for cls in _runners.RUNNERS.values():
        ph.wrap(cls, "__init__", "compile")
    ph.wrap(_select.EngineEncoder, "_check", "parity")
    ph.wrap(_embed, "_run_encoder", "run")  # the whole embedding loop (parity and lazy compile included)
    encoders = []
    orig_prepare = _select.prepare_encoder

    def spy(encoder, *a, **k):
        encoders.append(encoder)
        return orig_prepare(encoder, *a, **k)

    import pathkit.engines as engines_pkg

    engines_pkg.prepare_encoder = spy
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.tl.embed_tiles(tiles, slide, cfg["model"], device="cpu", dtype="float32", batch_size=cfg["batch_size"],
                          num_workers=0, progress=False, weights="random", engine=cfg["engine"],
                          num_threads=cfg["threads"], key_added="X_m")
    seconds = time.perf_counter() - t0
    ph.overall = max(ph.overall, _status("VmHWM"))
    info = dict(tiles.uns["models"]["X_m"])
    enc = encoders[0] if encoders else None
    released = None if enc is None else all(p.is_meta for p in enc.parameters())
    return {"engine": cfg["engine"], "mode": cfg["mode"], "ran_on": info.get("engine"),
            "base_rss_mb": round(base, 1), "peak_rss_mb": round(max(ph.overall, resource.getrusage(
                resource.RUSAGE_SELF).ru_maxrss / 1024), 1),
            "phases_mb": {k: (round(v - base, 1) if not k.endswith("_s") else v) for k, v in ph.peaks.items()},
            "rss_after_mb": round(_status("VmRSS"), 1), "torch_params_released": released,
            "seconds": round(seconds, 2), "export_seconds": info.get("export_seconds"),
            "parity_max_abs_err": info.get("parity_max_abs_err")}


def _run(cfg: dict, cache: Path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATHKIT_CACHE": str(cache)}
    r = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)], capture_output=True, text=True,
                       check=False, env=env)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"engine": cfg["engine"], "mode": cfg["mode"], "error": r.stderr.strip()[-1500:]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--model", default="timm:vit_base_patch16_224")
    ap.add_argument("--engines", default="torch,openvino,onnxruntime")
    ap.add_argument("--tiles", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--modes", default="first,cached")
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    import torch

    import pathkit as pk
    from pathkit.engines import engine_version

    tmp = Path(tempfile.mkdtemp(prefix="bench_engine_memory_"))
    meta = {"date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model": args.model, "tiles": args.tiles,
            "batch_size": args.batch_size, "threads": args.threads, "torch": torch.__version__,
            "pathkit": pk.__version__, "engines": {e: engine_version(e) for e in ("openvino", "onnxruntime")},
            "loadavg_start": os.getloadavg()}
    rows = []
    try:
        for engine in args.engines.split(","):
            cache = tmp / f"cache-{engine}"  # each engine exports into its own empty cache
            for mode in args.modes.split(","):
                if engine == "torch" and mode == "cached":
                    continue
                cfg = {"model": args.model, "engine": engine, "mode": mode, "tiles": args.tiles,
                       "batch_size": args.batch_size, "threads": args.threads}
                row = _run(cfg, cache)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta["loadavg_end"] = os.getloadavg()
    torch_peak = next((r["peak_rss_mb"] for r in rows if r["engine"] == "torch" and "error" not in r), None)
    print(f"\npeak RSS of embed_tiles, {args.model}, {args.tiles} tiles, batch {args.batch_size}, float32 "
          f"(loadavg {meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f})")
    print("{:<12}{:<8}{:>10}{:>8}{:>10}{:>10}{:>10}{:>10}  {}".format(
        "engine", "mode", "peak MB", "vs torch", "load +MB", "export +", "compile +", "run +", "released"))
    for r in rows:
        if "error" in r:
            print(f"{r['engine']:<12}{r['mode']:<8} error: {r['error'][-200:]}")
            continue
        p = r["phases_mb"]
        ratio = f"{r['peak_rss_mb'] / torch_peak:.2f}" if torch_peak else "-"
        print(f"{r['engine']:<12}{r['mode']:<8}{r['peak_rss_mb']:>10.0f}{ratio:>8}{p.get('load', 0):>10.0f}"
              f"{p.get('export', 0):>10.0f}{p.get('compile', 0):>10.0f}{p.get('run', 0):>10.0f}  "
              f"{r['torch_params_released']}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench_engine_memory_{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
