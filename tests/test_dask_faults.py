"""Issue 28: a real ``dask scheduler`` and ``dask worker`` started as processes on 127.0.0.1 (not a
LocalCluster), the worker in another working directory, two cohorts with the same slide ids but other files
sharing the scheduler, and the worker SIGKILLed in the middle of the run, then started again.

Truth: each slide embedded in this process with the same weights file (float32 on CPU: bit-reproducible).
Every slide of both cohorts must come out ``ok`` with exactly its own file's features. Measured: 170 s at a
load average of 17 (eight sessions sharing 2 cores); most of it is process start-up and torch imports."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pytest

import pathkit as pk

distributed = pytest.importorskip("distributed")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")]

N = 2
EMBED = {"device": "cpu", "dtype": "float32", "num_workers": 0, "batch_size": 8}


def _start(args, cwd, log):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _worker(sched_file, cwd, log):
    return _start(["distributed.cli.dask_worker", "--scheduler-file", str(sched_file), "--no-nanny",
                   "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "60"], cwd, log)


def _wait_for(cond, timeout, what):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(what)
        time.sleep(0.1)


@pytest.fixture
def cluster(tmp_path):
    sched_file = tmp_path / "scheduler.json"
    wdir = tmp_path / "worker_cwd"  # the worker runs elsewhere: relative paths would break there
    wdir.mkdir()
    log = open(tmp_path / "dask.log", "wb")  # noqa: SIM115 - closed below, after the processes
    sched = _start(["distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                    "--scheduler-file", str(sched_file)], tmp_path, log)
    procs = {"sched": sched, "worker": None}
    try:
        _wait_for(lambda: sched_file.exists() and sched_file.stat().st_size > 0, 40, "scheduler did not start")
        procs["worker"] = _worker(sched_file, wdir, log)
        procs["start_worker"] = lambda: _worker(sched_file, wdir, log)
        procs["file"] = sched_file
        yield procs
    finally:
        for p in (procs.get("worker"), procs.get("worker2"), sched):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        log.close()


def test_two_cohorts_share_a_real_scheduler_and_survive_a_killed_worker(cluster, tmp_path, monkeypatch):
    from distributed import Client
    from safetensors.torch import save_file

    enc = pk.models.build_tile_encoder("vit_tiny_test", device="cpu")
    weights = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in enc.net.state_dict().items()}, str(weights))
    # two cohorts: the same slide ids s0..s2, other images
    for name, base in (("A", 0), ("B", 10)):
        d = tmp_path / name / "slides"
        d.mkdir(parents=True)
        for i in range(N):
            pk.datasets.synthetic_slide(d / f"s{i}.svs", width=768, height=512, blobs="full", seed=base + i)
    truth = {}
    for name in ("A", "B"):
        for i in range(N):
            s = pk.read_slide(tmp_path / name / "slides" / f"s{i}.svs")
            t = pk.pp.tile(s)
            pk.tl.embed_tiles(t, s, "vit_tiny_test", weights=weights, progress=False, **EMBED)
            truth[name, f"s{i}"] = t.obsm["X_vit_tiny_test"]
    assert not np.array_equal(truth["A", "s0"], truth["B", "s0"])

    monkeypatch.chdir(tmp_path)  # relative paths from the driver's folder
    client = Client(scheduler_file=str(cluster["file"]), timeout=40)
    try:
        client.wait_for_workers(1, timeout=40)
        results, errors = {}, []

        def run(name):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    results[name] = pk.tl.embed_cohort(f"{name}/slides", f"{name}/out", tile_model="vit_tiny_test",
                                                       weights=str(weights.relative_to(tmp_path)), slide_model="mean",
                                                       embed_kwargs=EMBED, client=client, progress=False)
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                errors.append(e)

        threads = [threading.Thread(target=run, args=(n,)) for n in ("A", "B")]
        for th in threads:
            th.start()
        # SIGKILL the worker once the first slide is written, while the others are in flight
        _wait_for(lambda: errors or any(any((tmp_path / n / "out").glob("s*.h5ad")) for n in "AB"), 240,
                  "no slide was written")  # generous: the worker imports torch first
        done_at_kill = sum(len(list((tmp_path / n / "out").glob("s*.h5ad"))) for n in "AB")
        os.kill(cluster["worker"].pid, signal.SIGKILL)
        cluster["worker"].wait()
        cluster["worker2"] = cluster["start_worker"]()
        for th in threads:
            th.join(300)
        assert not errors, errors
    finally:
        client.close()
    assert done_at_kill < 2 * N  # the kill landed mid-run
    for name in ("A", "B"):
        c = results[name]
        assert c.obs["status"].eq("ok").all(), c.obs[["status", "error"]]
        for i in range(N):
            sid = f"s{i}"
            t = ad.read_h5ad(tmp_path / name / "out" / f"{sid}.h5ad")
            assert Path(t.uns["slide"]["path"]) == tmp_path / name / "slides" / f"{sid}.svs"
            np.testing.assert_array_equal(t.obsm["X_vit_tiny_test"], truth[name, sid])
            np.testing.assert_allclose(c.obsm["X_mean_vit_tiny_test"][i], truth[name, sid].mean(axis=0), rtol=1e-5)
    assert not list((tmp_path / "worker_cwd").rglob("*.h5ad"))  # nothing written in the worker's own folder
    state = json.loads((tmp_path / "A" / "out" / "cohort_state.json").read_text())
    assert {v["status"] for v in state["slides"].values()} == {"ok"}
