"""Which engine runs a tile encoder, and the wrapper that checks it against torch on the first batch."""
from __future__ import annotations

import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from .._device import cpu_flags, cpuinfo
from ..errors import EngineError
from . import _cache
from ._export import ONNX_FILE, ensure_export
from ._runners import ENGINES, RUNNERS, engine_version, require
from ._torch_source import TorchSource

CHOICES = ("auto", "torch", *ENGINES)
# engine="auto" on CPU, per model family: the engines to try, fastest first, as measured by
# benchmarks/bench_engines.py (docs/engines.md). Families not listed use "default".
AUTO_RULES: dict[str, tuple[str, ...]] = {
    "default": ("openvino", "onnxruntime"),
}
# float32 parity with torch on the first real batch (max abs error relative to the feature scale, cosine
# per tile); bf16 engines are held to what bf16 autocast reaches in torch
TOLERANCE = {"f32": (1e-4, 0.99999), "bf16": (None, 0.999)}
N_PARITY_TILES = 4
# engine="auto" keeps an engine only when it beat torch on this CPU by this factor, timed on the first batch
# (idle AVX2 EPYC, torch 2.14: ViT-S/B engines 0.9-1.12x torch, ViT-L and the ViT-g recipe 0.74-0.93x)
AUTO_MIN_SPEEDUP = 1.05
_PATHKIT_FAMILIES = {"ctranspath": "swin", "resnet50_trunc": "resnet", "conch_vision": "clip_tower",
                     "conch_vision_proj": "clip_tower", "conch_v15": "vit", "plip_vision": "clip_tower",
                     "quiltnet_vision": "clip_tower", "hf_vision": "hf_vit"}
_RUNNER_CACHE: dict = {}

# An engine's thread pools (OpenVINO's TBB, ONNX Runtime's) do not survive fork(): a process forked after one
# ran here (a ProcessPoolExecutor or a Dask worker started by fork from a notebook that embedded tiles) hangs
# for ever when it compiles or runs a model. Such a child stays on torch.
_STATE = {"engine_ran": False, "forked_after_engine": False}


def _after_fork_in_child() -> None:
    if _STATE["engine_ran"]:
        _STATE["forked_after_engine"] = True
        # never destroy the inherited compiled models: their destructors wait on threads the child lacks
        # (multiprocessing children leave with os._exit, so they are never finalised either)
        _INHERITED.extend(_RUNNER_CACHE.values())
        _RUNNER_CACHE.clear()


_INHERITED: list = []


os.register_at_fork(after_in_child=_after_fork_in_child)


def family(spec) -> str:
    """The model family of a registry entry, the key of ``AUTO_RULES`` (``"vit"``, ``"swin"``, ``"beit"``,
    ``"resnet"``, ``"clip_tower"``, ``"hf_vit"``, ...)."""
    arch = spec.arch
    if arch.startswith("pathkit:"):
        name = arch.split(":", 1)[1]
        return _PATHKIT_FAMILIES.get(name, name)
    for prefix, fam in (("beit", "beit"), ("swin", "swin"), ("resnet", "resnet"), ("vit_", "vit")):
        if arch.startswith(prefix):
            return fam
    return arch.split("_")[0]


def resolve_num_threads(num_threads) -> int:
    """An explicit `num_threads`, else torch's intra-op thread count (1 in a Dask worker, whose nanny sets
    OMP_NUM_THREADS=1, so workers do not oversubscribe the CPUs)."""
    return max(1, int(num_threads) if num_threads is not None else torch.get_num_threads())


