"""Device and dtype: one rule for every model in pathkit (tile and slide encoders, CLIP towers, MIL).

``device="auto"`` picks cuda, then Apple's mps, then cpu. ``dtype="auto"`` picks bfloat16 where the hardware
computes it natively (CUDA, and CPUs with AVX512-BF16 or AMX, where bf16 autocast runs a ViT about twice as fast
as float32 at cosine 0.9999 to the float32 features) and float32 elsewhere; ``"float32"`` gives exact results.
"""
from __future__ import annotations

import functools
import os

import torch

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_device(device="auto") -> torch.device:
    """``"auto"`` (or None) -> cuda, then mps, then cpu; anything else is passed to :class:`torch.device`."""
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    from .errors import ParameterError

    hint = "use 'auto', 'cpu', 'cuda', 'cuda:<index>' or 'mps'"
    if isinstance(device, str) and device.strip().lower() in ("gpu", "cuda:gpu", "nvidia"):
        raise ParameterError(f"device {device!r} is not a torch device name: did you mean 'cuda'? ({hint})")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise ParameterError(f"device {device!r} is not a torch device ({hint}): {e}") from None
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ParameterError(f"device {device!r}: no CUDA GPU is usable here (torch.cuda.is_available() is "
                                 "False); use device='cpu', or 'auto' to take a GPU when there is one")
        if dev.index is not None and dev.index >= n:
            raise ParameterError(f"device {device!r}: this machine has {n} CUDA device(s) (cuda:0..cuda:{n - 1})")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ParameterError(f"device {device!r}: Apple's MPS is not available here; use 'cpu' or 'auto'")
    return dev


@functools.lru_cache(maxsize=1)
def cpuinfo() -> dict[str, str]:
    """The first value of each field of /proc/cpuinfo (read once per process); empty where unreadable."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep:
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def cpu_flags() -> set[str]:
    """The CPU's feature flags (x86 ``flags`` / Arm ``Features`` of /proc/cpuinfo); empty where unreadable."""
    info = cpuinfo()
    return set((info.get("flags") or info.get("Features") or "").split())


@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX; Arm BF16)."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(dtype="auto", device: torch.device | str = "cpu") -> torch.dtype:
    """The compute (autocast) dtype.

    ``"auto"`` (or None): bfloat16 on CUDA and on CPUs with native bf16 (:func:`cpu_has_native_bf16`),
    float32 elsewhere (mps included). A name (``"float32"``, ``"bf16"``, ``"fp16"``...) or a torch.dtype is
    taken as given.
    """
    device = torch.device(device)
    if dtype is None or dtype == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"dtype={dtype!r} is not 'auto', one of {sorted(_DTYPES)}, or a torch.dtype") from None


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (what goes into ``uns``)."""
    return str(dtype).replace("torch.", "")


def autocast(device: torch.device, dtype: torch.dtype):
    """An autocast context for `dtype` on `device` (a no-op for float32)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _one_thread_after_fork() -> None:
    # GNU OpenMP is not fork-safe: in a child forked from a process that already ran a parallel torch op
    # (a notebook that embedded a slide, then a fork-based ProcessPoolExecutor or multiprocessing.Pool), the
    # child's first parallel op waits forever on the parent's thread pool. One intra-op thread in forked
    # children avoids that, as PyTorch's own DataLoader workers do; spawn-based pools (Dask) are unaffected.
    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_one_thread_after_fork)
