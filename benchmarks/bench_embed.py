"""CPU tile-embedding throughput, side by side in one run (issue 17): pathkit's default (dtype="auto": bf16 on
CPUs with native bf16; raw-tile JPEG path) vs pathkit in float32 vs the previous pathkit path (float32,
`Slide.read_tile`), plus the naive per-tile loop and, when its venv is there, LazySlide 0.13.

    python benchmarks/bench_embed.py                          # ViT-B/16 on CMU-1 + 192 tiles of the 40k slide
    python benchmarks/bench_embed.py --tiles 64 --no-naive    # lighter
    python benchmarks/bench_embed.py --data-only              # data path alone (model = channel mean)

What is timed (tissue detection and tiling excluded, the same tile coordinates for every method):
read + decode + resize + normalise + model forward, from the slide file to a feature matrix, with
`timm:vit_base_patch16_224` (random weights) on the CPU. The model is built once per method outside the
timed part (a warm-up call on one batch), so the figures are steady-state throughput.

Methods (all in this run, interleaved per input):
- default: `pk.tl.embed_tiles(tiles, slide, model)` as a user calls it: dtype="auto", raw-tile path on.
- float32: the same with dtype="float32" (exact features).
- old: dtype="float32" and PATHKIT_RAW_TILES=0 (the path before issue 17: `Slide.read_tile` per tile).
- naive: tiffslide `read_region` per tile -> PIL -> torchvision transforms, float32, no workers (data-path
  table; end to end with --naive-e2e).
- lazyslide: LazySlide 0.13 `zs.tl.feature_extraction` with its best settings here (num_workers as pathkit,
  amp=True with autocast_dtype=bfloat16; float32 too with --lazyslide-float32), in its own venv ($PATHKIT_LAZYSLIDE_VENV, default
  benchmarks/.venv-lazyslide; created with --make-lazyslide-venv; it reuses this venv's torch via a .pth).
- forward: the bare model on random tensors, float32 and auto dtype -> the model's share of the wall time.

Inputs: CMU-1-Small-Region.svs (whole slide, 49 tiles) and a generated 52,224 x 52,224 px JPEG slide at
0.5 mpp with 40,000 tissue tiles (benchmarks/results/cache/, made once, a few minutes); --tiles tiles from the
middle of its tile table are timed. Writes benchmarks/results/bench_embed_<timestamp>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = RESULTS / "cache"
LAZY_VENV = Path(os.environ.get("PATHKIT_LAZYSLIDE_VENV", ROOT / "benchmarks" / ".venv-lazyslide"))
ARCH = "vit_base_patch16_224"
MODEL = f"timm:{ARCH}"
SYNTH_SIDE = 52224  # 204 tiles of 256 px; tissue rectangle of 200 x 200 tiles = 40,000 tiles
SYNTH_BLOBS = [{"kind": "rect", "x0": 512, "y0": 512, "x1": 51712, "y1": 51712}]


# ----------------------------------------------------------------------------------------------- inputs
def cmu1_path() -> Path | None:
    env = os.environ.get("PATHKIT_TEST_DATA")
    root = Path(env) if env else ROOT.parent / "shared" / "data"
    p = root / "slides" / "CMU-1-Small-Region.svs"
    return p if p.is_file() else None


def synthetic_path() -> Path:
    import pathkit as pk

    p = CACHE / "synthetic_40k.svs"
    if not p.is_file():
        print(f"generating the ~40k-tile synthetic slide at {p} (once; a few minutes) ...", flush=True)
        pk.datasets.synthetic_slide(p, width=SYNTH_SIDE, height=SYNTH_SIDE, mpp=0.5, blobs=SYNTH_BLOBS,
                                    seed=1, progress=True)
    return p


# ---------------------------------------------------------------------------------------------- methods
def build_model():
    import timm

    return timm.create_model(ARCH, pretrained=False, num_classes=0).eval()


def time_forward(batch_size: int, dtype, n_batches: int = 1) -> float:
    """Seconds per tile of the bare model forward on random input (after a 2-tile warm-up)."""
    import torch

    model = build_model()
    x = torch.randn(batch_size, 3, 224, 224)
    with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
        model(x[:2])
        t0 = time.perf_counter()
        for _ in range(n_batches):
            model(x)
    return (time.perf_counter() - t0) / (n_batches * batch_size)


class ChannelMean:
    """Stand-in 'model' for the data-path-only runs: per-image channel mean."""

    def __call__(self, x):
        return x.float().mean(dim=(2, 3))


PATHKIT_METHODS = {  # name -> (dtype, PATHKIT_RAW_TILES)
    "default": ("auto", "auto"),
    "float32": ("float32", "auto"),
    "old": ("float32", "0"),
}


def run_pathkit(path, tiles, method, batch_size, num_workers) -> tuple[float, np.ndarray, dict]:
    """(seconds, features, uns models entry) of pk.tl.embed_tiles as `method` runs it; model warm."""
    import pathkit as pk

    dtype, raw = PATHKIT_METHODS[method]
    os.environ["PATHKIT_RAW_TILES"] = raw
    try:
        slide = pk.read_slide(path)
        slide.sha256()  # provenance hash outside the timed part (cached; a real run pays it once per file)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kw = {"device": "cpu", "dtype": dtype, "batch_size": batch_size, "progress": False,
                  "key_added": "X_bench", "weights": "random"}
            pk.tl.embed_tiles(tiles[:2].copy(), slide, MODEL, num_workers=0, **kw)  # builds + caches the model
            sub = tiles.copy()
            t0 = time.perf_counter()
            pk.tl.embed_tiles(sub, slide, MODEL, num_workers=num_workers, **kw)
            dt = time.perf_counter() - t0
        return dt, sub.obsm["X_bench"], dict(sub.uns["models"]["X_bench"])
    finally:
        os.environ.pop("PATHKIT_RAW_TILES", None)


def run_pathkit_data_only(path, tiles, raw, batch_size, num_workers) -> float:
    import torch

    import pathkit as pk
    from pathkit.models import get_spec
    from pathkit.tl._preprocess import TilePreprocess
    from pathkit.tl._tile_loader import tile_loader

    slide = pk.read_slide(path)
    spec = get_spec(MODEL)
    ts = tiles.uns["tile_spec"]
    t0 = time.perf_counter()
    pre = TilePreprocess(spec)
    out = []
    with torch.inference_mode():
        loader = tile_loader(slide, tiles.obs["x"], tiles.obs["y"], ts["tile_px"], ts["mpp"], batch_size,
                             num_workers, raw_tiles=raw)
        for b in loader:
            out.append(ChannelMean()(pre(b, channels_last_input=True)))
    return time.perf_counter() - t0


def run_naive(path, tiles, batch_size, data_only=False) -> float:
    import tiffslide
    import torch
    from torchvision import transforms as T

    from pathkit.models import get_spec

    spec = get_spec(MODEL)
    ts = tiles.uns["tile_spec"]
    side = round(ts["size_level0"])
    model = ChannelMean() if data_only else build_model()
    t0 = time.perf_counter()
    tf = T.Compose([T.Resize(spec.resize or spec.input_size, interpolation=T.InterpolationMode.BICUBIC),
                    T.CenterCrop(spec.input_size), T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    wsi = tiffslide.TiffSlide(str(path))
    feats, buf = [], []
    with torch.inference_mode():
        for x, y in zip(tiles.obs["x"].to_numpy(), tiles.obs["y"].to_numpy()):
            img = wsi.read_region((int(x), int(y)), 0, (side, side)).convert("RGB")
            if side != ts["tile_px"]:
                img = img.resize((ts["tile_px"], ts["tile_px"]), resample=3)
            buf.append(tf(img))
            if len(buf) == batch_size:
                feats.append(model(torch.stack(buf)))
                buf = []
        if buf:
            feats.append(model(torch.stack(buf)))
    wsi.close()
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------- LazySlide
LAZY_SCRIPT = textwrap.dedent('''
    import json, sys, time, warnings
    import numpy as np
    warnings.simplefilter("ignore")
    import lazyslide as zs
    from wsidata import TileSpec
    from wsidata.io import add_tiles

    cfg = json.loads(sys.argv[1])
    xy = np.load(cfg["coords"])
    out = {"versions": {}}
    import lazyslide, wsidata, torch
    out["versions"] = {"lazyslide": lazyslide.__version__, "wsidata": wsidata.__version__,
                       "torch": torch.__version__}
    for run in cfg["runs"]:
        wsi = zs.open_wsi(cfg["slide"])
        spec = TileSpec.from_wsidata(wsi, tile_px=256, mpp=0.5)
        add_tiles(wsi, "tiles", xy, spec, tissue_ids=np.zeros(len(xy), dtype=int))
        kw = dict(device="cpu", batch_size=cfg["batch_size"], num_workers=run["num_workers"], pbar=False,
                  return_features=True)
        if run.get("amp"):  # its mixed precision: torch.autocast with bf16
            kw.update(amp=True, autocast_dtype=torch.bfloat16)
        if run["data_only"]:  # LazySlide's own transform for this model, built outside the timed part
            from lazyslide_models import TimmModel
            tf = TimmModel(cfg["arch"], pretrained=False).get_transform()
        t0 = time.perf_counter()
        if run["data_only"]:
            feats = zs.tl.feature_extraction(wsi, lambda x: x.float().mean(dim=(2, 3)), transform=tf,
                                             model_name="mean", **kw)
        else:
            feats = zs.tl.feature_extraction(wsi, cfg["arch"], load_kws={"pretrained": False}, **kw)
        run["seconds"] = time.perf_counter() - t0
        run["n_features"] = list(np.asarray(feats).shape)
        run["reader"] = str(getattr(wsi, "reader", ""))[:80]
    out["runs"] = cfg["runs"]
    print("RESULT " + json.dumps(out))
''')


def lazyslide_python(make: bool = False) -> tuple[Path | None, str]:
    """The LazySlide venv's python (created when `make`); (None, why) when there is none."""
    py = LAZY_VENV / "bin" / "python"
    probe = [str(py), "-c", "import lazyslide; print(lazyslide.__version__)"]
    if py.is_file():
        r = subprocess.run(probe, capture_output=True, text=True, check=False)
        if r.returncode == 0 and r.stdout.strip().startswith("0.13"):
            return py, ""
    if not make:
        return None, f"no LazySlide 0.13 venv at {LAZY_VENV} (make it with --make-lazyslide-venv)"
    try:
        import sysconfig

        if not py.is_file():
            subprocess.run([sys.executable, "-m", "venv", str(LAZY_VENV)], check=True)
        # reuse this venv's torch/timm (a multi-GB download otherwise) through a .pth path entry; pip
        # installs LazySlide's other needs into the new venv, which shadows ours where versions differ
        site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                   capture_output=True, text=True, check=True).stdout.strip())
        (site / "_pathkit_parent.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        print("installing lazyslide==0.13.0 into", LAZY_VENV, flush=True)
        r = subprocess.run([str(py), "-m", "pip", "install", "-q", "lazyslide==0.13.0"], capture_output=True,
                           text=True, check=False)
        if r.returncode != 0:
            return None, "pip install lazyslide==0.13.0 failed: " + r.stderr.strip()[-500:]
        r = subprocess.run(probe, capture_output=True, text=True, check=False)
        if r.returncode != 0:
            return None, "lazyslide does not import: " + r.stderr.strip()[-500:]
        return py, ""
    except Exception as e:  # noqa: BLE001  (record why, keep the benchmark going)
        return None, f"{type(e).__name__}: {e}"


def run_lazyslide(py, path, tiles, batch_size, runs) -> tuple[dict | None, str]:
    with tempfile.TemporaryDirectory() as d:
        coords = Path(d) / "xy.npy"
        np.save(coords, tiles.obs[["x", "y"]].to_numpy(dtype=np.int64))
        cfg = {"slide": str(path), "coords": str(coords), "batch_size": batch_size, "arch": ARCH, "runs": runs}
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        r = subprocess.run([str(py), "-c", LAZY_SCRIPT, json.dumps(cfg)], capture_output=True, text=True,
                           check=False, env=env, cwd=d)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), ""
    return None, f"LazySlide run failed (exit {r.returncode}): {r.stderr.strip()[-800:]}"


