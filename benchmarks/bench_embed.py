"""End-to-end tile embedding throughput: pathkit vs the naive per-tile loop vs LazySlide 0.13.

    python benchmarks/bench_embed.py                 # CMU-1 + a generated ~40k-tile slide (subset timed)
    python benchmarks/bench_embed.py --tiles 256 --batch-size 32 --no-lazyslide

What is timed (tissue detection and tiling excluded, the same tile coordinates for every method):
read + decode + resize + normalise + model forward, from the slide file to a feature matrix, with
`timm:vit_small_patch16_224` (random weights) in float32 on the CPU, including building the model.

Methods, all in this run:
- pathkit: `pk.tl.embed_tiles` (DataLoader workers read tiles, uint8 batches, resize/normalise batched
  on the device, inference_mode).
- naive: tiffslide `read_region` per tile, PIL -> torchvision Resize/CenterCrop/ToTensor/Normalize per tile,
  batches of the same size, no workers (the Prov-GigaPath pipeline's loop after dumping PNGs).
- lazyslide: LazySlide 0.13 `zs.tl.feature_extraction` with the same timm architecture, in its own venv
  (benchmarks/.venv-lazyslide, created on first use with `pip install lazyslide==0.13.0`; it reuses this
  venv's torch/timm through a .pth file so both run the same torch). Run with its default num_workers=0 and
  with the same number of workers as pathkit; the faster one is the baseline.
- model forward: the same network on random tensors of the same batch size -> the share of pathkit's
  wall time spent in the model.
A second table times the data path alone (model replaced by a per-image channel mean) for all three.

Writes benchmarks/results/bench_embed_<timestamp>.json. The ~40k-tile slide is generated once into
benchmarks/results/cache/ (a few minutes). On a small CPU the whole 40k-tile slide would take hours with a
ViT-S, so a contiguous block of --tiles tiles from the middle of its tile table is timed (and said so).
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
LAZY_VENV = ROOT / "benchmarks" / ".venv-lazyslide"
ARCH = "vit_small_patch16_224"
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


def time_forward(batch_size: int, n_batches: int = 3) -> float:
    """Seconds per tile of the bare model forward on random input (after one warm-up batch)."""
    import torch

    model = build_model()
    x = torch.randn(batch_size, 3, 224, 224)
    with torch.inference_mode():
        model(x)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            model(x)
    return (time.perf_counter() - t0) / (n_batches * batch_size)


class ChannelMean:
    """Stand-in 'model' for the data-path-only runs: per-image channel mean."""

    def __call__(self, x):
        return x.float().mean(dim=(2, 3))


def run_pathkit(path, tiles, batch_size, num_workers, data_only=False) -> float:
    import torch

    import pathkit as pk

    slide = pk.read_slide(path)
    slide.sha256()  # provenance hash outside the timed part (cached; a real run pays it once per file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if data_only:
            from pathkit.models import get_spec
            from pathkit.tl.embed import TilePreprocess, tile_loader

            spec = get_spec(MODEL)
            t0 = time.perf_counter()
            pre = TilePreprocess(spec)
            ts = tiles.attrs["tile_spec"]
            out = []
            with torch.inference_mode():
                for b in tile_loader(slide, tiles["x"], tiles["y"], ts["tile_px"], ts["mpp"], batch_size,
                                     num_workers):
                    out.append(ChannelMean()(pre(b, channels_last_input=True)))
            return time.perf_counter() - t0
        t0 = time.perf_counter()
        pk.tl.embed_tiles(slide, MODEL, tiles=tiles, device="cpu", batch_size=batch_size,
                          num_workers=num_workers, progress=False)
        return time.perf_counter() - t0


def run_naive(path, tiles, batch_size, data_only=False) -> float:
    import tiffslide
    import torch
    from torchvision import transforms as T

    from pathkit.models import get_spec

    spec = get_spec(MODEL)
    ts = tiles.attrs["tile_spec"]
    side = round(ts["size_level0"])
    t0 = time.perf_counter()
    model = ChannelMean() if data_only else build_model()
    tf = T.Compose([T.Resize(spec.resize or spec.input_size, interpolation=T.InterpolationMode.BICUBIC),
                    T.CenterCrop(spec.input_size), T.ToTensor(), T.Normalize(spec.mean, spec.std)])
    wsi = tiffslide.TiffSlide(str(path))
    feats, buf = [], []
    with torch.inference_mode():
        for x, y in zip(tiles["x"].to_numpy(), tiles["y"].to_numpy()):
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


def lazyslide_python() -> tuple[Path | None, str]:
    """The LazySlide venv's python, creating the venv on first use; (None, why) when that fails."""
    py = LAZY_VENV / "bin" / "python"
    probe = [str(py), "-c", "import lazyslide; print(lazyslide.__version__)"]
    if py.is_file():
        r = subprocess.run(probe, capture_output=True, text=True, check=False)
        if r.returncode == 0 and r.stdout.strip().startswith("0.13"):
            return py, ""
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
        np.save(coords, tiles[["x", "y"]].to_numpy(dtype=np.int64))
        cfg = {"slide": str(path), "coords": str(coords), "batch_size": batch_size, "arch": ARCH, "runs": runs}
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        r = subprocess.run([str(py), "-c", LAZY_SCRIPT, json.dumps(cfg)], capture_output=True, text=True,
                           check=False, env=env, cwd=d)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):]), ""
    return None, f"LazySlide run failed (exit {r.returncode}): {r.stderr.strip()[-800:]}"


