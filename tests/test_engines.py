"""Inference engines (pathkit.engines): OpenVINO and ONNX Runtime against torch float32 on real tiles, per
model family of the registry, on small random-init variants of each entry (same classes and read-out,
reduced width and depth); the export cache; auto's choice and its fall-back to torch."""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings

import numpy as np
import pytest
import torch
from _small_models import CONCH_SMALL, PLIP_SMALL, QUILT_SMALL, NoisyRunner

import pathkit as pk
from pathkit.engines import _cache, _select, prepare_encoder
from pathkit.errors import EngineError
from pathkit.models import get_spec

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

MAX_ABS, MIN_COS = 1e-4, 0.99999
_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2}


def _small(name, input_size, kwargs=None, extra=None, replace_kwargs=False):
    spec = get_spec(name)
    kw = dict(kwargs or {}) if replace_kwargs else {**spec.kwargs, **(kwargs or {})}
    return dataclasses.replace(spec, name=f"small_{name}", kwargs=kw, n_params=None, embed_dim=0, weights=(),
                               input_size=input_size, extra={**spec.extra, **(extra or {})})


# family -> the registry entry it stands for, reduced
FAMILIES = {
    "vit (UNI, kaiko, Lunit)": lambda: _small("uni", 64, {"img_size": 64, **_VIT}),
    "dinov2 recipe (GigaPath ViT-g)": lambda: _small("gigapath_tile", 64, {"img_size": 64, **_VIT}),
    "dinov2 registers + SwiGLU (UNI2-h)": lambda: _small("uni2_h", 56, {"img_size": 56, **_VIT}),
    "hibou (reg4 dinov2, SwiGLU)": lambda: _small("hibou_b", 56, {"img_size": 56, **_VIT}),
    "virchow2 (cls + mean of patches)": lambda: _small("virchow2", 56, {"img_size": 56, **_VIT}),
    "beit (BEPH)": lambda: _small("beph", 64, {"img_size": 64, **_VIT}),
    "swin (CTransPath)": lambda: _small("ctranspath", 56, {"img_size": 56, "embed_dim": 32, "depths": (1, 1),
                                                           "num_heads": (2, 4)}),
    "resnet (resnet50_trunc)": lambda: _small("resnet50_trunc", 64),
    "hf ViTModel (Phikon)": lambda: _small("phikon", 64, {"model_class": "ViTModel", "config": {
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "image_size": 64, "patch_size": 16, "hidden_act": "gelu", "layer_norm_eps": 1e-12, "qkv_bias": True}}),
    "hf Dinov2Model (Phikon-v2)": lambda: _small("phikon_v2", 64, {"model_class": "Dinov2Model", "config": {
        "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 64, "patch_size": 16,
        "mlp_ratio": 4, "layer_norm_eps": 1e-6, "layerscale_value": 1e-5, "use_swiglu_ffn": False,
        "qkv_bias": True}}),
    "clip tower (CONCH)": lambda: _small("conch_vision_proj", 64, extra={"config": CONCH_SMALL}),
    "clip tower (CONCH v1.5)": lambda: _small("conch_v15", 64, {
        "img_size": 32, "patch_size": 16, "embed_dim": 64, "depth": 2, "num_heads": 2, "pool_dim": 48,
        "pool_heads": 8}, replace_kwargs=True),
    "clip tower (PLIP)": lambda: _small("plip_vision", 64, extra={"config": PLIP_SMALL}),
    "clip tower (QuiltNet)": lambda: _small("quiltnet_vision", 64, extra={"config": QUILT_SMALL}),
}


@pytest.fixture(scope="module")
def real_pixels(shared_data):
    """Four real H&E tiles (shared/data/patches), resized later to each model's input, normalised."""
    from PIL import Image

    files = sorted((shared_data / "patches").glob("tissue-*.png"))[:3]
    files += sorted((shared_data / "patches").glob("CRC-*.tif"))[:1]
    assert len(files) == 4, files
    return [torch.from_numpy(np.asarray(Image.open(f).convert("RGB"), dtype=np.uint8).copy()) for f in files]


