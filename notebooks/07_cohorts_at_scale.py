# %% [markdown]
# # 07 · Cohorts at scale: resumable runs and Dask
#
# `pk.tl.embed_cohort` turns a list of slides into one cohort AnnData (one row per slide):
#
# - each slide is one task: read → tissue → tiles → tile embeddings (→ slide embedding), written atomically to
#   `<out_dir>/<slide_id>.h5ad`;
# - a slide that fails is **recorded** (`obs["status"] == "failed"`, `obs["error"]`) and the run goes on;
# - a re-run **skips** slides already done with the same settings (their file is checked), so an interrupted
#   run of 10,000 slides resumes where it stopped;
# - with a `dask.distributed.Client`, the same call spreads slides over workers: a `LocalCluster` here, a
#   `dask_jobqueue.SLURMCluster` (GPU jobs) on a cluster.

# %%
import pathkit as pk

# %% tags=["parameters"]
SLIDES = None                 # None: a few small synthetic slides; or a list of paths / a folder / a slide table
TILE_MODEL = "kaiko_vits16"   # ungated; gated: "gigapath_tile", "uni", ...
WEIGHTS = None                # None: the registry's source; or a local file ("random" for a dry run)
SLIDE_MODEL = "mean"          # or "gigapath_slide" with gigapath_tile features
N_WORKERS = 2
OUT = "pathkit_out"          # folder for the results

# %%
from pathlib import Path

out = Path(OUT)
out.mkdir(parents=True, exist_ok=True)

# %% [markdown]
# > **Data and weights.** With `SLIDES = None` the cohort is three small **synthetic** H&E-like slides
# > (`pk.datasets.synthetic_slide`: pyramidal Aperio-style TIFFs with known tissue geometry) plus one corrupt
# > file, embedded by `kaiko_vits16` (ungated weights, downloaded once). The documentation and CI run it
# > offline with `vit_tiny_test`, a 2-block ViT with **random weights**. Set `SLIDES` (and a gated model if
# > you have access) in the parameter cell for a real cohort; nothing else changes.

# %%
import time
import warnings
import pandas as pd
warnings.filterwarnings("ignore", message=".*[Rr]andom weights")   # this notebook uses them on purpose

demo = SLIDES is None
if demo:
    src = out / "slides"
    src.mkdir(exist_ok=True)
    SLIDES = [pk.datasets.synthetic_slide(src / f"synthetic-{i}.svs", width=1024, height=1024 + 512 * i, seed=i)
              for i in range(3)]
    bad = src / "corrupt-slide.svs"
    bad.write_bytes(b"this is not a TIFF file")   # e.g. a truncated download
    SLIDES = SLIDES + [bad]
[Path(p).name for p in SLIDES] if isinstance(SLIDES, list) else SLIDES

# %%
import shutil
run, drun = out / "cohort_run", out / "cohort_dask"
if demo:   # start the demo from scratch; with your own slides, earlier results are kept and reused
    for d in (run, drun):
        shutil.rmtree(d, ignore_errors=True)
t0 = time.perf_counter()
cohort = pk.tl.embed_cohort(SLIDES, run, tile_model=TILE_MODEL, weights=WEIGHTS, slide_model=SLIDE_MODEL,
                            progress=False)
print(f"first run: {time.perf_counter() - t0:.1f} s")
KEY = next(iter(cohort.obsm))   # X_mean_<tile model> (a slide encoder bound to its tile model: X_<slide model>)
cohort.obs[["status", "error", "n_tiles", "seconds"]]

# %% [markdown]
# The corrupt file is `failed`, with the reason; the others are `ok`. The cohort holds one slide embedding per
# row in `obsm["X_mean_<tile model>"]` (NaN for the failed slide; the key names the tile model, so several tile
# models can share one output folder), and `uns["cohort"]` counts the outcomes. Each slide's tile
# AnnData is on disk, next to `cohort_state.json` (what was done, with which settings) and `cohort.h5ad`:

# %%
print(cohort.uns["cohort"])
print("obsm:", {k: v.shape for k, v in cohort.obsm.items()})
sorted(p.name for p in run.iterdir())

# %% [markdown]
# ## Re-running: finished slides are skipped
#
# Run the same call again (as after a crash or a time-out on a cluster): slides already done with the same
# model and settings are `skipped` and read back; only the failed slide is tried again.

# %%
t0 = time.perf_counter()
again = pk.tl.embed_cohort(SLIDES, run, tile_model=TILE_MODEL, weights=WEIGHTS, slide_model=SLIDE_MODEL,
                           progress=False)
print(f"re-run: {time.perf_counter() - t0:.1f} s")
import numpy as np
ok = again.obs.status != "failed"
print("same slide embeddings:", np.allclose(again.obsm[KEY][ok.values], cohort.obsm[KEY][ok.values]))
again.obs[["status", "error", "n_tiles"]]

# %% [markdown]
# ## The same run on a Dask cluster
#
# A `LocalCluster` with worker **processes** stands in for a cluster. Each slide is one task; workers write
# their slide's file, the notebook process alone writes the state and the cohort. Results equal the in-process
# run. (Each worker imports torch and loads the model once, so its first slide takes longer than in the
# notebook process; on a real cohort that cost is paid once per worker.)

# %%
from dask.distributed import Client, LocalCluster

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    cluster = LocalCluster(n_workers=N_WORKERS, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
print(client)
t0 = time.perf_counter()
dcohort = pk.tl.embed_cohort(SLIDES, drun, tile_model=TILE_MODEL, weights=WEIGHTS,
                             slide_model=SLIDE_MODEL, client=client,
                             progress=False)
print(f"dask run: {time.perf_counter() - t0:.1f} s")
ok = dcohort.obs.status == "ok"
print("equal to the in-process run:",
      np.allclose(dcohort[ok.values].obsm[KEY], cohort[dcohort.obs_names[ok.values]].obsm[KEY], atol=1e-5))
client.close()
cluster.close()
dcohort.obs[["status", "error", "n_tiles", "seconds"]]

# %% [markdown]
# ## On an HPC cluster (SLURM)
#
# With `pip install dask-jobqueue`, each SLURM job is a Dask worker with one GPU; tasks that ask for the
# `GPU` resource only go to such workers. `out_dir` must be on a file system all nodes see. If the job is
# killed, run the same cell again: finished slides are skipped.
#
# ```python
# from dask_jobqueue import SLURMCluster
# from dask.distributed import Client
#
# cluster = SLURMCluster(
#     queue="gpu", cores=8, processes=1, memory="64GB", walltime="04:00:00",
#     job_extra_directives=["--gres=gpu:1"],
#     worker_extra_args=["--resources", "GPU=1"],        # tasks asking for {"GPU": 1} land here
#     job_script_prologue=["source ~/venvs/pathkit/bin/activate"],
# )
# cluster.scale(jobs=4)                                   # 4 GPU jobs
# client = Client(cluster)
# cohort = pk.tl.embed_cohort("data_manifests/tcga_coadread_dx.csv", "/scratch/out", slide_dir="/scratch/slides",
#                             tile_model="gigapath_tile", slide_model="gigapath_slide",
#                             embed_kwargs={"device": "cuda"}, client=client, resources={"GPU": 1})
# ```
# `print(cluster.job_script())` shows the batch script dask-jobqueue submits. The cohort then goes to
# `pk.link` (notebook 03), MIL, probes and RNA associations (04) and survival (05).