# ---------------------------------------------------------------------------------------------- main
def _meta(args, workers) -> dict:
    import tifffile
    import tiffslide
    import timm
    import torch
    import torchvision

    import pathkit as pk
    from pathkit._device import cpu_has_native_bf16, resolve_dtype

    cpu = ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cpu": cpu or platform.processor(),
        "cpu_count": os.cpu_count(), "cpu_native_bf16": cpu_has_native_bf16(), "torch_threads": torch.get_num_threads(),
        "auto_dtype": str(resolve_dtype("auto", "cpu")).replace("torch.", ""), "loadavg_start": os.getloadavg(),
        "python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
        "timm": timm.__version__, "tiffslide": tiffslide.__version__, "tifffile": tifffile.__version__,
        "pathkit": pk.__version__, "model": MODEL, "device": "cpu", "batch_size": args.batch_size,
        "pathkit_num_workers": workers,
    }


def _cos(a, b) -> float:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=192, help="tiles timed on the ~40k-tile slide (default 192)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=None, help="pathkit reader processes (default its own)")
    ap.add_argument("--methods", default="default,float32,old", help="pathkit methods, comma-separated")
    ap.add_argument("--no-naive", action="store_true", help="no naive loop at all")
    ap.add_argument("--naive-e2e", action="store_true", help="also time the naive loop end to end (slow)")
    ap.add_argument("--no-lazyslide", action="store_true")
    ap.add_argument("--lazyslide-float32", action="store_true", help="also LazySlide end to end in float32")
    ap.add_argument("--make-lazyslide-venv", action="store_true", help="pip install lazyslide==0.13.0 first")
    ap.add_argument("--no-cmu1", action="store_true")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--data-only", action="store_true", help="only the data-path table (no model)")
    ap.add_argument("--no-data-only", action="store_true", help="skip the data-path table")
    ap.add_argument("--no-forward", action="store_true", help="skip timing the bare model forward")
    args = ap.parse_args(argv)

    import torch

    import pathkit as pk
    from pathkit.tl._tile_loader import default_num_workers

    workers = default_num_workers() if args.num_workers is None else args.num_workers
    bs = args.batch_size
    methods = [m for m in args.methods.split(",") if m]
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = _meta(args, workers)
    print(json.dumps(meta), flush=True)

    inputs = []
    cmu = None if args.no_cmu1 else cmu1_path()
    if cmu is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inputs.append(("CMU-1-Small-Region (whole slide)", cmu, pk.pp.tile(pk.read_slide(cmu)), None))
    if not args.no_synthetic:
        sp = synthetic_path()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = pk.pp.tile(pk.read_slide(sp))
        mid = max(0, full.n_obs // 2 - args.tiles // 2)
        sub = full[mid:mid + args.tiles].copy()
        inputs.append((f"synthetic 40k ({full.n_obs} tiles; {sub.n_obs} timed)", sp, sub, full.n_obs))

    lazy_py, lazy_why = None, "skipped (--no-lazyslide)"
    if not args.no_lazyslide:
        lazy_py, lazy_why = lazyslide_python(make=args.make_lazyslide_venv)
        if lazy_py is None:
            print("LazySlide unavailable:", lazy_why, flush=True)
    meta["lazyslide"] = lazy_why or str(lazy_py)

    if not (args.data_only or args.no_forward):
        print("timing the bare model forward ...", flush=True)
        auto = torch.bfloat16 if meta["auto_dtype"] == "bfloat16" else torch.float32
        fb = min(bs, 16)
        meta["forward_s_per_tile"] = {"float32": time_forward(fb, torch.float32), "auto": time_forward(fb, auto),
                                      "batch": fb}
    rows = []
    for label, path, tiles, n_full in inputs:
        n = tiles.n_obs
        print(f"{label}: {n} tiles", flush=True)
        modes = ([] if args.no_data_only else ["data"]) + ([] if args.data_only else ["e2e"])
        for mode in modes:
            res = {"input": label, "slide": str(path), "n_tiles": n, "n_tiles_slide": n_full, "mode": mode,
                   "loadavg_before": os.getloadavg()}
            if mode == "data":
                res["raw_on_s"] = run_pathkit_data_only(path, tiles, "auto", bs, workers)
                res["raw_off_s"] = run_pathkit_data_only(path, tiles, False, bs, workers)
            else:
                feats = {}
                for m in methods:
                    res[f"{m}_s"], feats[m], info = run_pathkit(path, tiles, m, bs, workers)
                    res[f"{m}_dtype"] = info["dtype"]
                    print(f"  {m}: {res[f'{m}_s']:.1f} s", flush=True)
                if "float32" in feats and "old" in feats:
                    res["float32_vs_old_max_abs"] = float(np.abs(feats["float32"] - feats["old"]).max())
                if "default" in feats and "float32" in feats:
                    res["default_vs_float32_min_cos"] = _cos(feats["default"], feats["float32"])
            if not args.no_naive and (mode == "data" or args.naive_e2e):
                res["naive_s"] = run_naive(path, tiles, bs, data_only=mode == "data")
            if lazy_py is not None:
                if mode == "data":
                    runs = [{"num_workers": w, "data_only": True} for w in sorted({0, workers})]
                else:  # its best settings on this CPU: readers + bf16 autocast (+ float32 with --lazyslide-float32)
                    runs = [{"num_workers": workers, "data_only": False, "amp": amp}
                            for amp in ((True, False) if args.lazyslide_float32 else (True,))]
                out, why = run_lazyslide(lazy_py, path, tiles, bs, runs)
                if out is None:
                    res["lazyslide_error"] = why
                    print(why, flush=True)
                else:
                    meta["lazyslide_versions"] = out["versions"]
                    res["lazyslide_runs"] = out["runs"]
                    res["lazyslide_s"] = min(r["seconds"] for r in out["runs"])
                    f32 = [r["seconds"] for r in out["runs"] if not r.get("amp")]
                    res["lazyslide_float32_s"] = min(f32) if f32 else None
            res["loadavg_after"] = os.getloadavg()
            rows.append(res)
            print(json.dumps(res), flush=True)
    meta["loadavg_end"] = os.getloadavg()

    print()
    print(f"tile embedding, {MODEL} on CPU ({meta['cpu_count']} cores, native bf16: {meta['cpu_native_bf16']}, "
          f"load avg {meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f}), batch {bs}, workers {workers}")
    for r in rows:
        n = r["n_tiles"]
        if r["mode"] == "data":
            cells = [f"raw on {n / r['raw_on_s']:.1f}", f"raw off {n / r['raw_off_s']:.1f}"]
        else:
            cells = [f"{m} {n / r[f'{m}_s']:.2f}" for m in methods]
            if "default_s" in r and "old_s" in r:
                cells.append(f"default/old {r['old_s'] / r['default_s']:.2f}x")
            if "default_s" in r and "float32_s" in r:
                cells.append(f"default/float32 {r['float32_s'] / r['default_s']:.2f}x")
        if "naive_s" in r:
            cells.append(f"naive {n / r['naive_s']:.2f}")
        if r.get("lazyslide_s"):
            cells.append(f"lazyslide best {n / r['lazyslide_s']:.2f}")
            if r["mode"] == "e2e" and "default_s" in r:
                cells.append(f"default/lazyslide best {r['lazyslide_s'] / r['default_s']:.2f}x")
        print(f"{r['input'][:40]:<40} {r['mode']:<5} tiles/s: " + ", ".join(cells))
    out = RESULTS / f"bench_embed_{time.strftime('%Y%m%d_%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
