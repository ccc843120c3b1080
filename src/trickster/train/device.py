"""Which device a run uses, in which precision, its autocast context, how fast the device can
multiply matrices, and what share of that a training run achieves (MFU).

MFU is achieved FLOP/s (tokens/s x `model.flops_per_token`) over a peak, chosen in this order:
1. `device_config.peak_tflops`, when set;
2. on a GPU of train/datasheets.py's table, its datasheet peak for dense matrices in the run's dtype
   (float32 runs use TF32 from Ampere on, which training turns on; plain FP32 before): the figure
   papers and the field report MFU against;
3. otherwise (CPUs, other GPUs, bfloat16 on a GPU without bfloat16 tensor cores) the *measured*
   matmul ceiling: the median of timed square matmuls in the run's dtype, measured once per
   process, and on a CPU again when a run seems to beat it (utilisation).
The measured ceiling is also kept as a second figure on GPUs: it says what a real kernel reaches
on this machine (on an H100 a good deal below the datasheet).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trickster.errors import UserError
from trickster.precision import compute_dtype_name, fast_gpu
from trickster.train.datasheets import find_datasheet


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
    """Median FLOP/s of square matmuls on this device and dtype (warm-up excluded), timed once."""
    return time_matmuls(device_type, dtype_name, device_index)


def time_matmuls(device_type: str, dtype_name: str, device_index: int | None = None) -> float:
    """matmul_ceiling's figure, timed now."""
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


def datasheet_flops(device_name: str, dtype_name: str) -> tuple[float, str] | None:
    """(FLOP/s, the table's name) for a GPU of train/datasheets.py with a peak in that dtype, else None."""
    sheet = find_datasheet(device_name)
    if sheet is None or dtype_name not in sheet.tflops:
        return None
    return sheet.tflops[dtype_name] * 1e12, sheet.name


@dataclass(frozen=True)
class Peak:
    """What MFU divides by, where that figure comes from, and the measured ceiling beside it."""

    flops: float | None  # per device; None: no MFU (float16 on a CPU)
    source: str  # "device_config.peak_tflops", "datasheet H100 bfloat16", "measured matmul"
    measured: float | None = None  # the measured matmul ceiling (None where not measured)


def mfu_peak(
    device: torch.device, dtype_name: str, peak_tflops: float | None = None, measure: bool = True
) -> Peak:
    """The peak for MFU (see the module docstring); `measure=False` skips the timed matmuls."""
    dtype_name = compute_dtype_name(dtype_name, device)
    measured = None
    # float16 on a CPU has no fast matmul path to measure meaningfully
    measurable = device.type == "cuda" or (device.type == "cpu" and dtype_name != "float16")
    if measure and measurable:
        measured = matmul_ceiling(device.type, dtype_name, device.index)
    if peak_tflops:
        return Peak(peak_tflops * 1e12, "device_config.peak_tflops", measured)
    if device.type == "cuda":
        found = datasheet_flops(torch.cuda.get_device_name(device), dtype_name)
        if found is not None:
            return Peak(found[0], f"datasheet {found[1]} {dtype_name}", measured)
    return Peak(measured, "measured matmul", measured)


def utilisation(
    peak: Peak, achieved: float, device: torch.device, dtype_name: str
) -> tuple[float | None, Peak]:
    """MFU: `achieved` FLOP/s per device over the peak; and the peak to use from now on. No run
    beats a measured ceiling: over 100% of one, it was timed while other programs held the cores
    (a busy 2-core machine logged 'MFU 169%'), so it is timed again and the larger figure kept.
    An MFU still over 100% (or over a configured peak) is not a real figure: None. Only a CPU times
    again: on a GPU the timing's two 8192 x 8192 matrices could take memory a full batch holds."""
    if not peak.flops:
        return None, peak
    if achieved > peak.flops and peak.source == "measured matmul" and device.type == "cpu":
        again = time_matmuls(device.type, compute_dtype_name(dtype_name, device), device.index)
        if again > peak.flops:
            peak = Peak(again, peak.source, again)
    mfu = achieved / peak.flops
    return (mfu if mfu <= 1 else None), peak


