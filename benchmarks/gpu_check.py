"""One-command GPU check (issue 17): Prov-GigaPath-sized tile and slide encoders, random weights, bf16.

    benchmarks/gpu_check.sh                  # on a GPU machine: prints one JSON object (< 8 min on one H100/H200)
    python benchmarks/gpu_check.py --smoke   # tiny sizes on any machine (CPU): every branch, in seconds

Measured, in this order, each after a warm-up, on `--device` (auto: cuda when available):
1. `gpu`: device name, memory, torch / torchvision / CUDA versions, CPU cores.
2. `slide`: a generated SVS at 0.5 mpp with 40,000 tissue tiles of 256 px (`pk.datasets.synthetic_slide`,
   JPEG YCbCr 4:2:0, 256-px stored tiles; made once, time reported) and its tile table (`pk.pp.tile`).
3. `raw_decode`: the raw-tile fast path on this device: eligible or why not, and its decoder's difference
   from tifffile's (libjpeg-turbo) decode on a few stored tiles (nvJPEG may differ by IDCT / upsampling).
4. `data_path`: tiles/s of the tile loader + on-device preprocessing (resize 256 -> 224 bicubic, crop,
   normalise) with the model replaced by a channel mean, with the raw path on and off.
5. `forward`: tiles/s of the bare `gigapath_tile` forward (ViT-g/14 recipe, patch 16, 1.13 B parameters)
   on random input under bf16 autocast.
6. `end_to_end`: tiles/s of `pk.tl.embed_tiles(tiles, slide, "gigapath_tile", weights="random",
   dtype="auto")` over the slide's tiles (the model is built and cached by a warm-up call first; its build
   time is reported apart); all 40,000 unless the rates of 4 and 5 say that would take over --e2e-max-s.
7. `longnet`: seconds of one `gigapath_slide` forward (released architecture, random weights) on 70,000
   tiles in bf16 (goal <= 0.3 s), and its peak memory.
8. `peak_gpu_memory_gb`: the largest `torch.cuda.max_memory_allocated` of any stage.

Goals (issue 17): end to end >= 1,000 tiles/s on an H100/H200; LongNet 70k tiles <= 0.3 s.
The JSON is printed last on stdout and written to `--out` (default $OUT/gpu_check.json when $OUT is set,
else benchmarks/results/gpu_check_<time>.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FULL = {"side": 52224, "blobs": [{"kind": "rect", "x0": 512, "y0": 512, "x1": 51712, "y1": 51712}],
        "tile_model": "gigapath_tile", "slide_model": "gigapath_slide", "longnet_tiles": 70_000,
        "batch_size": 256, "forward_batches": 10}
# tiny sizes for --smoke: 6 x 6 tissue tiles, a 2-block ViT-Ti, a 1-layer 64-d LongNet on 300 tiles
SMOKE = {"side": 2048, "blobs": [{"kind": "rect", "x0": 256, "y0": 256, "x1": 1792, "y1": 1792}],
         "tile_model": "vit_tiny_test", "slide_model": "gigapath_slide", "longnet_tiles": 300,
         "longnet_overrides": {"depth": 1, "embed_dim": 64, "heads": 4, "in_chans": 64}, "batch_size": 8,
         "forward_batches": 1, "tiles": 16}


def _sync(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak(dev):
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)


def _peak_gb(dev) -> float | None:
    import torch

    if dev.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(dev) / 2**30, 3)


def _device_info(dev) -> dict:
    import torch
    import torchvision

    out = {"device": str(dev), "torch": torch.__version__, "torchvision": torchvision.__version__,
           "cpu_cores": os.cpu_count(), "python": platform.python_version(),
           "loadavg": [round(v, 2) for v in os.getloadavg()]}
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        out.update(name=torch.cuda.get_device_name(dev), memory_gb=round(p.total_memory / 2**30, 1),
                   cuda=torch.version.cuda, sm_count=p.multi_processor_count)
    else:
        out.update(name=f"CPU ({platform.processor() or platform.machine()})")
    return out


def _tiles(slide):
    """The tiles AnnData of `slide` and its (xs, ys, tile_px, mpp)."""
    import pathkit as pk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiles = pk.pp.tile(slide)
    spec = tiles.uns["tile_spec"]
    return (tiles, tiles.obs["x"].to_numpy(np.int64), tiles.obs["y"].to_numpy(np.int64), int(spec["tile_px"]),
            float(spec["mpp"]))


def _embed(tiles, slide, model, dev, batch_size, num_workers):
    """pk.tl.embed_tiles with random weights and dtype="auto"; returns (features, uns["models"] entry)."""
    import pathkit as pk

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.tl.embed_tiles(tiles, slide, model, key_added="X_check", weights="random", device=str(dev),
                          dtype="auto", batch_size=batch_size, num_workers=num_workers, progress=False)
    return tiles.obsm["X_check"], tiles.uns["models"]["X_check"]


def _loader(slide, xs, ys, tile_px, mpp, batch_size, num_workers, dev, raw_tiles):
    from pathkit.tl._tile_loader import tile_loader

    return tile_loader(slide, xs, ys, tile_px, mpp, batch_size=batch_size, num_workers=num_workers,
                       pin_memory=dev.type == "cuda", device=dev, raw_tiles=raw_tiles)


def measure_data_path(slide, xs, ys, tile_px, mpp, spec, dev, batch_size, num_workers, raw_tiles, max_s):
    """tiles/s of loader + preprocessing on `dev`, model replaced by a channel mean; stops after max_s."""
    import torch

    from pathkit.tl.embed import TilePreprocess

    pre = TilePreprocess(spec).to(dev)
    loader = _loader(slide, xs, ys, tile_px, mpp, batch_size, num_workers, dev, raw_tiles)
    n = 0
    sink = torch.zeros(3, device=dev)
    t0 = time.perf_counter()
    first = None
    with torch.inference_mode():
        for batch in loader:
            x = pre(batch.to(dev, non_blocking=True), channels_last_input=True)
            sink += x.float().mean(dim=(0, 2, 3))
            n += len(batch)
            if first is None:
                _sync(dev)
                first = time.perf_counter() - t0
            if time.perf_counter() - t0 > max_s:
                break
    _sync(dev)
    dt = time.perf_counter() - t0
    return {"tiles": n, "seconds": round(dt, 3), "tiles_per_s": round(n / dt, 1),
            "first_batch_s": round(first or 0.0, 3), "raw_tiles": bool(loader.raw_tiles),
            "raw_reason": loader.raw_reason}


def measure_forward(spec_name, dev, batch_size, n_batches):
    import torch

    from pathkit._device import resolve_dtype
    from pathkit.models import build_tile_encoder, get_spec

    spec = get_spec(spec_name)
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        enc = build_tile_encoder(spec, device=dev).eval()
    build_s = time.perf_counter() - t0
    dtype = resolve_dtype("auto", dev)
    x = torch.randn(batch_size, 3, spec.input_size, spec.input_size, device=dev)
    _reset_peak(dev)
    with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
        enc(x)
        _sync(dev)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            out = enc(x)
        _sync(dev)
        dt = time.perf_counter() - t0
    assert torch.isfinite(out.float()).all()
    n = n_batches * batch_size
    res = {"model": spec.name, "dtype": str(dtype).replace("torch.", ""), "batch_size": batch_size,
           "tiles": n, "seconds": round(dt, 3), "tiles_per_s": round(n / dt, 1), "build_s": round(build_s, 2),
           "peak_gpu_memory_gb": _peak_gb(dev)}
    del enc
    return res


def measure_longnet(model, dev, n_tiles, overrides):
    import torch

    from pathkit._device import resolve_dtype
    from pathkit.models.longnet import build_slide_encoder

    dtype = resolve_dtype("auto", dev)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = build_slide_encoder(model, device="cpu", **overrides)
    net = net.to(device=dev, dtype=dtype).eval()
    g = torch.Generator().manual_seed(1)
    side = net.slide_ngrids
    cells = torch.randperm(side * side, generator=g)[:n_tiles]
    coords = (torch.stack([cells % side, cells // side], dim=-1).double()[None] * net.tile_size).to(dev)
    x = torch.randn(1, n_tiles, net.in_chans, generator=g).to(dev, dtype)
    times = []
    _reset_peak(dev)
    with torch.inference_mode():
        net(x[:, :1024], coords[:, :1024], pool="mean")  # kernels chosen
        for _ in range(3):
            _sync(dev)
            t0 = time.perf_counter()
            y = net(x, coords, pool="mean")
            _sync(dev)
            times.append(time.perf_counter() - t0)
    assert torch.isfinite(y.float()).all()
    return {"model": model, "overrides": overrides, "tiles": n_tiles, "dtype": str(dtype).replace("torch.", ""),
            "seconds": round(min(times), 4), "seconds_all": [round(t, 4) for t in times],
            "goal_s": 0.3, "meets_goal": min(times) <= 0.3, "attn_backend": net.attn_backend,
            "peak_gpu_memory_gb": _peak_gb(dev)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (CPU friendly), same code paths")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--slide", type=Path, default=None, help="an existing slide instead of generating one")
    ap.add_argument("--tiles", type=int, default=None, help="tiles embedded end to end (default: all)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--num-workers", type=int, default=None, help="reader processes (default min(8, cores))")
    ap.add_argument("--data-max-s", type=float, default=45.0, help="time cap of each data-path run")
    ap.add_argument("--e2e-max-s", type=float, default=150.0,
                    help="end to end: at most about this many seconds' worth of tiles (by the rates measured)")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    import pathkit as pk
    from pathkit import _raw_tiles
    from pathkit._device import resolve_device
    from pathkit._raw_tiles import raw_reader
    from pathkit.models import get_spec
    from pathkit.tl.embed import clear_model_cache

    cfg = SMOKE if args.smoke else FULL
    dev = resolve_device(args.device)
    bs = args.batch_size or cfg["batch_size"]
    workers = args.num_workers if args.num_workers is not None else min(8, os.cpu_count() or 1)
    if args.smoke and args.num_workers is None:
        workers = 0
    t_start = time.perf_counter()
    res: dict = {"check": "pathkit gpu_check (issue 17)", "smoke": bool(args.smoke),
                 "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "gpu": _device_info(dev),
                 "pathkit": pk.__version__, "batch_size": bs, "num_workers": workers}

    def log(msg):
        print(f"[gpu_check {time.perf_counter() - t_start:6.1f}s] {msg}", file=sys.stderr, flush=True)

    # ---- slide
    path = args.slide
    gen_s = None
    if path is None:
        cache = Path(os.environ.get("PATHKIT_GPU_CHECK_CACHE", "/tmp/pathkit_gpu_check"))
        path = cache / f"synthetic_{cfg['side']}.svs"
        if not path.is_file():
            log(f"generating {path} ...")
            t0 = time.perf_counter()
            pk.datasets.synthetic_slide(path, width=cfg["side"], height=cfg["side"], mpp=0.5, blobs=cfg["blobs"],
                                        seed=1)
            gen_s = round(time.perf_counter() - t0, 1)
    slide = pk.read_slide(path)
    t0 = time.perf_counter()
    tiles, xs, ys, tile_px, mpp = _tiles(slide)
    res["slide"] = {"path": str(path), "dimensions": list(slide.dimensions), "mpp": slide.mpp,
                    "n_tiles": len(xs), "generate_s": gen_s, "tile_s": round(time.perf_counter() - t0, 2)}
    log(f"slide: {len(xs)} tiles")

    # ---- raw decode on this device
    reader, why = raw_reader(slide, tile_px, mpp, device=dev)
    if reader is None:
        res["raw_decode"] = {"eligible": False, "reason": why}
    else:
        res["raw_decode"] = {"eligible": True, "level": reader.level, **reader.check_device(dev)}
    res["raw_decode"]["thresholds"] = {"mean_abs": _raw_tiles.PROBE_MEAN_MAX,
                                       "p999_abs": _raw_tiles.PROBE_P999_MAX}
    log(f"raw decode: {res['raw_decode']}")

    # ---- data path alone (raw on, then off)
    spec = get_spec(cfg["tile_model"])
    res["data_path"] = {}
    for raw in ("auto", False):
        _reset_peak(dev)
        r = measure_data_path(slide, xs, ys, tile_px, mpp, spec, dev, bs, workers, raw, args.data_max_s)
        r["peak_gpu_memory_gb"] = _peak_gb(dev)
        res["data_path"]["raw_on" if raw == "auto" else "raw_off"] = r
        log(f"data path raw={raw}: {r}")

    # ---- bare forward
    res["forward"] = measure_forward(cfg["tile_model"], dev, bs, cfg["forward_batches"])
    log(f"forward: {res['forward']}")
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # ---- end to end
    want = args.tiles if args.tiles is not None else cfg.get("tiles")
    n = len(xs) if want is None else min(want, len(xs))
    if want is None:  # stay inside the time budget when the data path or the model is slower than hoped
        rate = min(res["forward"]["tiles_per_s"], res["data_path"]["raw_on"]["tiles_per_s"])
        n = max(min(n, int(args.e2e_max_s * rate)), min(n, 4 * bs))
    t0 = time.perf_counter()
    _embed(tiles[: min(n, 2 * bs)].copy(), slide, cfg["tile_model"], dev, bs, 0)  # builds + caches the model
    build_s = time.perf_counter() - t0
    _reset_peak(dev)
    sub = tiles[:n].copy()
    t0 = time.perf_counter()
    feats, info = _embed(sub, slide, cfg["tile_model"], dev, bs, workers)
    _sync(dev)
    dt = time.perf_counter() - t0
    res["end_to_end"] = {"model": cfg["tile_model"], "weights": "random", "tiles": n, "seconds": round(dt, 2),
                         "tiles_per_s": round(n / dt, 1), "warmup_and_build_s": round(build_s, 2),
                         "dtype": info.get("dtype"), "finite": bool(np.isfinite(feats).all()),
                         "goal_tiles_per_s": 1000, "peak_gpu_memory_gb": _peak_gb(dev)}
    log(f"end to end: {res['end_to_end']}")
    clear_model_cache()
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    # ---- LongNet
    res["longnet"] = measure_longnet(cfg["slide_model"], dev, cfg["longnet_tiles"], cfg.get("longnet_overrides", {}))
    log(f"longnet: {res['longnet']}")

    peaks = [v.get("peak_gpu_memory_gb") for v in (res["forward"], res["end_to_end"], res["longnet"],
                                                     *res["data_path"].values())]
    peaks = [p for p in peaks if p is not None]
    res["peak_gpu_memory_gb"] = max(peaks) if peaks else None
    res["total_s"] = round(time.perf_counter() - t_start, 1)

    out_path = args.out
    if out_path is None:
        out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "benchmarks" / "results"
        out_path = out_dir / f"gpu_check{'_smoke' if args.smoke else ''}_{time.strftime('%Y%m%d_%H%M%S')}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=1, default=str))
    print(json.dumps(res, default=str), flush=True)
    return res


if __name__ == "__main__":
    main()
