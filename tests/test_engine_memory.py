"""Engines free the torch weights once they have taken over (issue 27: peak RSS not above torch's), torch
comes back when it is needed again, and the bf16 precision hint is chosen from the CPU's flags."""
from __future__ import annotations

import gc
import warnings
import weakref

import numpy as np
import pytest
import torch
from _small_models import NoisyRunner

import pathkit as pk
import pathkit.models
from pathkit.engines import _select

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

MODEL = "vit_tiny_test"


@pytest.fixture(autouse=True)
def _fresh(tmp_path, monkeypatch):
    from pathkit.tl.embed import clear_model_cache

    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path / "pathkit_cache"))
    clear_model_cache()
    yield
    clear_model_cache()


@pytest.fixture()
def tracked_loads(monkeypatch):
    """Every tile encoder that embed_tiles loads gets weights whose memory is owned by numpy arrays, so that
    a weak reference to each array tells whether anything still holds that memory (a cache, a closure, the
    exporter's traced graph): the storage frees its array when the last tensor on it goes."""
    loads = []
    real = pathkit.models.load_tile_encoder

    def owned(t, refs):
        arr = t.detach().numpy().copy()
        refs.append(weakref.ref(arr))
        return torch.from_numpy(arr)

    def load(*a, **k):
        enc, winfo = real(*a, **k)
        refs = []
        for mod in enc.modules():
            for p in mod.parameters(recurse=False):
                p.data = owned(p, refs)
            for name, b in list(mod._buffers.items()):
                if b is not None:
                    mod._buffers[name] = owned(b, refs)
        loads.append(refs)
        return enc, winfo

    monkeypatch.setattr(pathkit.models, "load_tile_encoder", load)
    return loads


@pytest.fixture(scope="module")
def cmu1(shared_data):
    slide = pk.read_slide(shared_data / "slides" / "CMU-1-Small-Region.svs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiles = pk.pp.tile(slide)
    return slide, tiles[:6].copy()


def _embed(cmu1, key, **kw):
    slide, tiles = cmu1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # random weights on purpose
        pk.tl.embed_tiles(tiles, slide, MODEL, key_added=key, progress=False, num_workers=0, num_threads=1,
                          dtype="float32", **kw)
    return tiles.obsm[key], dict(tiles.uns["models"][key])


def _alive(refs) -> int:
    gc.collect()
    return sum(r() is not None for r in refs)


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_engine_frees_torch_weights_and_torch_comes_back(engine, cmu1, tracked_loads):
    ref, _ = _embed(cmu1, "X_torch", engine="torch")
    assert len(tracked_loads) == 1 and _alive(tracked_loads[0]) == len(tracked_loads[0]) > 10
    # first engine run: export, parity on the first tiles, compile; then no tensor of torch's is left
    out, info = _embed(cmu1, "X_eng", engine=engine)
    assert info["engine"] == engine and info["parity_max_abs_err"] <= 1e-4
    assert _alive(tracked_loads[0]) == 0, "the torch weights are still held after the engine took over"
    assert np.abs(out - ref).max() <= 1e-4
    # the next slide of a cohort: the compiled model is reused and torch is not loaded again
    out2, info2 = _embed(cmu1, "X_eng2", engine=engine)
    assert len(tracked_loads) == 1 and info2["engine"] == engine
    np.testing.assert_array_equal(out2, out)
    # torch again on the same device: reloaded (same weights), not a crash on the released module
    again, info3 = _embed(cmu1, "X_torch2", engine="torch")
    assert len(tracked_loads) == 2 and info3["engine"] == "torch"
    np.testing.assert_array_equal(again, ref)


def test_parity_failure_after_release_reloads_torch(cmu1, tracked_loads, monkeypatch):
    ref, _ = _embed(cmu1, "X_torch", engine="torch")
    monkeypatch.setitem(_select.RUNNERS, "openvino", NoisyRunner)
    with pytest.warns(RuntimeWarning, match="runs on torch.*differs from torch"):
        out, info = _embed(cmu1, "X_auto", engine="auto")
    assert info["engine"] == "torch" and "differs" in info["engine_reason"]
    assert len(tracked_loads) == 2  # released for the engine's compile, loaded again for the fall-back
    np.testing.assert_array_equal(out, ref)


def test_released_encoder_keeps_its_export_key():
    from pathkit.engines import _cache
    from pathkit.engines._torch_source import TorchSource, released

    spec = pathkit.models.get_spec(MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        enc, winfo = pathkit.models.load_tile_encoder(spec, weights="random")
    fp = _cache.weights_fingerprint(enc, winfo)
    src = TorchSource(enc, reload=None)
    src.release(fp)  # no reload: never released
    assert released(enc) is None and not any(p.is_meta for p in enc.parameters())
    src = TorchSource(enc, reload=lambda: None)
    src.release(fp)
    assert released(enc) == fp and all(p.is_meta for p in enc.parameters())
    assert _cache.weights_fingerprint(enc, winfo) == fp


# ------------------------------------------------------------------------------------------------ bf16 hint
@pytest.mark.parametrize("flags, engine, dtype, expected", [
    ({"avx2", "fma", "avx512f"}, "openvino", torch.bfloat16, "f32"),  # AVX2/AVX512 without bf16: emulated
    ({"avx2", "avx512f", "avx512_bf16"}, "openvino", torch.bfloat16, "bf16"),
    ({"avx2", "amx_tile", "amx_bf16"}, "openvino", torch.bfloat16, "bf16"),
    ({"avx2", "amx_bf16"}, "openvino", torch.float32, "f32"),  # float32 asked for: exact
    ({"avx2", "amx_bf16"}, "onnxruntime", torch.bfloat16, "f32"),  # no bf16 hint on CPU
    ({"fp", "asimd", "bf16"}, "openvino", torch.bfloat16, "f32"),  # Arm: no bf16 kernels in OpenVINO's CPU plugin
    (set(), "openvino", torch.bfloat16, "f32"),  # unreadable /proc/cpuinfo
])
def test_bf16_hint_only_with_native_bf16(flags, engine, dtype, expected, monkeypatch):
    monkeypatch.setattr(_select, "_cpu_flags", lambda: set(flags))
    assert _select.engine_precision(engine, dtype) == expected


def test_bf16_choice_is_recorded_like_dtype(monkeypatch):
    spec = pathkit.models.get_spec(MODEL)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc, winfo = pathkit.models.load_tile_encoder(spec, weights="random")
    monkeypatch.setattr(_select, "_cpu_flags", lambda: {"avx2", "amx_bf16"})
    _, info = _select.prepare_encoder(enc, spec, winfo, engine="openvino", dtype=torch.bfloat16, num_threads=1)
    assert info["engine_precision"] == "bf16" and info["dtype"] == "bfloat16"
    monkeypatch.setattr(_select, "_cpu_flags", lambda: {"avx2", "fma"})
    _, info = _select.prepare_encoder(enc, spec, winfo, engine="openvino", dtype=torch.bfloat16, num_threads=1)
    assert info["engine_precision"] == "f32" and info["dtype"] == "float32"
    assert "no native bf16" in info["engine_reason"]