def resolve_device(name: str, key: str = "device_config.device", without_cuda: str = "") -> torch.device:
    """`key` is what the user sets, named in the error: a config key or a command-line flag;
    `without_cuda`: another way out the error offers when cuda is asked for and there is none."""
    fix = f"{key} cpu" if key.startswith("--") else f"{key}=cpu"
    fix += f", {without_cuda}" if without_cuda and name == "cuda" else ""
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


def resolve_precision(cfg, device: torch.device, capability: tuple[int, int] | None = None):
    """A copy of the Config with device_config.dtype and compile as the run uses them: `auto`
    (compile: empty) becomes bfloat16 and compile on a fast GPU (see fast_gpu, and its
    `capability`), float32 and eager elsewhere."""
    d = cfg.device
    if d.dtype != "auto" and d.compile is not None:
        return cfg
    cfg = cfg.model_copy(deep=True)
    cfg.device.dtype = compute_dtype_name(d.dtype, device, capability)
    if d.compile is None:
        cfg.device.compile = fast_gpu(device, capability)
    return cfg


def autocast_for(device: torch.device, dtype_name: str):
    dtype_name = compute_dtype_name(dtype_name, device)
    if dtype_name == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=getattr(torch, dtype_name))


def set_matmul_precision(device: torch.device) -> Callable[[], None]:
    """float32 matmuls in TF32 on CUDA (Ampere and later; ignored before); returns a function that
    puts the previous setting back. Nothing changes elsewhere.

    One API only: the per-backend `fp32_precision` where torch has it (2.9 and later), else the
    older `allow_tf32` flag; torch refuses to mix the two in one process. Only matmuls: the model
    has no convolutions.
    """
    if device.type != "cuda":
        return lambda: None
    matmul = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "tf32") if _has(matmul, "fp32_precision") else ("allow_tf32", True)
    before = getattr(matmul, name)
    setattr(matmul, name, value)
    return lambda: setattr(matmul, name, before)


def _has(obj, name: str) -> bool:
    try:
        getattr(obj, name)
    except (AttributeError, RuntimeError):
        return False
    return True


def apply_process_settings(threads: int | None, device: torch.device, seed: int) -> None:
    """What training sets for the whole process; `settings_restored` puts it back afterwards."""
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cpu":  # glibc's allocator tuning: kept for the process (there is no getter)
        keep_freed_memory()
    set_matmul_precision(device)  # TF32 on CUDA; settings_restored puts the flag back
    torch.manual_seed(seed)


@contextlib.contextmanager
def settings_restored():
    """Threads, the TF32 flag and every global RNG as they were, however the block ends: a library
    caller (or the next test) must not inherit a run's settings."""
    threads = torch.get_num_threads()
    matmul = torch.backends.cuda.matmul
    flag = "fp32_precision" if _has(matmul, "fp32_precision") else "allow_tf32"  # the API in use
    precision = getattr(matmul, flag)
    cpu_rng, py_rng, np_rng = torch.get_rng_state(), random.getstate(), np.random.get_state()
    cuda_rngs = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        setattr(matmul, flag, precision)
        torch.set_rng_state(cpu_rng)
        random.setstate(py_rng)
        np.random.set_state(np_rng)
        if cuda_rngs is not None:
            torch.cuda.set_rng_state_all(cuda_rngs)


def peak_memory_gib(device: torch.device) -> float | None:
    """The most memory the device held since the last `reset_peak_memory` (CUDA only)."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**30


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


# What torch raises when a tensor cannot be allocated: on a GPU torch.OutOfMemoryError, a type;
# elsewhere a plain RuntimeError, told apart by its text (the same in torch 2.11 and 2.13, checked by
# tests/test_memory.py): the CPU allocator's refusal, a size whose bytes overflow 64 bits, and a CUDA
# call other than the allocator's (creating the context on a full GPU) failing for want of memory
# (torch.AcceleratorError).
ALLOCATION_FAILURES = (
    "DefaultCPUAllocator: can't allocate memory",
    "Storage size calculation overflowed",
    "CUDA error: out of memory",
)


def allocation_failed(err: BaseException) -> bool:
    """Whether `err` is the device (or the size arithmetic) refusing to allocate a tensor."""
    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and any(text in str(err) for text in ALLOCATION_FAILURES)