class EngineEncoder:
    """An engine runner in the place of a torch tile encoder (made by :func:`prepare_encoder`).

    Callable like the torch encoder. The first call runs the first `N_PARITY_TILES` tiles through torch
    (float32), then releases the torch weights (when they can be reloaded), compiles the engine's model and
    runs the same tiles through it: so the torch weights and the compiled model are never in memory together.
    Outside tolerance, ``engine="auto"`` continues on torch (reloaded) with a one-line warning and an
    explicit engine raises :class:`~pathkit.errors.EngineError`. The outcome is recorded in the export
    folder, so later sessions skip the check (and never load the torch weights for it) or skip an engine
    that failed."""

    def __init__(self, source: TorchSource, runner, folder, info: dict, explicit: bool, fingerprint: str,
                 runner_key: tuple):
        self.source, self.runner, self.folder = source, runner, folder
        self.info, self.explicit, self.fingerprint, self.runner_key = info, explicit, fingerprint, runner_key
        self.on_torch = False
        record = _cache.read_record(folder, info["engine"], info["engine_version"])
        self.checked = record is not None
        # auto times the engine against torch once per CPU model and thread count (a shared cache serves
        # several kinds of nodes); an engine asked for by name runs whatever its speed
        self.timed = explicit or (record is not None and cpu_key(info["num_threads"]) in record.get("speed", {}))

    @property
    def torch_encoder(self):
        """The torch encoder, loaded again when its weights were released."""
        return self.source.get()

    def _compile(self):
        """The engine's compiled model, made once the torch weights are released (None after a fall-back)."""
        if self.runner is None:
            self.source.release(self.fingerprint)
            try:
                self.runner = _compiled(self.runner_key)
            except Exception as e:  # noqa: BLE001  (compiling an arbitrary network: any failure -> torch / error)
                msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
                self._fall_back(f"{self.info['engine']} cannot compile it ({msg})")
        return self.runner

    def _torch_reference(self, xs):
        """torch's float32 features of `xs` and, when auto has not timed this CPU yet, torch's best of two
        further (warm) runs."""
        best = float("inf")
        with torch.autocast("cpu", enabled=False), torch.inference_mode():
            encoder = self.torch_encoder
            ref = encoder(xs.float()).float()
            for _ in range(0 if self.timed else 2):
                t0 = time.perf_counter()
                encoder(xs.float())
                best = min(best, time.perf_counter() - t0)
        return ref, best

    def _time_engine(self, runner, xs, torch_s: float):
        """Keep the engine only when it is AUTO_MIN_SPEEDUP faster than torch here (best of two warm runs each;
        the torch weights are released by then, so the two never sit in memory together), on record."""
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            runner(xs)
            best = min(best, time.perf_counter() - t0)
        speedup = torch_s / max(best, 1e-9)
        record = _cache.read_record(self.folder, self.info["engine"], self.info["engine_version"]) or {}
        record.setdefault("speed", {})[cpu_key(self.info["num_threads"])] = {
            "speedup": speedup, "engine_s": best, "torch_s": torch_s, "tiles": len(xs)}
        _cache.write_record(self.folder, self.info["engine"], self.info["engine_version"], record)
        self.info["engine_speedup"] = speedup
        self.timed = True
        if speedup < AUTO_MIN_SPEEDUP:  # a measured choice, not a failure: recorded, no warning
            self._use_torch(slower_reason(self.info["engine"], speedup, len(xs), self.info["num_threads"]))
        else:
            self.info["engine_reason"] += f"; {speedup:.2f}x torch on this CPU"

    def _time(self, x):
        """Checked in an earlier session but not timed on this CPU / thread count: time both now."""
        xs = x[:min(N_PARITY_TILES, len(x))]
        _, torch_s = self._torch_reference(xs)
        runner = self._compile()
        if runner is not None:
            runner(xs)  # warm-up
            self._time_engine(runner, xs, torch_s)

    def _check(self, x):
        n = min(N_PARITY_TILES, len(x))
        ref, torch_s = self._torch_reference(x[:n])
        runner = self._compile()
        if runner is None:
            return
        out = runner(x[:n])
        ref64, out64 = ref.double().numpy(), out.double().numpy()
        err = float(np.abs(ref64 - out64).max())
        scale = max(1.0, float(np.abs(ref64).max()))
        cos = float(np.min((ref64 * out64).sum(1) / (np.linalg.norm(ref64, axis=1) * np.linalg.norm(out64, axis=1)
                                                     + 1e-30)))
        max_abs, min_cos = TOLERANCE[runner.precision]
        ok = bool(cos >= min_cos and (max_abs is None or err <= max_abs * scale))
        rec = {"parity_ok": ok, "max_abs_err": err, "feature_scale": scale, "min_cosine": cos, "tiles": n,
               "precision": runner.precision}
        _cache.write_record(self.folder, self.info["engine"], self.info["engine_version"], rec)
        self.info.update(parity_max_abs_err=err, parity_min_cosine=cos)
        self.checked = True
        if not ok:
            why = (f"{self.info['engine']} {self.info['engine_version']} differs from torch on the first "
                   f"{n} tiles (max abs err {err:.2e}, cosine {cos:.6f})")
            self._fall_back(why)
        elif not self.timed:
            self._time_engine(runner, x[:n], torch_s)  # the parity run warmed the engine

    def _fall_back(self, why: str):
        if self.explicit:
            raise EngineError(f"model {self.info['model']!r}: {why}; use engine='torch' (or 'auto')")
        warnings.warn(f"engine='auto': {self.info['model']} runs on torch: {why}", RuntimeWarning, stacklevel=4)
        self._use_torch(why)

    def _use_torch(self, why: str):
        self.runner, self.on_torch = None, True
        _RUNNER_CACHE.pop(self.runner_key, None)
        self.info.pop("engine_precision", None)
        self.info.pop("dtype", None)
        self.info.update(engine="torch", engine_version=str(torch.__version__), engine_reason=why)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.on_torch:
            if not self.checked:
                self._check(x)
            elif not self.timed:
                self._time(x)
            else:
                self._compile()
        if self.on_torch:
            return self.torch_encoder(x)
        return self.runner(x)


