"""torch -> ONNX, once per key, into the export cache (:mod:`pathkit.engines._cache`).

Two exporters, tried in this order: torch's TorchScript-based exporter (about a second for a small ViT,
20x faster than the other on a 2-core CPU) and, when it cannot express the graph (e.g. a position table
interpolated by a traced scale factor), the torch.export-based one (``dynamo=True``). Which one made the
file is recorded in the export's manifest; both are checked against torch on the first batch.
"""
from __future__ import annotations

import contextlib
import gc
import io
import shutil
import time
import warnings
from pathlib import Path

import torch

from .._io import malloc_trim
from . import _cache

ONNX_FILE = "model.onnx"
OPSET = 17


def _quiet():
    stack = contextlib.ExitStack()
    # the exporters print progress on stdout and warn about their own internals: keep notebooks clean
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


def _torchscript(encoder, x, path: Path) -> None:
    # grad mode stays on while tracing: under no_grad nn.MultiheadAttention takes its fused fast path
    # (aten::_native_multi_head_attention), which has no ONNX form
    with _quiet(), torch.enable_grad():
        torch.onnx.export(encoder, (x,), str(path), input_names=["pixels"], output_names=["features"],
                          dynamic_axes={"pixels": {0: "batch"}, "features": {0: "batch"}}, dynamo=False,
                          opset_version=OPSET)


def _torch_export(encoder, x, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=65536)
    with _quiet():
        # weights go to an external data file beside the graph (a ViT-g is over protobuf's 2 GB limit)
        torch.onnx.export(encoder, (x,), str(path), input_names=["pixels"], output_names=["features"],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=True, optimize=True)


EXPORTERS = {"torchscript": _torchscript, "torch.export": _torch_export}
DATA_FILE = ONNX_FILE + ".data"


def _externalise(path: Path) -> None:
    """Move the weights of an ONNX file into ``<file>.data`` beside it, at 64 KiB-aligned offsets: the
    engines then memory-map them instead of parsing them out of the protobuf into a second copy, so that a
    compile holds one copy of the weights beside the engine's own (repacked) one."""
    import onnx_ir as ir

    model = ir.load(str(path))
    ir.save(model, str(path), external_data=DATA_FILE, alignment=65536)


def _export(encoder, input_size: int, folder: Path) -> str:
    x = torch.zeros(2, 3, int(input_size), int(input_size))
    errors = []
    for name, fn in EXPORTERS.items():
        for f in folder.iterdir():  # leftovers of a failed attempt
            f.unlink()
        try:
            fn(encoder, x, folder / ONNX_FILE)
            if not (folder / DATA_FILE).exists():
                _externalise(folder / ONNX_FILE)
            return name
        except Exception as e:  # noqa: BLE001  (any failure of one exporter: try the next)
            errors.append(f"{name}: {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}")
    raise RuntimeError("no ONNX exporter could export the model (" + "; ".join(errors) + ")")


def ensure_export(encoder, spec, winfo: dict, input_size: int, loaded=None) -> tuple[Path, dict]:
    """The cached export folder of `encoder` (exported now when missing) and its manifest.

    `loaded` returns the encoder with its weights (by default `encoder` itself): called only when the
    export has to be made, so a released encoder (:mod:`._torch_source`) whose export is cached is not
    loaded again. ``meta["export_seconds"]`` is the time the export took when it was made (in this or an
    earlier session); ``meta["exported_now"]`` says whether this call made it."""
    try:
        import onnx  # noqa: F401  (the exporters need it; a clear error beats torch's)
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise ImportError(f"exporting to an engine needs onnx and onnxscript ({e}): "
                          'pip install "pathkit[engines]"') from e
    sha = _cache.weights_fingerprint(encoder, winfo)
    folder = _cache.cache_root() / _cache.export_key(spec, sha, input_size)
    meta = _cache.find_export(folder)
    if meta is not None:
        return folder, {**meta, "exported_now": False}
    encoder = loaded() if loaded is not None else encoder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _cache.private_tmp(folder)
    try:
        t0 = time.perf_counter()
        was_training = encoder.training
        encoder.eval()
        try:
            exporter = _export(encoder, input_size, tmp)
        finally:
            encoder.train(was_training)
        meta = {"model": spec.name, "weights_sha256": sha, "input_size": int(input_size), "exporter": exporter,
                "torch": torch.__version__, "export_seconds": round(time.perf_counter() - t0, 3),
                "format": _cache.FORMAT}
        meta = _cache.publish(tmp, folder, meta)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        # the exporter's traced graph and serialised copies of the weights are garbage now: free them before
        # the engine compiles its own copy
        gc.collect()
        malloc_trim()
    return folder, {**meta, "exported_now": True}
