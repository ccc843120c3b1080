"""Which device a run uses, its autocast context, how fast the device can multiply matrices,
and what share of that a training run achieves (MFU).

MFU here is achieved FLOP/s (tokens/s x `model.flops_per_token`) over the *measured* matmul ceiling
of the run's device in the run's compute dtype: the median of timed square matmuls, measured once
per process. A vendor's datasheet peak is higher than any real kernel reaches (and unknown for most
CPUs), so a measured ceiling says more about what is left to gain on this machine.
`device_config.peak_tflops` replaces the measurement (e.g. 989 for an H100 SXM's dense bf16 peak).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import statistics
import sys
import time

import torch

from trickster.errors import UserError


@functools.cache
def keep_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 32 MiB for reuse instead of giving them back to the
    system; returns whether it could (Linux with glibc).

    By default glibc returns every freed block above its mmap threshold to the kernel at once, so
    each CPU training step page-faults its activations in afresh: about a thousand faults a step
    for a 4-layer, 128-wide model, which cost it about 7% of its step time on 2 CPU cores
    (PyTorch's CPU performance guide recommends jemalloc or tcmalloc for the same reason). The
    process then keeps its peak memory instead of shrinking between steps.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    return bool(libc.mallopt(m_mmap_threshold, 32 * 2**20) and libc.mallopt(m_trim_threshold, 2**30))


@functools.cache
def matmul_ceiling(device_type: str, dtype_name: str, device_index: int | None = None) -> float:
    """Median FLOP/s of square matmuls on this device and dtype (warm-up excluded)."""
    device = torch.device(device_type) if device_index is None else torch.device(device_type, device_index)
    dtype = getattr(torch, dtype_name)
    size = 8192 if device.type == "cuda" else 1024
    # a private generator: the run's random streams (dropout, sampling) must not move
    generator = torch.Generator(device).manual_seed(0)
    a = torch.randn(size, size, device=device, generator=generator).to(dtype)
    b = torch.randn(size, size, device=device, generator=generator).to(dtype)
    times = []
    for i in range(8):
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= 3:  # the first few runs pick kernels and warm caches
            times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times)


def peak_flops(device: torch.device, dtype_name: str, peak_tflops: float | None = None) -> float | None:
    """The FLOP/s that MFU divides by: the configured peak, or the measured matmul ceiling.

    float16 on a CPU has no fast matmul path to measure meaningfully, so MFU is left out there.
    """
    if peak_tflops:
        return peak_tflops * 1e12
    if device.type not in ("cpu", "cuda") or (device.type == "cpu" and dtype_name == "float16"):
        return None
    return matmul_ceiling(device.type, dtype_name, device.index)


def resolve_device(name: str, key: str = "device_config.device") -> torch.device:
    """`key` is what the user sets, named in the error: a config key or a command-line flag."""
    fix = f"{key} cpu" if key.startswith("--") else f"{key}=cpu"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{key} is cuda but no CUDA GPU is visible; set {fix}")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError(f"{key} is mps but MPS is not available; set {fix}")
    return torch.device(name)


def autocast_for(device: torch.device, dtype_name: str):
    if dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype_name))
