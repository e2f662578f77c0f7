"""Benchmark: fit + predict time and peak memory of every MIL model on synthetic bags, CPU.

    python benchmarks/bench_mil.py                       # 500 bags x 2000 tiles x 768-d, 1 epoch
    python benchmarks/bench_mil.py --partial transmil=100   # TransMIL's epoch timed on 100 of the 400 bags
    python benchmarks/bench_mil.py --bags 60 --tiles 2000 --epochs 1 --models abmil mean   # reduced run
    python benchmarks/bench_mil.py --legacy /tmp/pk-old  # also the pre-estimator train_abmil of an older checkout

The bags are written once to an .h5ad (dense X, obs["slide_id"]) chunk by chunk, so no process ever holds the
whole cohort. Every model is then measured in its own process (so that its peak RSS is its own) on the same
patient split: ``pk.tl.MIL(model).fit`` on 80% of the patients reading the file backed one bag at a time
(fixed epochs, no early stop), then ``predict`` on the other 20% (AUROC reported). ``--legacy`` runs the
pre-estimator ``pk.tl.train_abmil`` (5-fold CV) from a checkout that still has ``pathkit/tl/abmil.py``
(``git worktree add /tmp/pk-old 76ecde6``) and reports its mean seconds per fold (one fit + one prediction
on the same split sizes) and peak RSS.

Time per epoch is the figure: one optimiser step per bag, so fit time is linear in bags and epochs.
``--partial MODEL=K`` trains MODEL on the first K training bags only (for a model whose full epoch would not
fit the time at hand); its time per epoch is then extrapolated to the whole training set (stated in the
output as such), its AUROC comes from the smaller training set. Every figure is also given as a ratio to
ABMIL (``abmil``, the baseline, measured in the same run).

Positive bags get a fixed direction added to 1% of their tiles (the MIL setting: a few informative tiles).
Prints a table and writes JSON to benchmarks/results/bench_mil.json.
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


def _split(meta, seed=0):
    from pathkit.tl.splits import patient_folds

    tr, te = patient_folds(meta["patient_id"], meta["label"], folds=5, seed=seed)[0]
    return tr, te


def run_model(path, meta, model, epochs, threads, max_train, q):
    import torch

    torch.set_num_threads(threads)
    from sklearn.metrics import roc_auc_score

    import pathkit as pk

    cohort = _cohort(meta)
    tr, te = _split(meta)
    n_train = len(tr)
    if max_train:
        tr = tr[:max_train]
    train, test = cohort[tr].copy(), cohort[te].copy()
    est = pk.tl.MIL(model, "binary", epochs=epochs, patience=epochs, val_fraction=0, progress=False,
                    random_state=0, device="cpu")
    t0 = time.perf_counter()
    est.fit(path, train, label="label", use_rep="X")
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    est.predict(path, test)
    t_pred = time.perf_counter() - t0
    auroc = float(roc_auc_score(test.obs["label"] == "pos", test.obs[f"{model}_prob_pos"]))
    q.put({"fit_s": t_fit, "predict_s": t_pred, "cpu_s": _cpu_s(), "peak_rss_mb": _peak_rss_mb(), "auroc": auroc,
           "train_bags": len(tr), "test_bags": len(te), "torch_threads": torch.get_num_threads(),
           "epoch_s": t_fit / epochs * n_train / len(tr), "extrapolated": len(tr) < n_train,
           "full_train_bags": n_train})


def run_legacy(root, path, meta, epochs, threads, q):
    sys.path.insert(0, str(root))
    import torch

    torch.set_num_threads(threads)

    import pathkit as pk

    assert Path(pk.__file__).resolve().is_relative_to(Path(root).resolve()), pk.__file__
    cohort = _cohort(meta)
    t0 = time.perf_counter()
    res = pk.tl.train_abmil(path, cohort, label="label", task="binary", folds=5, epochs=epochs, patience=epochs,
                            progress=False, seed=0, device="cpu", n_bootstrap=0)
    wall = time.perf_counter() - t0
    per_fold = res.metrics.loc[list(range(5)), "seconds"].astype(float).tolist()
    q.put({"fit_predict_s_per_fold": float(np.mean(per_fold)), "wall_s": wall, "cpu_s": _cpu_s(),
           "peak_rss_mb": _peak_rss_mb(), "auroc": float(res.summary.loc["auroc", "value"]),
           "torch_threads": torch.get_num_threads()})


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
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--partial", nargs="*", default=[], metavar="MODEL=K",
                    help="train MODEL on the first K training bags only; its time per epoch is extrapolated")
    ap.add_argument("--models", nargs="+", default=["abmil", "clam_sb", "transmil", "dsmil", "mean", "max"])
    ap.add_argument("--threads", type=int, default=1, help="torch threads per measured process")
    ap.add_argument("--legacy", default=None, help="a checkout with pathkit/tl/abmil.py (today's ABMIL)")
    ap.add_argument("--workdir", default=None, help="where the synthetic .h5ad goes (default: a temp dir)")
    ap.add_argument("--reuse", action="store_true", help="reuse the .h5ad already in --workdir")
    args = ap.parse_args(argv)

    from importlib.metadata import version

    import sklearn
    import torch

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="pathkit_bench_mil_"))
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

    partial = {k: int(v) for k, v in (p.split("=") for p in args.partial)}
    rows = {}
    for m in args.models:
        rows[m] = _in_process(run_model, path, meta, m, args.epochs, args.threads, partial.get(m))
        print(f"{m} done: {rows[m]} (load average {os.getloadavg()[0]:.1f})", flush=True)
    legacy = _in_process(run_legacy, args.legacy, path, meta, args.epochs, args.threads) if args.legacy else None

    print(f"\nfit on {rows[args.models[0]]['train_bags']} bags ({args.epochs} epochs, batch 1 bag), predict "
          f"{rows[args.models[0]]['test_bags']} bags; CPU ({args.threads} torch threads, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f})")
    base = rows.get("abmil")
    hdr = (f"{'model':28s} {'fit s':>8s} {'s/epoch':>8s} {'x abmil':>8s} {'predict s':>10s} {'x abmil':>8s} "
           f"{'CPU s':>8s} {'peak RSS MB':>12s} {'x abmil':>8s} {'AUROC':>7s}")
    print(hdr)
    print("-" * len(hdr))
    for name, r in rows.items():
        if base:
            r["ratio_epoch"] = r["epoch_s"] / base["epoch_s"]
            r["ratio_predict"] = r["predict_s"] / base["predict_s"]
            r["ratio_rss"] = r["peak_rss_mb"] / base["peak_rss_mb"]
        star = "*" if r["extrapolated"] else " "
        print(f"{name:28s} {r['fit_s']:8.1f} {r['epoch_s']:7.1f}{star} {r.get('ratio_epoch', float('nan')):8.2f} "
              f"{r['predict_s']:10.1f} {r.get('ratio_predict', float('nan')):8.2f} {r['cpu_s']:8.0f} "
              f"{r['peak_rss_mb']:12.0f} {r.get('ratio_rss', float('nan')):8.2f} {r['auroc']:7.3f}")
    for name, r in rows.items():
        if r["extrapolated"]:
            print(f"* {name}: trained on {r['train_bags']} of {r['full_train_bags']} bags; s/epoch extrapolated")
    if legacy:
        print(f"{'today train_abmil (per fold)':28s} {legacy['fit_predict_s_per_fold']:19.1f} {legacy['cpu_s']:8.0f}"
              f" {legacy['peak_rss_mb']:12.0f} {legacy['auroc']:7.3f}")
    out = {"config": vars(args), "data_gb": size_gb, "results": rows, "legacy_train_abmil": legacy,
           "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": sys.version.split()[0],
                       "torch": torch.__version__, "anndata": version("anndata"), "sklearn": sklearn.__version__,
                       "load_average": os.getloadavg()},
           "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    res_dir = ROOT / "benchmarks" / "results"
    res_dir.mkdir(parents=True, exist_ok=True)
    tmp = res_dir / "bench_mil.json.tmp"
    tmp.write_text(json.dumps(out, indent=2))
    os.replace(tmp, res_dir / "bench_mil.json")
    print(f"\nwrote {res_dir / 'bench_mil.json'}")
    if not args.workdir:
        os.remove(path)


def _make_q(path, n_bags, n_tiles, dim, q):
    q.put(make_bags(path, n_bags, n_tiles, dim))


if __name__ == "__main__":
    main()