def _compiled(key: tuple):
    """The compiled model of `key` = (export folder, engine, threads, precision), kept between calls."""
    runner = _RUNNER_CACHE.get(key)
    if runner is None:
        _RUNNER_CACHE.clear()  # one compiled model at a time, as the torch encoder cache
        _STATE["engine_ran"] = True  # set before the runtime starts its threads
        folder, engine, threads, precision = key
        runner = RUNNERS[engine](Path(folder) / ONNX_FILE, threads, precision)
        from .._io import malloc_trim

        malloc_trim()  # the parsed ONNX graph and the engine's intermediate copies of the weights are freed
        _RUNNER_CACHE[key] = runner
    return runner


def _cpu_flags() -> set[str]:
    """The CPU's feature flags (:func:`pathkit._device.cpu_flags`; a seam the tests replace)."""
    return cpu_flags()


# x86 flags of native bf16 arithmetic, where OpenVINO's CPU plugin runs bf16 kernels (AVX512-BF16, AMX);
# elsewhere its bf16 hint would be emulated or refused, so the engine stays float32
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def engine_precision(engine: str, dtype) -> str:
    """``"bf16"`` when bfloat16 is asked for, the engine has a bf16 precision hint (OpenVINO) and the CPU
    computes bf16 natively (:data:`BF16_FLAGS`); else ``"f32"``."""
    if dtype != torch.bfloat16 or engine != "openvino":
        return "f32"
    return "bf16" if _cpu_flags() & BF16_FLAGS else "f32"


def cpu_key(threads: int) -> str:
    """The CPU model and thread count an engine's speed was measured on (the key of its record's ``speed``)."""
    name = cpuinfo().get("model name") or platform.processor() or platform.machine()
    return f"{name} | {threads} threads"


def slower_reason(engine: str, speedup: float, tiles: int, threads: int) -> str:
    return (f"auto: torch, {engine} ran at {speedup:.2f}x torch on this CPU ({tiles} tiles, {threads} threads; "
            f"auto keeps an engine from {AUTO_MIN_SPEEDUP:.2f}x)")


def _torch(source: TorchSource, info, why):
    info.update(engine="torch", engine_version=str(torch.__version__), engine_reason=why)
    return source.get(), info


def _pick_auto(spec) -> tuple[str | None, str]:
    fam = family(spec)
    order = AUTO_RULES.get(fam, AUTO_RULES["default"])
    for name in order:
        if engine_version(name) is not None:
            return name, f"auto: {name} for the {fam} family (docs/engines.md)"
    if not order:
        return None, f"auto: the {fam} family stays on torch (docs/engines.md)"
    return None, f"auto: no engine installed ({' or '.join(order)}: pip install \"pathkit[engines]\")"


