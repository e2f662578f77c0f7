"""benchmarks/gpu_check.py --smoke: the GPU check's code paths at tiny sizes on CPU (its CUDA-only parts are
timing and memory reads)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_gpu_check_smoke(tmp_path, monkeypatch):
    from pathkit._device import dtype_name, resolve_dtype

    monkeypatch.setenv("PATHKIT_GPU_CHECK_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "check.json"
    res = _module().main(["--smoke", "--device", "cpu", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(res, default=str))
    assert res["slide"]["n_tiles"] == 36  # 6 x 6 tissue tiles of 256 px
    raw = res["raw_decode"]
    assert raw["eligible"] and raw["ok"] and raw["max_abs"] == 0  # CPU: torchvision decode == tifffile's
    assert res["data_path"]["raw_on"]["raw_tiles"] is True and res["data_path"]["raw_on"]["tiles"] == 36
    assert res["data_path"]["raw_off"]["raw_tiles"] is False
    want = dtype_name(resolve_dtype("auto", torch.device("cpu")))
    assert res["forward"]["dtype"] == want and res["forward"]["tiles_per_s"] > 0
    e2e = res["end_to_end"]
    assert e2e["tiles"] == 16 and e2e["finite"] and e2e["dtype"] == want
    assert res["longnet"]["tiles"] == 300 and res["longnet"]["seconds"] > 0
    assert res["peak_gpu_memory_gb"] is None  # CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_check_smoke_cuda(tmp_path, monkeypatch):
    monkeypatch.setenv("PATHKIT_GPU_CHECK_CACHE", str(tmp_path / "cache"))
    res = _module().main(["--smoke", "--device", "cuda", "--out", str(tmp_path / "c.json")])
    assert res["gpu"]["device"].startswith("cuda") and res["peak_gpu_memory_gb"] > 0
    assert res["end_to_end"]["finite"] and res["end_to_end"]["dtype"] == "bfloat16"