def _batch(pixels, spec):
    s = spec.input_size
    x = torch.stack([torch.nn.functional.interpolate(p.permute(2, 0, 1)[None].float(), size=(s, s),
                                                     mode="bilinear", antialias=True)[0] for p in pixels]) / 255
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def _load(spec):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights on purpose
        torch.manual_seed(0)
        return pk.models.load_tile_encoder(spec, weights="random")


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHKIT_CACHE", str(tmp_path / "pathkit_cache"))
    _select.clear_runner_cache()


# CONCH v1.5 interpolates its position table by a traced scale: only the slower torch.export exporter takes it
SLOW = {"clip tower (CONCH v1.5)"}


@pytest.mark.parametrize("fam", [pytest.param(f, marks=pytest.mark.slow) if f in SLOW else f for f in FAMILIES])
def test_engine_matches_torch_float32_on_real_tiles(fam, real_pixels):
    spec = FAMILIES[fam]()
    enc, winfo = _load(spec)
    x = _batch(real_pixels, spec)
    with torch.inference_mode():
        ref = enc(x).double().numpy()
    assert ref.std() > 0  # a real, non-degenerate output
    for engine in ("openvino", "onnxruntime"):
        run, info = prepare_encoder(enc, spec, winfo, engine=engine, num_threads=1)
        out = run(x).double().numpy()
        err = float(np.abs(out - ref).max())
        cos = float(np.min((out * ref).sum(1) / np.linalg.norm(out, axis=1) / np.linalg.norm(ref, axis=1)))
        print(f"PARITY {fam} {engine} max_abs={err:.2e} cos={cos:.8f} export_s={info['export_seconds']}")
        assert info["engine"] == engine and out.shape == ref.shape
        assert err <= MAX_ABS and cos >= MIN_COS, (engine, err, cos)
        assert info["parity_max_abs_err"] <= MAX_ABS  # the check on the first batch ran and was recorded


# ------------------------------------------------------------------------------------- cache, auto, fall-back
def _tiny():
    spec = _small("uni", 32, {"img_size": 32, "embed_dim": 16, "depth": 1, "num_heads": 2})
    enc, winfo = _load(spec)
    return spec, enc, winfo


def test_export_is_made_once_and_reused_across_calls():
    spec, enc, winfo = _tiny()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    run1, info1 = prepare_encoder(enc, spec, winfo, engine="onnxruntime", num_threads=1)
    run1(x)
    folders = [p for p in _cache.cache_root().iterdir() if p.name.startswith("small_uni-")]
    assert len(folders) == 1
    meta = json.loads((folders[0] / "export.json").read_text())
    assert set(meta["files"]) >= {"model.onnx"} and meta["exporter"] == "torchscript"
    rec = json.loads((folders[0] / f"onnxruntime-{info1['engine_version']}.json").read_text())
    assert rec["parity_ok"] and rec["max_abs_err"] <= MAX_ABS
    mtime = (folders[0] / "model.onnx").stat().st_mtime_ns
    assert _select._RUNNER_CACHE
    from pathkit.tl.embed import clear_model_cache

    clear_model_cache()  # frees the compiled engine model too
    assert not _select._RUNNER_CACHE
    run2, info2 = prepare_encoder(enc, spec, winfo, engine="onnxruntime", num_threads=1)
    assert run2.checked  # parity already on record for this engine version: not checked again
    assert (folders[0] / "model.onnx").stat().st_mtime_ns == mtime  # not exported again
    assert info2["export_seconds"] == info1["export_seconds"]
    # other weights are another export
    enc2, _ = _load(spec)
    with torch.no_grad():
        enc2.net.blocks[0].mlp.fc1.weight.add_(0.01)
    prepare_encoder(enc2, spec, {}, engine="onnxruntime", num_threads=1)
    assert len([p for p in _cache.cache_root().iterdir() if p.name.startswith("small_uni-")]) == 2


