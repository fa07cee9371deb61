"""Pick the device and the autocast dtype (bf16 only where the hardware multiplies bf16 natively), and tune
the CPU process for training."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import sys
from contextlib import AbstractContextManager

import torch

from neuratlas.errors import NeuratlasError


@functools.cache
def cpu_has_native_bf16() -> bool:
    """AMX-BF16 or AVX512-BF16 (x86), or BF16 on aarch64: where oneDNN runs bf16 matmuls faster than fp32."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in ("amx_bf16", "avx512_bf16", " bf16"))


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


DEVICE_HELP = "auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps"


def resolve_device(name: str = "auto", local_rank: int | None = None, option: str = "--trainer.device") -> torch.device:
    """``auto`` is CUDA, then Apple's MPS, then the CPU. ``local_rank`` (a data-parallel process's index on
    its machine) picks that process's GPU when the name gives none: ``cuda`` → ``cuda:LOCAL_RANK``, so every
    process of a torchrun job lands on its own GPU before anything is moved. ``option`` is how the user gave
    the name (``--device`` for the inference commands): a device this machine lacks is one line naming it."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise NeuratlasError(f"{option}: {name!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise NeuratlasError(f"{option} {name}: this PyTorch build sees no CUDA GPU; use cpu or auto")
        if device.index is None:
            device = torch.device("cuda", local_rank or 0)
        if device.index >= torch.cuda.device_count():
            raise NeuratlasError(f"{option} {name}: there are {torch.cuda.device_count()} CUDA devices")
    elif device.type == "mps" and not mps_available():
        raise NeuratlasError(f"{option} {name}: Apple's MPS is not available here; use cpu or auto")
    return device


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None means plain fp32). ``auto``: bf16 where the
    hardware multiplies it natively; on a CUDA GPU without bf16 (before Ampere), fp16 with a gradient scaler
    (:func:`grad_scaler`); fp32 otherwise."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_native_bf16() else None
    return None


def grad_scaler(device: torch.device, dtype: torch.dtype | None, sharded: bool = False) -> torch.amp.GradScaler | None:
    """fp16's loss scaler (fp16 gradients underflow without it); None for every other precision. Sharded
    (FSDP) training needs the scaler that agrees across processes on whether a step overflowed (each process
    sees only its shard of the gradients)."""
    if dtype != torch.float16:
        return None
    if sharded:
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

        return ShardedGradScaler(device.type)
    return torch.amp.GradScaler(device.type)


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Stop glibc from handing every large freed tensor back to the OS (and faulting it in again next step).

    glibc serves large allocations (above its mmap threshold) with fresh ``mmap`` pages and gives freed heap
    tops back (trim); a training step allocates and frees the same activation buffers every iteration, so
    the kernel zero-fills them again each time (a conv net's step on
    Fashion-MNIST spent a quarter of its wall time in the kernel). Raising both thresholds keeps freed
    blocks in the heap for reuse: 1.3× on that step. Process-wide and one-way; the trainer calls it unless
    ``trainer.keep_freed_memory`` is false. Returns whether it took effect (glibc on Linux only).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc (musl, macOS)
        return False
