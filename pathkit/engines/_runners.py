"""Engine runners: a cached ONNX export run by OpenVINO or ONNX Runtime on CPU, called like the torch
encoder (float32 batch [B, 3, S, S] in, float32 features [B, D] out)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

ENGINES = ("openvino", "onnxruntime")
_EXTRA = 'pip install "pathkit[engines]"'


def engine_version(engine: str) -> str | None:
    """The installed version of an engine's package; None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(engine)
    except metadata.PackageNotFoundError:
        return None


def require(engine: str) -> str:
    version = engine_version(engine)
    if version is None:
        raise ImportError(f"engine={engine!r} needs the {engine} package: {_EXTRA}")
    return version


class OpenVINORunner:
    """OpenVINO on CPU: one stream using `num_threads` threads; ``precision`` "f32" (exact) or "bf16"
    (only requested where the CPU computes bf16 natively)."""

    engine = "openvino"

    def __init__(self, onnx_path: Path, num_threads: int, precision: str = "f32"):
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": int(num_threads), "NUM_STREAMS": 1,
                  "INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY"}
        # compiled straight from the file: no ov.Model (a second copy of the weights) outlives the compile
        self.compiled = core.compile_model(str(onnx_path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.num_threads, self.precision = int(num_threads), precision

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        self.request.infer({0: arr})
        return torch.from_numpy(np.array(self.request.get_output_tensor(0).data, dtype=np.float32))


class OnnxRuntimeRunner:
    """ONNX Runtime's CPU provider with `num_threads` intra-op threads (float32 only: it has no bf16
    precision hint on CPU)."""

    engine = "onnxruntime"

    def __init__(self, onnx_path: Path, num_threads: int, precision: str = "f32"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.num_threads, self.precision = int(num_threads), "f32"

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: arr})[0].astype(np.float32, copy=False))


RUNNERS = {"openvino": OpenVINORunner, "onnxruntime": OnnxRuntimeRunner}
