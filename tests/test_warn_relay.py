"""Issue 29: warnings raised while a cohort's slides run in Dask workers named dask's frame (user_stacklevel
stops at the first frame outside pathkit) and stayed in the worker's log. Each work unit now collects its
warnings (pathkit._warn.capture, per thread) and embed_cohort gives them again at the user's call, naming
the slides."""
from __future__ import annotations

import threading
import warnings

import pytest

import pathkit as pk
from pathkit._warn import Relay, capture


def test_capture_keeps_each_threads_warnings_apart():
    """Two tasks of one multi-threaded worker: each collects only its own warnings; a thread that does not
    capture warns as usual (catch_warnings(record=True) would mix them or leave its recorder installed)."""
    barrier = threading.Barrier(3, timeout=60)
    got = {}

    def task(name):
        with capture() as caught:
            barrier.wait()
            for i in range(20):
                warnings.warn(f"{name} {i}", UserWarning)
            barrier.wait()
        got[name] = [w["message"] for w in caught]

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=task, args=(n,)) for n in ("a", "b")]
        for t in threads:
            t.start()
        barrier.wait()
        warnings.warn("driver", UserWarning)
        barrier.wait()
        for t in threads:
            t.join()
        warnings.warn("after", UserWarning)
    assert got == {n: [f"{n} {i}" for i in range(20)] for n in ("a", "b")}
    assert [str(w.message) for w in seen] == ["driver", "after"]


def test_relay_names_the_slides_and_the_callers_line():
    caught = {"s1": [{"category": "builtins:UserWarning", "message": "model has RANDOM weights"}],
              "s2": [{"category": "builtins:UserWarning", "message": "model has RANDOM weights"},
                     {"category": "pathkit.io._link:LinkWarning", "message": "2 ids not found"}],
              "s3": [{"category": "no_such_module:Gone", "message": "odd"}]}
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        r = Relay("slide")
        for sid, items in caught.items():
            r.add(sid, items)
        assert len(rec) == 3  # each new warning at once, with its first slide
        r.close()
    got = [(w.category, str(w.message), w.filename) for w in rec]
    assert got == [(UserWarning, "slide 's1': model has RANDOM weights", __file__),
                   (pk.io.LinkWarning, "slide 's2': 2 ids not found", __file__),
                   (UserWarning, "slide 's3': odd", __file__),
                   (UserWarning, "2 slides ('s1', 's2') gave the same warning: model has RANDOM weights", __file__)]


@pytest.fixture(scope="module")
def two_slides(tmp_path_factory):
    d = tmp_path_factory.mktemp("relay")
    box = [{"kind": "rect", "x0": 0, "y0": 0, "x1": 512, "y1": 512}]
    return [pk.datasets.synthetic_slide(d / f"s{i}.tiff", width=512, height=512, mpp=0.5, blobs=box, seed=i)
            for i in range(2)]


def test_random_weights_warning_of_dask_workers_reaches_the_callers_line(two_slides, tmp_path):
    distributed = pytest.importorskip("distributed")
    from pathkit.tl.embed import clear_model_cache

    clear_model_cache()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # one worker thread: two would race on the process-wide filters of the catch_warnings(ignore) blocks
        # in the pipeline (a thread restoring another's "ignore all" silences this process), a hazard of
        # processes=False only; capture itself keeps threads apart (test above)
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                           dashboard_address=None)
        client = distributed.Client(cluster)
    try:
        with warnings.catch_warnings(record=True) as rec:
            warnings.simplefilter("always")
            c = pk.tl.embed_cohort(two_slides, tmp_path / "out", tile_model="vit_tiny_test", weights="random",
                                   embed_kwargs={"device": "cpu", "num_workers": 0}, client=client,
                                   progress=False)
    finally:
        client.close()
        cluster.close()
    assert c.obs["status"].tolist() == ["ok", "ok"]
    random_w = [w for w in rec if "RANDOM weights" in str(w.message)]
    assert random_w, [str(w.message) for w in rec]
    for w in random_w:  # before: dask's frame (dask/_task_spec.py), once per worker thread
        assert w.filename == __file__, (w.filename, str(w.message))
    named = " ".join(str(w.message) for w in random_w)  # "slide 's0': ...", or "2 slides ('s0', 's1') ..."
    assert "'s0'" in named and "'s1'" in named, named


def test_in_process_cohort_relays_too(two_slides, tmp_path):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        pk.tl.embed_cohort(two_slides, tmp_path / "out", tile_model="vit_tiny_test", weights="random",
                           embed_kwargs={"device": "cpu", "num_workers": 0}, progress=False)
    random_w = [str(w.message) for w in rec if "RANDOM weights" in str(w.message)]
    # s1 says the same as s0 (a summary naming both) or, when s0 loaded the model, the cached encoder's words
    assert random_w[0].startswith("slide 's0': ") and "'s1'" in " ".join(random_w[1:]), random_w
    assert all(w.filename == __file__ for w in rec if "RANDOM weights" in str(w.message))
