"""`trickster plan --gpu NAME`: a plan for a GPU that is not on this machine, from its datasheet
(train/device.py's DATASHEETS): its memory, the precision a run on it would use (by its compute
capability, as on the GPU itself), and a time from its peak FLOP/s at an assumed MFU. Without the
GPU nothing can be timed: that time is an assumption, and the plan says so."""

from __future__ import annotations

import re
from dataclasses import dataclass

from trickster.config import Config
from trickster.errors import UserError
from trickster.footprint import GiB
from trickster.train.device import DATASHEETS, Datasheet
from trickster.units import format_duration

# The MFU assumed when --mfu is not given: about what well-tuned training of models of a billion
# parameters reports (PaLM 46%, TinyLlama 56% on A100s, Llama 3 38-43% on H100s). Small models keep
# a GPU far less busy (docs/training.md assumes 10% for a 6M model): --mfu sets your own.
ASSUMED_MFU = (0.3, 0.5)


@dataclass(frozen=True)
class NamedGpu:
    """A GPU of the datasheet table with one of its memory sizes."""

    sheet: Datasheet
    memory_gb: int

    @property
    def name(self) -> str:
        """The table's name, with the memory where the GPU comes in several sizes ("A100 80GB")."""
        return self.sheet.name if len(self.sheet.memory_gb) == 1 else f"{self.sheet.name} {self.memory_gb}GB"

    @property
    def memory(self) -> tuple[int, str]:
        """Bytes (the datasheet's GB counted as GiB, as HBM's sizes are) and what they are."""
        return self.memory_gb * GiB, f"{self.name} datasheet memory"


def known_gpus() -> list[NamedGpu]:
    return [NamedGpu(sheet, size) for sheet in DATASHEETS for size in sheet.memory_gb]


def named_gpu(text: str) -> NamedGpu:
    """The GPU `--gpu text` names: "H100", "a100-80gb", "NVIDIA GeForce RTX 4090", "H100 SXM 80GB"."""
    wanted = _key(text)
    for gpu in known_gpus():
        aliases = {_key(gpu.name), _key(f"{gpu.name} {gpu.memory_gb}GB")}
        if wanted in aliases:
            return gpu
    names = ", ".join(gpu.name for gpu in known_gpus())
    raise UserError(
        f"--gpu {text!r} is not a GPU the plan knows; choose one of {names} (or plan on a GPU of "
        "this machine with --device cuda)"
    )


def _key(name: str) -> str:
    """What is left of a GPU's name once the ways of writing it are: the vendor and brand, SXM,
    case, spaces and hyphens ("NVIDIA H100-SXM5-80GB" and "h100 80gb" are both "h10080gb")."""
    words = re.sub(r"\b(nvidia|geforce|sxm\d?)\b", " ", name.lower())
    return re.sub(r"[^a-z0-9]", "", words)


@dataclass(frozen=True)
class AssumedRate:
    """FLOP/s per GPU taken as a peak at an assumed MFU: an assumption, not a measurement."""

    gpu: str
    peak: float  # FLOP/s
    peak_source: str
    mfu: tuple[float, float]  # (lowest, highest); the same twice when --mfu gives one

    def flops_per_sec(self, mfu: float) -> float:
        return self.peak * mfu


def assumed_rate(cfg: Config, gpu: NamedGpu, mfu: float | None = None) -> AssumedRate:
    """The rate a run of `cfg` (its dtype resolved) is assumed to reach on `gpu`: the datasheet's
    dense peak in its dtype (TF32 for float32), or device_config.peak_tflops when set, as MFU
    in training divides by (train/device.py)."""
    dtype = cfg.device.dtype
    if cfg.device.peak_tflops:
        peak, source = cfg.device.peak_tflops * 1e12, "device_config.peak_tflops"
    else:
        label = "TF32" if dtype == "float32" else dtype
        peak, source = gpu.sheet.tflops[dtype] * 1e12, f"{gpu.name} datasheet, dense {label}"
    return AssumedRate(gpu.name, peak, source, ASSUMED_MFU if mfu is None else (mfu, mfu))


def time_lines(
    rate: AssumedRate, flops_per_token: int, processes: int, budgets: list[tuple[str, int]], fits: bool
) -> list[str]:
    """The plan's time section for an assumed rate: each budget's time at the highest and the
    lowest MFU assumed, the processes assumed to scale linearly."""
    low, high = rate.mfu
    mfu = f"{low:.0%}" if low == high else f"{low:.0%} to {high:.0%}"
    given = "given by --mfu" if low == high else "--mfu F sets your own"
    speeds = dict.fromkeys(_tokens_per_sec(rate.flops_per_sec(m) / flops_per_token) for m in (low, high))
    lines = [
        f"time (assumed, not measured: --gpu {rate.gpu} times nothing):",
        f"  at an assumed MFU of {mfu} ({given}) of {rate.peak / 1e12:,.1f} TFLOP/s ({rate.peak_source})",
        f"  the full model trains {' to '.join(speeds)} tokens/s"
        + (f" per GPU, x {processes} GPUs (if it scales linearly)" if processes > 1 else ""),
    ]
    for label, tokens in budgets:
        seconds = [tokens * flops_per_token / (rate.flops_per_sec(m) * processes) for m in (high, low)]
        times = " to ".join(dict.fromkeys(format_duration(s) for s in seconds))
        lines.append(f"  {label:<44} {times:>22}")
    if not fits:
        lines.append("  (the full run does not fit as configured; see above)")
    return lines


def _tokens_per_sec(rate: float) -> str:
    return f"{rate:,.{0 if rate >= 10 else 2}f}"
