"""Cohort throughput: the same embed_cohort run in-process, on a Dask LocalCluster with 1 worker and with 2
workers (synthetic slides, the 2-block test ViT on CPU), plus the time of a resumed run (all slides done).

    python benchmarks/bench_cohort.py [--slides 8] [--size 2048]

Prints a table (slides/s, tiles/s, ratio to in-process) and writes benchmarks/results/bench_cohort.json.
Every process (this one and each Dask worker) first embeds one small warm-up slide: the first use of
torch/timm/tiffslide in a process costs ~15 s on the CI machine, timed separately (cluster_startup_s) and not
counted in the throughput.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--slides", type=int, default=8)
    ap.add_argument("--size", type=int, default=2048, help="slide side in px at 0.5 mpp")
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    from distributed import Client, LocalCluster

    import pathkit as pk

    work = Path(tempfile.mkdtemp(prefix="bench_cohort_"))
    slides = [pk.datasets.synthetic_slide(work / f"slide{i}.svs", width=args.size, height=args.size, seed=i)
              for i in range(args.slides)]
    # default reader settings, as a user runs it: DataLoader workers in-process, readers in the worker
    # process under Dask (its workers are daemonic); float32 so every executor computes the same numbers
    kw = dict(tile_model="vit_tiny_test", embed_kwargs=dict(device="cpu", dtype="float32", batch_size=32),
              slide_model=None, progress=False)
    rows = []
    warm = pk.datasets.synthetic_slide(work / "warmup.svs", width=1024, height=1024, seed=99)

    def warm_up():
        # first use in a process imports and initialises torch/timm/tiffslide (~15 s here): not throughput
        from pathkit.tl.cohort import SlideJob, process_slide

        d = tempfile.mkdtemp()
        process_slide(SlideJob(slide_id="w", path=str(warm), out_path=f"{d}/w.h5ad", tile_model=kw["tile_model"],
                               embed_kwargs=kw["embed_kwargs"]))
        shutil.rmtree(d, ignore_errors=True)
        return os.getpid()

    def timed(name, **extra):
        out = work / name
        t = time.perf_counter()
        c = pk.tl.embed_cohort(slides, out, **kw, **extra)
        dt = time.perf_counter() - t
        assert (c.obs["status"] == "ok").all(), c.obs[["status", "error"]]
        n_tiles = int(c.obs["n_tiles"].sum())
        t = time.perf_counter()
        again = pk.tl.embed_cohort(slides, out, **kw, **extra)
        dt_resume = time.perf_counter() - t
        assert (again.obs["status"] == "skipped").all()
        rows.append(dict(run=name, seconds=dt, slides_per_s=len(slides) / dt, tiles=n_tiles,
                         tiles_per_s=n_tiles / dt, resume_seconds=dt_resume))

    t = time.perf_counter()
    warm_up()
    print(f"in-process warm-up {time.perf_counter() - t:.1f} s")
    timed("in-process")
    for n in (1, 2):
        t = time.perf_counter()
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        client = Client(cluster)
        client.run(warm_up)  # every worker warmed up before the clock starts
        startup = time.perf_counter() - t
        timed(f"dask-{n}-worker{'s' if n > 1 else ''}", client=client)
        rows[-1]["cluster_startup_s"] = startup
        client.close()
        cluster.close()

    base = rows[0]["seconds"]
    print(f"\n{len(slides)} synthetic slides {args.size}x{args.size} px, vit_tiny_test on CPU, "
          f"{os.cpu_count()} CPU cores")
    print(f"{'run':<16}{'seconds':>9}{'slides/s':>10}{'tiles/s':>9}{'x in-proc':>10}{'resume s':>10}")
    for r in rows:
        print(f"{r['run']:<16}{r['seconds']:>9.1f}{r['slides_per_s']:>10.2f}{r['tiles_per_s']:>9.1f}"
              f"{base / r['seconds']:>10.2f}{r['resume_seconds']:>10.2f}")
    res = dict(benchmark="cohort", date=time.strftime("%Y-%m-%d %H:%M:%S"), machine=platform.platform(),
               cpus=os.cpu_count(), n_slides=len(slides), size=args.size, pathkit=pk.__version__, rows=rows)
    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    (out / "bench_cohort.json").write_text(json.dumps(res, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