def prepare_encoder(encoder, spec, winfo: dict, engine="auto", device="cpu", dtype=torch.float32,
                    num_threads=None, reload=None):
    """The callable that computes a tile encoder's features: `encoder` itself or an engine running its export.

    Parameters
    ----------
    encoder
        The torch tile encoder (weights loaded, on `device`; or released by an earlier engine call).
    spec
        Its registry entry (:class:`~pathkit.models.registry.ModelSpec`).
    winfo
        The weights info of :func:`~pathkit.models.load_tile_encoder` (its ``sha256`` keys the export cache;
        without one the parameters are hashed).
    engine
        ``"auto"``, ``"torch"``, ``"openvino"`` or ``"onnxruntime"`` (see :func:`pathkit.tl.embed_tiles`).
    device
        Where the pixels are: engines run on ``"cpu"`` only.
    dtype
        The compute dtype (:func:`pathkit._device.resolve_dtype`); bfloat16 becomes OpenVINO's bf16 hint
        where the CPU computes bf16 natively (:func:`engine_precision`), float32 elsewhere.
    num_threads
        Engine threads; None: ``torch.get_num_threads()``.
    reload
        A callable returning `encoder` loaded again. Given, an engine releases the torch weights once it has
        taken over (they move to the meta device in place) and torch is reloaded through it when needed again
        (a fall-back, a re-export); None: the torch encoder stays loaded.

    Returns
    -------
    tuple
        ``(callable, info)``. info holds ``engine``, ``engine_version``, ``engine_reason`` (why this engine),
        ``num_threads`` and, for an engine, ``engine_precision``, ``dtype``, ``export_seconds`` (first export,
        possibly in an earlier session) and, after the first batch, ``parity_max_abs_err`` and
        ``parity_min_cosine``.
    """
    if engine not in CHOICES:
        raise ValueError(f"engine={engine!r} is not one of {CHOICES}")
    device = torch.device(device)
    threads = resolve_num_threads(num_threads)
    info = {"model": spec.name, "num_threads": threads}
    source = TorchSource(encoder, reload)
    if engine == "torch":
        return _torch(source, info, "engine='torch'")
    explicit = engine != "auto"
    if device.type != "cpu":
        if explicit:
            raise ValueError(f"engine={engine!r} runs on the CPU; pass device='cpu' (on {device.type} the torch "
                             "path is used: engine='auto' or 'torch')")
        return _torch(source, info, f"auto: torch on {device.type}")
    if _STATE["forked_after_engine"]:
        why = ("this process was forked after an inference engine ran in its parent, and engines' thread pools "
               "do not survive fork")
        if explicit:
            raise EngineError(f"engine={engine!r}: {why}; use engine='torch' here, or start workers with the "
                              "'spawn' or 'forkserver' method")
        return _torch(source, info, f"auto: torch ({why})")
    if explicit:
        version, why = require(engine), f"engine={engine!r}"
    else:
        engine, why = _pick_auto(spec)
        if engine is None:
            return _torch(source, info, why)
        version = engine_version(engine)
    precision = engine_precision(engine, dtype)
    if dtype == torch.bfloat16 and precision == "f32":
        why += ("; float32: " + ("this CPU has no native bf16 (avx512_bf16 / amx_bf16)" if engine == "openvino"
                                 else f"{engine} has no bf16 precision hint on CPU"))
    info.update(engine=engine, engine_version=version, engine_reason=why, engine_precision=precision,
                dtype="bfloat16" if precision == "bf16" else "float32")
    try:
        folder, meta = ensure_export(encoder, spec, winfo, spec.input_size, loaded=source.get)
        record = _cache.read_record(folder, engine, version)
        if record is not None and not record.get("parity_ok", False):
            raise EngineError(f"{engine} {version} failed the parity check earlier (max abs err "
                              f"{record.get('max_abs_err', float('nan')):.2e}, cosine {record.get('min_cosine')})")
        speed = (record or {}).get("speed", {}).get(cpu_key(threads))
        if not explicit and speed is not None:
            info["engine_speedup"] = speed["speedup"]
            if speed["speedup"] < AUTO_MIN_SPEEDUP:  # measured slower here earlier: no compile, no memory
                info.pop("engine_precision", None)
                info.pop("dtype", None)
                return _torch(source, info, slower_reason(engine, speed["speedup"], speed["tiles"], threads))
            info["engine_reason"] = f"{why}; {speed['speedup']:.2f}x torch on this CPU"
    except ImportError:
        raise
    except Exception as e:  # export of an arbitrary network: any failure -> torch
        msg = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        if explicit:
            raise EngineError(f"model {spec.name!r} cannot run on {engine}: {msg}; use engine='torch'") from e
        warnings.warn(f"engine='auto': {spec.name} runs on torch: {engine} cannot run it ({msg})",
                      RuntimeWarning, stacklevel=3)
        info.pop("engine_precision", None)
        info.pop("dtype", None)
        return _torch(source, info, f"{engine} failed: {msg}")
    info["export_seconds"] = meta.get("export_seconds")
    key = (str(folder), engine, threads, precision)
    run = EngineEncoder(source, _RUNNER_CACHE.get(key), folder, info, explicit, meta["weights_sha256"], key)
    if run.checked and run.runner is not None:
        source.release(meta["weights_sha256"])  # compiled and checked: torch is not needed for this call
    return run, info


def clear_runner_cache() -> None:
    """Free the compiled engine model kept between calls (in a process forked after an engine ran, an inherited
    model is only forgotten: destroying it would wait on its parent's threads)."""
    if _STATE["forked_after_engine"]:
        _INHERITED.extend(_RUNNER_CACHE.values())
    _RUNNER_CACHE.clear()