def test_a_corrupted_export_is_made_again():
    spec, enc, winfo = _tiny()
    prepare_encoder(enc, spec, winfo, engine="onnxruntime", num_threads=1)
    (folder,) = [p for p in _cache.cache_root().iterdir() if p.name.startswith("small_uni-")]
    f = folder / "model.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    _select.clear_runner_cache()
    run, _ = prepare_encoder(enc, spec, winfo, engine="onnxruntime", num_threads=1)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        assert (run(x) - enc(x)).abs().max() <= MAX_ABS
    meta = json.loads((folder / "export.json").read_text())
    assert _cache.sha256_file(folder / "model.onnx") == meta["files"]["model.onnx"]


def test_concurrent_first_exports_keep_one_complete_copy(tmp_path):
    """Two processes export the same key at once: the first rename wins, the loser keeps the winner's files."""
    folder = tmp_path / "key"
    a, b = _cache.private_tmp(folder), _cache.private_tmp(folder)
    (a / "model.onnx").write_bytes(b"graph A")
    (b / "model.onnx").write_bytes(b"graph B")
    meta_a = _cache.publish(a, folder, {"who": "a"})
    meta_b = _cache.publish(b, folder, {"who": "b"})
    assert meta_a["who"] == meta_b["who"] == "a"
    assert (folder / "model.onnx").read_bytes() == b"graph A"
    assert sorted(os.listdir(tmp_path)) == ["key"]  # no temporary folder left behind
    assert _cache.find_export(folder)["who"] == "a"


def test_auto_falls_back_to_torch_when_parity_fails(monkeypatch):
    spec, enc, winfo = _tiny()
    monkeypatch.setitem(_select.RUNNERS, "openvino", NoisyRunner)
    x = torch.randn(5, 3, 32, 32)
    with torch.inference_mode():
        ref = enc(x)
    run, info = prepare_encoder(enc, spec, winfo, engine="auto", num_threads=1)
    assert info["engine"] == "openvino"
    with pytest.warns(RuntimeWarning, match="runs on torch.*differs from torch"), torch.inference_mode():
        out = run(x)
    assert torch.equal(out, ref)  # the whole batch on torch
    assert info["engine"] == "torch" and "differs" in info["engine_reason"]
    # on record: the next session does not try openvino again, and asking for it by name raises
    _select.clear_runner_cache()
    with pytest.warns(RuntimeWarning, match="failed the parity check earlier"):
        _, info2 = prepare_encoder(enc, spec, winfo, engine="auto", num_threads=1)
    assert info2["engine"] == "torch"
    with pytest.raises(EngineError, match="parity"):
        prepare_encoder(enc, spec, winfo, engine="openvino", num_threads=1)


class _Slow:
    """An exact engine (ONNX Runtime) that takes 50 ms longer per call than it needs."""

    calls = 0

    def __init__(self, path, threads, precision):
        import onnxruntime as ort

        type(self).calls += 1
        self.precision = precision
        self.s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def __call__(self, x):
        time.sleep(0.05)
        return torch.from_numpy(self.s.run(None, {"pixels": x.numpy()})[0])


