"""Tiling: pathkit vs hs2p 6.1 (tissue detection + tile coordinates + QC), same parameters, side by side.

    python benchmarks/bench_tiling_hs2p.py [--hs2p-python V/bin/python] [--repeat 3] [--inner 3]
                                           [--slides CMU1 SYNTH100K] [--tile-px 256 --mpp 0.5 --min-tissue 0.1]

hs2p lives in its own virtual environment (``python -m venv V && V/bin/pip install "hs2p[openslide,tifffile]==6.1.0"``,
default V = benchmarks/.venv-hs2p);
this script runs it there through a subprocess (``--hs2p-python``, or the ``HS2P_PYTHON`` environment
variable). Every measurement is a fresh subprocess of this script (``--worker pathkit|hs2p``) that times, in
process, calls from the slide path to the tile coordinates (--inner of them: the first, "cold", pays lazy
imports and first reads; the best of the others is the "warm" figure, that of a notebook tiling many slides):

- pathkit: ``pk.pp.tile(path, tile_px, mpp, min_tissue=..., overlap=0)`` with its defaults: ``find_tissue``
  (8 um/px mask, Otsu + cleaning + pen removal) and ``qc=True`` (pen share from the mask; no pixel reads);
- pathkit_coarse: the same with ``tissue=pk.pp.find_tissue(slide, mask_mpp=--coarse-mpp)`` (32 um/px: hs2p's
  default mask resolution on a 0.5-mpp pyramid);
- hs2p_fine: hs2p with ``SegmentationConfig(downsample=--fine-downsample)`` (16: pathkit's 8 um/px; hs2p
  takes the nearest pyramid level, so on a one-level slide such as CMU-1 it segments level 0 either way);
- hs2p: ``hs2p.tile_slide`` with its defaults (``method="hsv"`` segmentation at downsample 64, contour
  filters a_t=4 / a_h=2, no pixel QC: ``filter_white/black`` are off by default, as pathkit reads no pixels
  either), ``requested_spacing_um=mpp``, ``requested_tile_size_px=tile_px``, ``overlap=0``,
  ``min_coverage={"tissue": min_tissue}``, one worker.

Both grids start at (0, 0) with a 256-px step at 0.5 mpp, so the kept tiles are compared as sets of
level-0 (x, y)... except that hs2p anchors its grid at the tissue's bounding box, not at (0, 0). So besides
the counts, each tool's mask is also scored on the other's grid (pathkit's ``TissueMask.area_fraction``;
hs2p's returned mask by box sums), which separates the grid origin from the mask. The two tools alternate (pathkit, hs2p, pathkit, hs2p...),
best of --repeat kept. Slides: CMU-1-Small-Region.svs (../shared/data/slides) and the generated 100k-tile
slide of bench_memory.py / bench_tissue.py (benchmarks/results/cache/synthetic_100k.svs; generate it with
``python benchmarks/bench_tissue.py`` or bench_memory.py). Writes benchmarks/results/bench_tiling_hs2p.json.
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

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _worker_pathkit(path, tile_px, mpp, min_tissue, out, inner, mask_mpp=None):
    import numpy as np

    t = time.perf_counter()
    import pathkit as pk
    t_import = time.perf_counter() - t
    times = []
    for _ in range(inner):
        t = time.perf_counter()
        slide = pk.read_slide(path)  # opened once, as pk.pp.tile(path) does for its default mask
        tissue = None if mask_mpp is None else pk.pp.find_tissue(slide, mask_mpp=mask_mpp)
        tiles = pk.pp.tile(slide, tile_px=tile_px, mpp=mpp, min_tissue=min_tissue, overlap=0, tissue=tissue)
        times.append(time.perf_counter() - t)
    xy = np.stack([tiles.obs["x"].to_numpy(), tiles.obs["y"].to_numpy()], 1).astype(np.int64)
    np.save(out, xy)
    return {"seconds": min(times[1:] or times), "first_call_s": times[0], "import_s": t_import, "n_tiles": len(xy),
            "mask_shape": list(tiles.uns.get("tissue", {}).get("mask_shape", [])) or None,
            "version": pk.__version__}


def _worker_hs2p(path, tile_px, mpp, min_tissue, out, inner, downsample=None):
    import dataclasses

    import numpy as np

    t = time.perf_counter()
    import hs2p
    from hs2p import FilterConfig, SegmentationConfig, SlideSpec, TilingConfig, tile_slide
    from hs2p.configs import DEFAULT_MASK_SAMPLING
    t_import = time.perf_counter() - t
    masks = dataclasses.replace(DEFAULT_MASK_SAMPLING, min_coverage={"tissue": float(min_tissue)})
    times = []
    for _ in range(inner):
        t = time.perf_counter()
        r = tile_slide(SlideSpec(sample_id=Path(path).stem, image_path=Path(path)),
                       tiling=TilingConfig(requested_spacing_um=mpp, requested_tile_size_px=tile_px, tolerance=0.05,
                                           overlap=0.0, backend="auto"),
                       segmentation=SegmentationConfig(method="hsv", **({} if downsample is None else
                                                                                   {"downsample": int(downsample)})), filtering=FilterConfig(), num_workers=1,
                       masks=masks)
        times.append(time.perf_counter() - t)
    xy = np.stack([np.asarray(r.tiles.x), np.asarray(r.tiles.y)], 1).astype(np.int64)
    np.save(out, xy)
    if r.tiles.tissue_mask is not None:  # its mask, for the comparison on pathkit's grid
        np.save(str(out).replace(".npy", "_mask.npy"), (np.asarray(r.tiles.tissue_mask) > 0).astype(np.uint8))
    return {"seconds": min(times[1:] or times), "first_call_s": times[0], "import_s": t_import,
            "n_tiles": len(xy), "backend": r.backend,
            "seg_level": int(r.seg_level), "seg_spacing_um": float(r.seg_spacing_um),
            "seg_downsample": int(r.seg_downsample), "tile_size_lv0": int(r.tiles.tile_size_lv0),
            "version": getattr(hs2p, "__version__", None) or _dist_version("hs2p")}


def _dist_version(name):
    from importlib.metadata import version

    return version(name)


def _box_fraction(mask, ds, x0, y0, size):
    """Share of each level-0 box [x0, x0 + size) x [y0, y0 + size) covered by a binary mask of downsample ds
    (boxes snapped to whole mask pixels: exact when size / ds is a whole number, as here)."""
    import numpy as np

    c = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    c[1:, 1:] = mask.astype(np.int64).cumsum(0).cumsum(1)
    i0 = np.clip(np.round(np.asarray(y0) / ds).astype(int), 0, mask.shape[0])
    j0 = np.clip(np.round(np.asarray(x0) / ds).astype(int), 0, mask.shape[1])
    n = max(1, round(size / ds))
    i1, j1 = np.clip(i0 + n, 0, mask.shape[0]), np.clip(j0 + n, 0, mask.shape[1])
    return (c[i1, j1] - c[i0, j1] - c[i1, j0] + c[i0, j0]) / float(n * n)


def _cross(path, tmp, args):
    """Counts with each tool's mask on each tool's grid: separates the grid origin from the mask."""
    import numpy as np

    import pathkit as pk

    slide = pk.read_slide(path)
    size = args.tile_px * slide.tile_geometry(args.tile_px, args.mpp)[1]
    tm = pk.pp.find_tissue(slide)  # pk.pp.tile's default mask
    hs_xy = np.load(tmp / "hs2p.npy")
    w, h = slide.dimensions
    gx, gy = np.meshgrid(np.arange(0, w - size + 1, size), np.arange(0, h - size + 1, size))
    gx, gy = gx.ravel(), gy.ravel()
    # hs2p's grid: its origin (the first kept tile mod the step), whole tiles inside the slide
    ox, oy = (int(hs_xy[:, 0].min() % size), int(hs_xy[:, 1].min() % size)) if len(hs_xy) else (0, 0)
    hx, hy = np.meshgrid(np.arange(ox, w - size + 1, size), np.arange(oy, h - size + 1, size))
    hx, hy = hx.ravel(), hy.ravel()
    out = {"hs2p_grid_origin": [ox, oy], "pathkit_mask_shape": list(tm.mask.shape),
           "pathkit_mask_on_hs2p_grid": int((tm.area_fraction(hx, hy, hx + size, hy + size)
                                              >= args.min_tissue - 1e-9).sum())}
    mpath = tmp / "hs2p_mask.npy"
    if mpath.exists():
        m = np.load(mpath)
        ds = w / m.shape[1]
        out["hs2p_mask_shape"] = list(m.shape)
        out["hs2p_mask_on_pathkit_grid"] = int((_box_fraction(m, ds, gx, gy, size) >= args.min_tissue).sum())
        out["hs2p_mask_on_hs2p_grid"] = int((_box_fraction(m, ds, hx, hy, size) >= args.min_tissue).sum())
        out["mask_tissue_share"] = {"pathkit": round(float(tm.mask.mean()), 4), "hs2p": round(float(m.mean()), 4)}
    return out


def _run(tool, python, path, args, out):
    cmd = [python, __file__, "--worker", tool, str(path), str(out), "--tile-px", str(args.tile_px),
           "--mpp", str(args.mpp), "--min-tissue", str(args.min_tissue), "--inner", str(args.inner)]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    if tool.startswith("pathkit"):
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    else:
        env.pop("PYTHONPATH", None)
    with tempfile.TemporaryDirectory() as cwd:  # hs2p may write next to the working directory
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=args.timeout, check=False)
    if p.returncode != 0:
        return {"tool": tool, "error": (p.stderr.strip().splitlines() or ["?"])[-1]}
    r = json.loads(p.stdout.strip().splitlines()[-1])
    r.update(tool=tool, loadavg_after=os.getloadavg()[0])
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hs2p-python", default=os.environ.get("HS2P_PYTHON", str(HERE / ".venv-hs2p" / "bin" / "python")),
                    help="python of a venv with hs2p[openslide]==6.1.0 (default $HS2P_PYTHON or benchmarks/.venv-hs2p)")
    ap.add_argument("--slides", nargs="+", default=["CMU1", "SYNTH100K"],
                    help="CMU1, SYNTH100K or paths")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--inner", type=int, default=3,
                    help="calls per process: the first is 'cold' (lazy imports, first file reads), best of the rest 'warm'")
    ap.add_argument("--coarse-mpp", type=float, default=32.0,
                    help="pathkit_coarse: find_tissue(mask_mpp=...), hs2p's default mask resolution on 0.5-mpp slides")
    ap.add_argument("--fine-downsample", type=int, default=16,
                    help="hs2p_fine: segmentation downsample (16 = pathkit's 8 um/px default on 0.5-mpp slides)")
    ap.add_argument("--tile-px", type=int, default=256)
    ap.add_argument("--mpp", type=float, default=0.5)
    ap.add_argument("--min-tissue", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--out", default=str(HERE / "results" / "bench_tiling_hs2p.json"))
    ap.add_argument("--worker", nargs=3, metavar=("TOOL", "SLIDE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        tool, path, out = args.worker
        a = (path, args.tile_px, args.mpp, args.min_tissue, out, args.inner)
        r = {"pathkit": lambda: _worker_pathkit(*a), "hs2p": lambda: _worker_hs2p(*a),
             "pathkit_coarse": lambda: _worker_pathkit(*a, mask_mpp=args.coarse_mpp),
             "hs2p_fine": lambda: _worker_hs2p(*a, downsample=args.fine_downsample)}[tool]()
        print(json.dumps(r))
        return

    import numpy as np

    if not Path(args.hs2p_python).exists():
        raise SystemExit(f"no hs2p python at {args.hs2p_python}: make one with `python -m venv benchmarks/.venv-hs2p && "
                         "benchmarks/.venv-hs2p/bin/pip install 'hs2p[openslide,tifffile]==6.1.0'`, or pass --hs2p-python")
    data = Path(os.environ.get("PATHKIT_TEST_DATA", ROOT.parent / "shared" / "data"))
    named = {"CMU1": data / "slides" / "CMU-1-Small-Region.svs",
             "SYNTH100K": HERE / "results" / "cache" / "synthetic_100k.svs"}
    meta = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "tile_px": args.tile_px, "mpp": args.mpp,
            "min_tissue": args.min_tissue, "overlap": 0, "repeat": args.repeat, "loadavg_start": os.getloadavg()}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.slides:
            path = named.get(name, Path(name))
            if not path.exists():
                print(f"skipping {name}: {path} does not exist", flush=True)
                continue
            runs = {"pathkit": [], "hs2p": [], "pathkit_coarse": [], "hs2p_fine": []}
            for rep in range(args.repeat):
                for tool, done in runs.items():  # A, B, C, D, A, B, C, D
                    py = args.hs2p_python if tool.startswith("hs2p") else sys.executable
                    r = _run(tool, py, path, args, Path(tmp) / f"{tool}.npy")
                    done.append(r)
                    print(name, json.dumps(r), flush=True)
            ok = {t: [r for r in v if "seconds" in r] for t, v in runs.items()}
            best = {t: min(r["seconds"] for r in v) for t, v in ok.items() if v}
            nt = {t: v[-1]["n_tiles"] for t, v in ok.items() if v}
            row = {"slide": name, "path": str(path), "runs": runs}
            if ok["pathkit"] and ok["hs2p"]:
                a = {tuple(v) for v in np.load(Path(tmp) / "pathkit.npy").tolist()}
                b = {tuple(v) for v in np.load(Path(tmp) / "hs2p.npy").tolist()}
                tp, th = min(r["seconds"] for r in ok["pathkit"]), min(r["seconds"] for r in ok["hs2p"])
                cp, ch = min(r["first_call_s"] for r in ok["pathkit"]), min(r["first_call_s"] for r in ok["hs2p"])
                row.update(pathkit_first_s=cp, hs2p_first_s=ch, speedup_first=ch / cp, best_s=best, n_tiles=nt,
                           hs2p_fine_seg_spacing_um=(ok["hs2p_fine"] or [{}])[-1].get("seg_spacing_um"))
                row.update(n_pathkit=len(a), n_hs2p=len(b), count_diff_pct=100.0 * (len(a) - len(b)) / max(1, len(b)),
                           pathkit_s=tp, hs2p_s=th, speedup=th / tp,
                           hs2p_seg=ok["hs2p"][-1].get("seg_spacing_um"), hs2p_backend=ok["hs2p"][-1].get("backend"),
                           versions={"pathkit": ok["pathkit"][-1]["version"], "hs2p": ok["hs2p"][-1]["version"]})
                row.update(_cross(path, Path(tmp), args))
            results.append(row)
    meta["loadavg_end"] = os.getloadavg()
    print(f"\ntiling, {args.tile_px} px at {args.mpp} mpp, min tissue {args.min_tissue}, overlap 0; best of "
          f"{args.repeat}, interleaved; load avg {meta['loadavg_start'][0]:.1f} -> {meta['loadavg_end'][0]:.1f}")
    print(f"{'slide':>10} | {'pathkit s':>9} | {'hs2p s':>8} | {'hs2p/pathkit':>12} | {'n pathkit':>9} | "
          f"{'n hs2p':>8} | {'diff %':>7} | {'load':>5} | first call: pathkit s, hs2p s, ratio")
    for r in results:
        if "speedup" not in r:
            print(f"{r['slide']:>10} | errors: {r['runs']}")
            continue
        print(f"{'':>10}   masks x grids: pathkit mask on hs2p grid {r.get('pathkit_mask_on_hs2p_grid')}, hs2p mask "
              f"on pathkit grid {r.get('hs2p_mask_on_pathkit_grid')}, on its own grid {r.get('hs2p_mask_on_hs2p_grid')}; "
              f"tissue share of the masks {r.get('mask_tissue_share')}")
        b, n = r["best_s"], r["n_tiles"]
        if "pathkit_coarse" in b and "hs2p_fine" in b:
            print(f"{'':>10}   same mask resolution: pathkit at {args.coarse_mpp:g} um/px {b['pathkit_coarse']:.2f} s "
                  f"({n['pathkit_coarse']} tiles) vs hs2p default {b['hs2p']:.2f} s -> {b['hs2p'] / b['pathkit_coarse']:.2f}x; "
                  f"hs2p at downsample {args.fine_downsample} ({r['hs2p_fine_seg_spacing_um']} um/px) {b['hs2p_fine']:.2f} s "
                  f"({n['hs2p_fine']} tiles) vs pathkit default {b['pathkit']:.2f} s -> {b['hs2p_fine'] / b['pathkit']:.2f}x")
        print(f"{r['slide']:>10} | {r['pathkit_s']:>9.2f} | {r['hs2p_s']:>8.2f} | {r['speedup']:>11.2f}x | "
              f"{r['n_pathkit']:>9} | {r['n_hs2p']:>8} | {r['count_diff_pct']:>+6.1f}% | "
              f"{r['runs']['hs2p'][-1].get('loadavg_after', 0):>5.1f} | {r['pathkit_first_s']:.2f}, "
              f"{r['hs2p_first_s']:.2f}, {r['speedup_first']:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmpf = out.with_suffix(".json.tmp")
    tmpf.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    os.replace(tmpf, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
