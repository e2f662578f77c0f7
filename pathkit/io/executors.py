"""Executors: where the per-slide work units of a cohort run.

A work unit is a pure function ``fn(job) -> dict`` (see :func:`pathkit.tl.cohort.process_slide`); an
executor maps it over jobs and yields the results as they complete, in any order. The function catches its
own errors and returns them in the result; an executor turns an infrastructure failure (a worker that died,
a lost task) into a ``status="failed"`` result for that job too, so one bad slide never stops a cohort.

- :class:`InProcessExecutor` (default): one job after the other in this process.
- :class:`PoolExecutor`: any ``concurrent.futures`` executor (e.g. ``ProcessPoolExecutor``).
- :class:`DaskExecutor`: a ``dask.distributed.Client`` (LocalCluster, SLURMCluster...); one task per slide,
  optionally with worker resources (``{"GPU": 1}``) so GPU slides go to GPU workers.

On an HPC cluster (``pip install dask-jobqueue``), one GPU job per worker::

    from dask_jobqueue import SLURMCluster
    from dask.distributed import Client

    cluster = SLURMCluster(
        queue="gpu", cores=8, processes=1, memory="64GB", walltime="04:00:00",
        job_extra_directives=["--gres=gpu:1"],
        worker_extra_args=["--resources", "GPU=1"],   # tasks asking for {"GPU": 1} land here
        job_script_prologue=["source ~/venvs/pathkit/bin/activate"],
    )
    cluster.scale(jobs=4)                             # 4 GPUs
    client = Client(cluster)
    cohort = pk.tl.embed_cohort(manifest, "out/", slide_dir="slides/", tile_model="uni",
                                embed_kwargs={"device": "cuda"}, client=client, resources={"GPU": 1})

Results come back to the calling process, which alone writes ``cohort_state.json`` and ``cohort.h5ad``; each
slide's file is written by its worker (atomically), so ``out_dir`` must be on a shared file system.
"""
from __future__ import annotations

import traceback
from collections.abc import Callable, Iterable, Iterator


def _failed(job, exc: BaseException) -> dict:
    return {"slide_id": getattr(job, "slide_id", None), "path": getattr(job, "path", None),
            "status": "failed", "error": f"{type(exc).__name__}: {exc} (executor)", "n_tiles": 0}


def task_key(job) -> str:
    """The Dask key of a job. Two cohorts sharing a scheduler may hold slides with the same id but other
    files, or the same files written to another out_dir: the key names the slide file's identity (absolute
    path, size, mtime, ctime, inode, sha256 when known), the output file and every parameter, so equal keys
    mean equal work and the scheduler never hands one cohort the other's result."""
    import hashlib
    import json
    import os

    ident = {"path": os.path.abspath(str(getattr(job, "path", ""))),
             "out": os.path.abspath(str(getattr(job, "out_path", ""))), "stat": None}
    try:
        st = os.stat(ident["path"])
        ident["stat"] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    except OSError:
        pass
    for k in ("known_sha256", "expected_sha256", "params_hash", "tiling_hash", "slide_params_hash", "resume"):
        ident[k] = getattr(job, k, None)
    h = hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()[:24]
    return f"pathkit-slide-{getattr(job, 'slide_id', 'job')}-{h}"


class Executor:
    """Interface: ``map(fn, jobs)`` yields ``fn(job)`` results as they complete."""

    name = "base"

    def map(self, fn: Callable, jobs: Iterable) -> Iterator[dict]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class InProcessExecutor(Executor):
    """Run the jobs one after the other in this process (the default)."""

    name = "in-process"

    def map(self, fn, jobs):
        for job in jobs:
            try:
                yield fn(job)
            except Exception as exc:  # the work unit should catch its own errors; be safe anyway
                r = _failed(job, exc)
                r["traceback"] = traceback.format_exc()
                yield r


class PoolExecutor(Executor):
    """Wrap a ``concurrent.futures.Executor`` (thread or process pool)."""

    name = "pool"

    def __init__(self, pool, shutdown: bool = False):
        self.pool = pool
        self._shutdown = shutdown

    def map(self, fn, jobs):
        from concurrent.futures import as_completed

        futs = {self.pool.submit(fn, job): job for job in jobs}
        for fut in as_completed(futs):
            try:
                yield fut.result()
            except Exception as exc:  # e.g. BrokenProcessPool when a worker was killed
                yield _failed(futs[fut], exc)

    def close(self):
        if self._shutdown:
            self.pool.shutdown()


class DaskExecutor(Executor):
    """One Dask task per job on ``client``; ``resources`` (e.g. ``{"GPU": 1}``) restricts tasks to workers
    that declared them (``dask worker --resources GPU=1``). A task whose worker died is retried
    ``retries`` times by the scheduler, then reported as failed."""

    name = "dask"

    def __init__(self, client, resources: dict | None = None, retries: int = 1):
        self.client = client
        self.resources = resources
        self.retries = retries

    def map(self, fn, jobs):
        from distributed import as_completed

        jobs = list(jobs)
        futs = {}
        for job in jobs:
            key = task_key(job)
            f = self.client.submit(fn, job, key=key, pure=False, resources=self.resources,
                                   retries=self.retries)
            futs[f] = job
        for fut in as_completed(list(futs)):
            try:
                res = fut.result()
            except Exception as exc:
                res = _failed(futs[fut], exc)
            fut.release()
            yield res


def get_executor(executor=None, client=None, resources: dict | None = None) -> Executor:
    """Resolve ``embed_cohort``'s ``executor`` / ``client`` arguments to an :class:`Executor`.

    ``client`` (a dask Client) -> :class:`DaskExecutor`; ``executor`` may be an :class:`Executor`, a
    ``concurrent.futures.Executor``, ``"inprocess"`` or ``"dask"`` (needs ``client``); None -> in-process.
    """
    if isinstance(executor, Executor):
        return executor
    if client is not None:
        if executor not in (None, "dask"):
            raise ValueError("pass either client= (Dask) or executor=, not both")
        return DaskExecutor(client, resources=resources)
    if executor is None or executor in ("inprocess", "in-process", "local"):
        return InProcessExecutor()
    if executor == "dask":
        raise ValueError("executor='dask' needs client= (a dask.distributed.Client)")
    from concurrent.futures import Executor as _Futures

    if isinstance(executor, _Futures):
        return PoolExecutor(executor)
    raise ValueError(f"executor must be None, 'inprocess', an Executor or a concurrent.futures executor; "
                     f"got {executor!r}")