def test_auto_keeps_torch_when_the_engine_is_slower_here(monkeypatch):
    spec, enc, winfo = _tiny()
    monkeypatch.setitem(_select.RUNNERS, "openvino", _Slow)
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ref = enc(x)
    run, info = prepare_encoder(enc, spec, winfo, engine="auto", num_threads=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # slower is a measured choice, not a failure: no warning
        out = run(x)
    assert torch.allclose(out, ref, atol=1e-5)
    assert info["engine"] == "torch" and info["engine_speedup"] < 0.5 and "ran at" in info["engine_reason"]
    # the next session reads the measurement and does not compile the engine at all
    _select.clear_runner_cache()
    before = _Slow.calls
    run2, info2 = prepare_encoder(enc, spec, winfo, engine="auto", num_threads=1)
    assert run2 is enc and info2["engine"] == "torch" and _Slow.calls == before
    # asked for by name, the engine runs whatever its speed
    run3, info3 = prepare_encoder(enc, spec, winfo, engine="openvino", num_threads=1)
    assert torch.allclose(run3(x), ref, atol=1e-5) and info3["engine"] == "openvino"
    # another CPU (or thread count) measures again
    run4, info4 = prepare_encoder(enc, spec, winfo, engine="auto", num_threads=2)
    assert info4["engine"] == "openvino"
    run4(x)
    assert info4["engine"] == "torch"


def test_auto_keeps_the_engine_when_it_is_faster(monkeypatch):
    spec, enc, winfo = _tiny()
    monkeypatch.setattr(_select, "AUTO_MIN_SPEEDUP", 0.0)  # any measured speed passes the rule
    run, info = prepare_encoder(enc, spec, winfo, engine="auto", num_threads=1)
    run(torch.randn(6, 3, 32, 32))
    assert info["engine"] == "openvino" and info["engine_speedup"] > 0
    assert "x torch on this CPU" in info["engine_reason"]
    _select.clear_runner_cache()
    _, info2 = prepare_encoder(enc, spec, winfo, engine="auto", num_threads=1)
    assert info2["engine"] == "openvino" and info2["engine_speedup"] == info["engine_speedup"]  # on record


def test_explicit_engine_that_differs_raises(monkeypatch):
    spec, enc, winfo = _tiny()
    monkeypatch.setitem(_select.RUNNERS, "openvino", NoisyRunner)
    run, _ = prepare_encoder(enc, spec, winfo, engine="openvino", num_threads=1)
    with pytest.raises(EngineError, match="differs from torch"):
        run(torch.randn(2, 3, 32, 32))


def test_export_failure_auto_uses_torch_explicit_raises(monkeypatch):
    from pathkit.engines import _export

    def broken(*a, **k):
        raise RuntimeError("unsupported operator aten::foo")

    monkeypatch.setattr(_export, "EXPORTERS", {"torchscript": broken})
    spec, enc, winfo = _tiny()
    with pytest.warns(RuntimeWarning, match="aten::foo"):
        run, info = prepare_encoder(enc, spec, winfo, engine="auto")
    assert run is enc and info["engine"] == "torch" and "aten::foo" in info["engine_reason"]
    with pytest.raises(EngineError, match="aten::foo"):
        prepare_encoder(enc, spec, winfo, engine="onnxruntime")
    assert not [p for p in _cache.cache_root().iterdir() if p.name.startswith("small_uni-")]  # nothing left


def test_auto_choice_device_and_threads(monkeypatch):
    spec, enc, winfo = _tiny()
    assert _select.family(get_spec("uni2_h")) == "vit" and _select.family(get_spec("ctranspath")) == "swin"
    assert _select.family(get_spec("beph")) == "beit" and _select.family(get_spec("plip_vision")) == "clip_tower"
    run, info = prepare_encoder(enc, spec, winfo, engine="auto", device="cuda")  # no GPU touched: torch kept
    assert run is enc and info["engine"] == "torch" and "cuda" in info["engine_reason"]
    with pytest.raises(ValueError, match="device='cpu'"):
        prepare_encoder(enc, spec, winfo, engine="openvino", device="cuda")
    monkeypatch.setattr(_select, "engine_version", lambda name: None)
    run, info = prepare_encoder(enc, spec, winfo, engine="auto")
    assert run is enc and "pathkit[engines]" in info["engine_reason"]
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert prepare_encoder(enc, spec, winfo, engine="torch")[1]["num_threads"] == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="engine="):
        prepare_encoder(enc, spec, winfo, engine="tensorrt")


