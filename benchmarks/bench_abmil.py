"""Benchmark: 5-fold ABMIL on synthetic bags, CPU, wall time per fold and peak memory.

    python benchmarks/bench_abmil.py                      # 500 bags x 2000 tiles x 768-d, 2 epochs
    python benchmarks/bench_abmil.py --bags 50 --tiles 200 --epochs 1   # smoke run

The bags are written once to an .h5ad (dense X, obs["slide_id"]) chunk by chunk, so no process ever holds the
whole cohort; each measured step then runs in its own process so that its peak RSS is its own:

* ``pathkit lazy``: ``pk.tl.train_abmil("<file>.h5ad", ...)`` reading the file backed, one bag at a time;
* ``pathkit in-memory`` (``--in-memory``): the same with the whole AnnData loaded first;
* ``baseline``: mean-pooled bag features + logistic regression (sklearn) on the same patient folds — the
  usual non-MIL baseline, for time and AUROC.

Positive bags get a fixed direction added to 1% of their tiles (the MIL setting: a few informative tiles).
Prints a table and writes JSON to benchmarks/results/bench_abmil.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _cpu_s() -> float:
    """CPU seconds of this process: on a shared machine the honest companion of wall time."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def bag_table(n_bags: int) -> dict:
    """Slide ids, patients (two slides each) and the per-patient label of the synthetic cohort."""
    labels = ((np.arange(n_bags) // 2) % 2).astype(int)
    return {"slide_id": [f"SYN-{b:04d}" for b in range(n_bags)],
            "patient_id": [f"PAT-{b // 2:04d}" for b in range(n_bags)], "label": labels.tolist()}


def make_bags(path: str, n_bags: int, n_tiles: int, dim: int, seed: int = 0, frac: float = 0.01,
              magnitude: float = 0.5) -> dict:
    """Write an h5ad with n_bags * n_tiles rows, in chunks; returns the labels and patients."""
    import anndata as ad
    import h5py
    import pandas as pd
    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem

    rng = np.random.default_rng(seed)
    direction = rng.normal(size=dim).astype(np.float32)
    direction /= np.linalg.norm(direction)
    meta = bag_table(n_bags)
    labels = np.asarray(meta["label"])
    slide_ids = meta["slide_id"]
    obs = pd.DataFrame({"slide_id": np.repeat(slide_ids, n_tiles)},
                       index=[str(i) for i in range(n_bags * n_tiles)])
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        X = f.create_dataset("X", shape=(n_bags * n_tiles, dim), dtype="float32", chunks=(n_tiles, dim))
        X.attrs["encoding-type"] = "array"
        X.attrs["encoding-version"] = "0.2.0"
        for b in range(n_bags):
            x = rng.standard_normal((n_tiles, dim), dtype=np.float32)
            if labels[b]:
                k = max(1, int(frac * n_tiles))
                x[rng.choice(n_tiles, k, replace=False)] += magnitude * np.sqrt(dim) * direction
            X[b * n_tiles:(b + 1) * n_tiles] = x
        write_elem(f, "obs", obs)
        write_elem(f, "var", pd.DataFrame(index=[str(i) for i in range(dim)]))
        for g in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, g, {})
    ad.read_h5ad(path, backed="r").file.close()  # the file reads back as AnnData
    return meta


def _cohort(meta):
    import anndata as ad
    import pandas as pd

    obs = pd.DataFrame(meta)
    obs.index = obs["slide_id"]
    obs["label"] = np.where(obs["label"] == 1, "pos", "neg")
    return ad.AnnData(obs=obs)


def run_pathkit(path, meta, epochs, folds, in_memory, q):
    import torch

    import pathkit as pk

    tiles = path
    t_load = 0.0
    if in_memory:
        import anndata as ad

        t0 = time.perf_counter()
        tiles = ad.read_h5ad(path)
        t_load = time.perf_counter() - t0
    cohort = _cohort(meta)
    t0 = time.perf_counter()
    res = pk.tl.train_abmil(tiles, cohort, label="label", task="binary", folds=folds, epochs=epochs,
                            patience=epochs, progress=False, seed=0, device="cpu")
    wall = time.perf_counter() - t0
    per_fold = res.metrics.loc[list(range(folds)), "seconds"].astype(float).tolist()
    q.put({"wall_s": wall, "cpu_s": _cpu_s(), "load_s": t_load, "per_fold_s": per_fold, "peak_rss_mb": _peak_rss_mb(),
           "auroc": float(res.summary.loc["auroc", "value"]),
           "auroc_ci": [float(res.summary.loc["auroc", "ci_lower"]), float(res.summary.loc["auroc", "ci_upper"])],
           "torch_threads": torch.get_num_threads()})


def run_baseline(path, meta, folds, q):
    import anndata as ad
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from pathkit.tl.splits import patient_folds

    t0 = time.perf_counter()
    a = ad.read_h5ad(path, backed="r")
    n_bags = len(meta["slide_id"])
    n_tiles = a.n_obs // n_bags
    means = np.stack([np.asarray(a.X[b * n_tiles:(b + 1) * n_tiles]).mean(0) for b in range(n_bags)])
    t_read = time.perf_counter() - t0
    y = np.asarray(meta["label"])
    pred = np.zeros(n_bags)
    per_fold = []
    for tr, te in patient_folds(meta["patient_id"], y, folds=folds, seed=0):
        t1 = time.perf_counter()
        clf = LogisticRegression(max_iter=2000).fit(means[tr], y[tr])
        pred[te] = clf.predict_proba(means[te])[:, 1]
        per_fold.append(time.perf_counter() - t1 + t_read / folds)
    q.put({"wall_s": time.perf_counter() - t0, "cpu_s": _cpu_s(), "per_fold_s": per_fold, "peak_rss_mb": _peak_rss_mb(),
           "auroc": float(roc_auc_score(y, pred))})


def _in_process(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bags", type=int, default=500)
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--dim", type=int, default=768)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--in-memory", action="store_true", help="also time training from an in-memory AnnData")
    ap.add_argument("--workdir", default=None, help="where the synthetic .h5ad goes (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="reuse the .h5ad already in --workdir")
    args = ap.parse_args(argv)

    from importlib.metadata import version

    import sklearn
    import torch

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pathkit_bench_abmil_"))
    workdir.mkdir(parents=True, exist_ok=True)
    path = str(workdir / f"bags_{args.bags}x{args.tiles}x{args.dim}.h5ad")
    t0 = time.perf_counter()
    if args.reuse and os.path.exists(path):
        meta = bag_table(args.bags)
    else:
        meta = _in_process(_make_q, path, args.bags, args.tiles, args.dim)
    t_make = time.perf_counter() - t0
    size_gb = os.path.getsize(path) / 1e9
    print(f"synthetic bags: {args.bags} x {args.tiles} x {args.dim} float32 = {size_gb:.2f} GB on disk "
          + ("(reused)" if args.reuse and t_make < 1 else f"(written in {t_make:.0f} s)"), flush=True)

    rows = {}
    rows["pathkit lazy (backed h5ad)"] = _in_process(run_pathkit, path, meta, args.epochs, args.folds, False)
    print("pathkit lazy done", flush=True)
    if args.in_memory:
        rows["pathkit in-memory AnnData"] = _in_process(run_pathkit, path, meta, args.epochs, args.folds, True)
    rows["baseline mean-pool + logreg"] = _in_process(run_baseline, path, meta, args.folds)
    base = rows["baseline mean-pool + logreg"]

    print(f"\n5-fold ABMIL, {args.epochs} epochs/fold (no early stop), batch 1 bag, CPU "
          f"({torch.get_num_threads()} torch threads, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f})")
    hdr = (f"{'method':30s} {'s/fold (mean)':>14s} {'total s':>9s} {'x baseline':>10s} {'CPU s':>8s} "
           f"{'peak RSS MB':>12s} {'AUROC':>7s}")
    print(hdr)
    print("-" * len(hdr))
    for name, r in rows.items():
        mean_fold = float(np.mean(r["per_fold_s"]))
        print(f"{name:30s} {mean_fold:14.1f} {r['wall_s']:9.1f} {r['wall_s'] / base['wall_s']:10.1f} "
              f"{r['cpu_s']:8.0f} {r['peak_rss_mb']:12.0f} {r['auroc']:7.3f}")
    out = {"config": vars(args), "data_gb": size_gb, "results": rows,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                       "torch": torch.__version__, "anndata": version("anndata"), "sklearn": sklearn.__version__},
           "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    tmp = res_dir / "bench_abmil.json.tmp"
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, res_dir / "bench_abmil.json")
    print(f"\nwrote {res_dir / 'bench_abmil.json'}")
    if not args.workdir:
        os.remove(path)


def _make_q(path, n_bags, n_tiles, dim, q):
    q.put(make_bags(path, n_bags, n_tiles, dim))


if __name__ == "__main__":
    main()