# ---------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiles", type=int, default=128, help="tiles timed on the ~40k-tile slide (default 128)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--num-workers", type=int, default=None, help="pathkit reader processes (default its own)")
    ap.add_argument("--no-lazyslide", action="store_true")
    ap.add_argument("--no-synthetic", action="store_true")
    ap.add_argument("--no-data-only", action="store_true", help="skip the data-path-only table")
    ap.add_argument("--data-only", action="store_true", help="only the data-path-only table (no model)")
    args = ap.parse_args(argv)

    import torch

    import pathkit as pk
    from pathkit.tl.embed import default_num_workers

    workers = default_num_workers() if args.num_workers is None else args.num_workers
    bs = args.batch_size
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": platform.processor() or
        platform.machine(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "loadavg_start": os.getloadavg(), "python": platform.python_version(), "torch": torch.__version__,
        "pathkit": pk.__version__, "model": MODEL, "dtype": "float32", "device": "cpu", "batch_size": bs,
        "pathkit_num_workers": workers,
    }
    try:
        import tiffslide
        import timm

        meta.update(timm=timm.__version__, tiffslide=tiffslide.__version__)
    except ImportError:
        pass

    inputs = []
    cmu = cmu1_path()
    if cmu is None:
        print("CMU-1-Small-Region.svs not found (set PATHKIT_TEST_DATA); skipped")
    else:
        s = pk.read_slide(cmu)
        inputs.append(("CMU-1-Small-Region (whole slide)", cmu, pk.pp.tile(s), None))
    if not args.no_synthetic:
        sp = synthetic_path()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = pk.pp.tile(pk.read_slide(sp))
        n_full = len(full)
        mid = max(0, n_full // 2 - args.tiles // 2)
        sub = full.iloc[mid:mid + args.tiles].copy()
        sub.attrs = dict(full.attrs)
        inputs.append((f"synthetic {SYNTH_SIDE}x{SYNTH_SIDE} ({n_full} tiles; {len(sub)} timed)", sp, sub, n_full))

    print("timing the bare model forward ...", flush=True)
    fwd = float("nan") if args.data_only else time_forward(bs)
    meta["forward_s_per_tile"] = fwd

    lazy_py, lazy_why = (None, "skipped (--no-lazyslide)")
    if not args.no_lazyslide:
        lazy_py, lazy_why = lazyslide_python()
        if lazy_py is None:
            print("LazySlide unavailable:", lazy_why)

    rows = []
    for label, path, tiles, n_full in inputs:
        n = len(tiles)
        print(f"{label}: {n} tiles", flush=True)
        modes = [True] if args.data_only else [False] if args.no_data_only else [False, True]
        for data_only in modes:
            tag = "data path only" if data_only else "end to end"
            res = {"input": label, "slide": str(path), "n_tiles": n, "n_tiles_slide": n_full, "mode": tag}
            res["pathkit_s"] = run_pathkit(path, tiles, bs, workers, data_only)
            res["naive_s"] = run_naive(path, tiles, bs, data_only)
            if lazy_py is not None:
                runs = [{"num_workers": 0, "data_only": data_only}]
                if workers:
                    runs.append({"num_workers": workers, "data_only": data_only})
                out, why = run_lazyslide(lazy_py, path, tiles, bs, runs)
                if out is None:
                    res["lazyslide_error"] = why
                    print(why)
                else:
                    meta["lazyslide_versions"] = out["versions"]
                    res["lazyslide_runs"] = out["runs"]
                    res["lazyslide_s"] = min(r["seconds"] for r in out["runs"])
            else:
                res["lazyslide_error"] = lazy_why
            if not data_only:
                res["model_share"] = n * fwd / res["pathkit_s"]
            rows.append(res)
            print(json.dumps(res), flush=True)
    meta["loadavg_end"] = os.getloadavg()

    # table
    print()
    print(f"tile embedding, {MODEL} fp32 on CPU ({os.cpu_count()} cores, load avg {meta['loadavg_start'][0]:.1f}),"
          f" batch {bs}, pathkit workers {workers}; model forward alone {1 / fwd:.1f} tiles/s")
    hdr = f"{'input':<52} {'mode':<15} {'pathkit t/s':>11} {'naive t/s':>10} {'lazyslide t/s':>13} " \
          f"{'vs naive':>8} {'vs lazy':>8} {'in model':>8}"
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        n = r["n_tiles"]
        pk_tps, nv_tps = n / r["pathkit_s"], n / r["naive_s"]
        lz = r.get("lazyslide_s")
        lz_tps = f"{n / lz:13.2f}" if lz else f"{'n/a':>13}"
        vs_lz = f"{lz / r['pathkit_s']:7.2f}x" if lz else f"{'n/a':>8}"
        share = f"{100 * r['model_share']:7.0f}%" if "model_share" in r else f"{'':>8}"
        print(f"{r['input'][:52]:<52} {r['mode']:<15} {pk_tps:11.2f} {nv_tps:10.2f} {lz_tps} "
              f"{r['naive_s'] / r['pathkit_s']:7.2f}x {vs_lz} {share}")
    if lazy_py is None:
        print(f"LazySlide: {lazy_why}")
    out = RESULTS / f"bench_embed_{time.strftime('%Y%m%d_%H%M%S')}.json"
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