def test_embed_tiles_engine_on_a_real_slide(shared_data):
    slide = pk.read_slide(shared_data / "slides" / "CMU-1-Small-Region.svs")
    tiles = pk.pp.tile(slide)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pk.tl.embed_tiles(tiles, slide, "vit_tiny_test", engine="torch", key_added="X_t", progress=False,
                          num_workers=0)
        pk.tl.embed_tiles(tiles, slide, "vit_tiny_test", key_added="X_a", progress=False, num_workers=0,
                          num_threads=1)
    info = tiles.uns["models"]["X_a"]
    assert info["num_threads"] == 1 and tiles.uns["models"]["X_t"]["engine"] == "torch"
    assert tiles.n_obs > 10
    err = np.abs(tiles.obsm["X_a"] - tiles.obsm["X_t"]).max()
    # auto timed OpenVINO against torch on this CPU and kept whichever its rule says
    if info["engine_speedup"] >= _select.AUTO_MIN_SPEEDUP:
        assert info["engine"] == "openvino" and info["dtype"] == "float32"
        assert info["engine_reason"].startswith("auto: openvino") and "x torch on this CPU" in info["engine_reason"]
        assert 0 < err <= MAX_ABS  # another runtime (not torch again), equal within float32 rounding
    else:
        assert info["engine"] == "torch" and "ran at" in info["engine_reason"]
        assert err <= MAX_ABS


def test_cli_passes_engine_and_threads_and_resume_ignores_them():
    from pathkit import cli
    from pathkit.tl import cohort

    args = cli.build_parser().parse_args(["embed", "a.svs", "--model", "uni", "--out", "o", "--engine",
                                          "onnxruntime", "--num-threads", "1"])
    kw = cli._cohort_args(args)["embed_kwargs"]
    assert kw["engine"] == "onnxruntime" and kw["num_threads"] == 1
    assert cli.build_parser().parse_args(["embed", "a.svs", "--model", "uni", "--out", "o"]).engine == "auto"
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["embed", "a.svs", "--model", "uni", "--out", "o", "--engine", "tvm"])
    assert {"engine", "num_threads"} <= cohort._NEUTRAL  # a cohort resumes across engines (parity-checked)


def test_torch_fallback_record_is_writable_to_h5ad(tmp_path):
    """The torch path records engine_version = torch.__version__, a TorchVersion (a str subclass) that
    write_h5ad refuses ("No method registered for writing TorchVersion"): uns must hold a plain str."""
    import anndata as ad
    import torch

    from pathkit._io import h5ad_safe

    a = ad.AnnData(np.zeros((2, 1), np.float32))
    a.uns["models"] = {"X_m": h5ad_safe({"engine": "torch", "engine_version": torch.__version__})}
    assert type(a.uns["models"]["X_m"]["engine_version"]) is str
    a.write_h5ad(tmp_path / "a.h5ad")
    assert ad.read_h5ad(tmp_path / "a.h5ad").uns["models"]["X_m"]["engine_version"] == str(torch.__version__)


def _embed_in_child(path):
    import warnings as w

    import pathkit as pk

    slide = pk.read_slide(path)
    tiles = pk.pp.tile(slide)
    with w.catch_warnings():
        w.simplefilter("ignore")
        pk.tl.embed_tiles(tiles, slide, "vit_tiny_test", key_added="X_c", progress=False, num_workers=0,
                          num_threads=1)
    return dict(tiles.uns["models"]["X_c"])


def test_a_process_forked_after_an_engine_ran_stays_on_torch(shared_data):
    """A notebook embeds tiles (auto: OpenVINO), then runs a cohort on a fork-started process pool: the child
    inherits OpenVINO's dead thread pool and hung for ever compiling the model. It now embeds on torch and says
    why; an explicit engine there raises."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    path = shared_data / "slides" / "CMU-1-Small-Region.svs"
    here = _embed_in_child(path)  # the engine runs in this process first (auto may then keep torch: timed)
    assert _select._STATE["engine_ran"] and "openvino" in here["engine_reason"], here
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork")) as pool:
        child = pool.submit(_embed_in_child, path).result(timeout=300)
    assert child["engine"] == "torch" and "forked" in child["engine_reason"], child
    assert not _select._STATE["forked_after_engine"]  # this process itself keeps its engine
