"""`trickster plan --gpu NAME`: a plan for a GPU that is not on this machine, from its datasheet
(train/datasheets.py): its memory as torch reports it on such a card, the precision a run on it
would use (by its compute capability, as on the GPU itself), and a time from its peak FLOP/s at an
assumed MFU. Without the GPU nothing can be timed: that time is an assumption, and the plan says so."""

from __future__ import annotations

import re
from dataclasses import dataclass

from trickster.config import Config
from trickster.errors import UserError
from trickster.train.datasheets import DATASHEETS, Datasheet
from trickster.units import format_duration

# The MFU assumed when --mfu is not given: about what well-tuned training of models of a billion
# parameters reports (PaLM 46%, TinyLlama 56% on A100s, Llama 3 38-43% on H100s). Small models keep
# a GPU far less busy (docs/training.md assumes 10% for a 6M model): --mfu sets your own.
ASSUMED_MFU = (0.3, 0.5)
MiB = 2**20


@dataclass(frozen=True)
class NamedGpu:
    """A GPU of the datasheet table with one of its memory sizes."""

    sheet: Datasheet
    memory_gb: int  # the size as the datasheet gives it

    @property
    def name(self) -> str:
        """The table's name, with the memory where the GPU comes in several sizes ("A100 80GB")."""
        return self.sheet.name if len(self.sheet.memory) == 1 else f"{self.sheet.name} {self.memory_gb}GB"

    @property
    def memory(self) -> tuple[int, str]:
        """Bytes, as torch reports them on such a card (less than the datasheet's size), and what
        they are."""
        return self.sheet.memory[self.memory_gb] * MiB, f"{self.name} memory, as torch reports it"


def known_gpus() -> list[NamedGpu]:
    return [NamedGpu(sheet, size) for sheet in DATASHEETS for size in sheet.memory]


def named_gpu(text: str) -> NamedGpu:
    """The GPU `--gpu text` names: "H100", "a100-80gb", "NVIDIA GeForce RTX 4090", "H100 SXM 80GB"."""
    wanted = _key(text)
    for gpu in known_gpus():
        written = [gpu.sheet.name, *gpu.sheet.also]
        aliases = {_key(f"{name} {gpu.memory_gb}GB") for name in written}
        if len(gpu.sheet.memory) == 1:  # else the size is part of the name
            aliases |= {_key(name) for name in written}
        if wanted in aliases:
            return gpu
    sizes = [
        gpu.name for gpu in known_gpus() if wanted in {_key(n) for n in (gpu.sheet.name, *gpu.sheet.also)}
    ]
    if sizes:  # a GPU that comes in several sizes, named without one
        raise UserError(
            f"--gpu {text!r} comes in {len(sizes)} memory sizes; choose one of {' or '.join(sizes)}"
        )
    names = ", ".join(gpu.name for gpu in known_gpus())
    raise UserError(
        f"--gpu {text!r} is not a GPU the plan knows; choose one of {names} (or plan on a GPU of "
        "this machine with --device cuda)"
    )


def _key(name: str) -> str:
    """What is left of a GPU's name once the ways of writing it are: the vendor and brand, SXM,
    case, spaces and hyphens ("NVIDIA H100-SXM5-80GB" and "h100 80gb" are both "h10080gb")."""
    words = re.sub(r"\b(nvidia|geforce|tesla|sxm\d?)\b", " ", name.lower())
    return re.sub(r"[^a-z0-9]", "", words)


@dataclass(frozen=True)
class AssumedRate:
    """FLOP/s per GPU taken as a peak at an assumed MFU: an assumption, not a measurement."""

    gpu: str
    peak: float  # FLOP/s
    peak_source: str
    mfu: tuple[float, float]  # (lowest, highest); the same twice when --mfu gives one
    hint: str = ""  # a faster precision the GPU has, where the run's does not use its tensor cores

    def flops_per_sec(self, mfu: float) -> float:
        return self.peak * mfu


def assumed_rate(cfg: Config, gpu: NamedGpu, mfu: float | None = None) -> AssumedRate | None:
    """The rate a run of `cfg` (its dtype resolved) is assumed to reach on `gpu`: the datasheet's
    dense peak in its dtype (float32: TF32 from Ampere on, plain FP32 before), or
    device_config.peak_tflops when set, as MFU in training divides by (train/device.py). None:
    the datasheet has no peak in that dtype (bfloat16 before Ampere: see unrated)."""
    dtype, sheet = cfg.device.dtype, gpu.sheet
    hint = ""
    if cfg.device.peak_tflops:
        peak, source = cfg.device.peak_tflops * 1e12, "device_config.peak_tflops"
    elif dtype in sheet.tflops:
        label = f"dense {dtype}"
        if dtype == "float32":
            label = "dense TF32" if sheet.has_tf32 else "FP32: no TF32 before Ampere"
        peak, source = sheet.tflops[dtype] * 1e12, f"{gpu.name} datasheet, {label}"
        if dtype == "float32" and not sheet.has_tf32 and "float16" in sheet.tflops:
            hint = (
                f"device_config.dtype=float16, with a GradScaler, would use its tensor cores: "
                f"{sheet.tflops['float16']:,.1f} TFLOP/s dense"
            )
    else:
        return None
    return AssumedRate(gpu.name, peak, source, ASSUMED_MFU if mfu is None else (mfu, mfu), hint)


def unrated(cfg: Config, gpu: NamedGpu) -> str:
    """Why a run of `cfg` on `gpu` has no assumed time (assumed_rate gave None), and what to set."""
    dtype, (major, minor) = cfg.device.dtype, gpu.sheet.capability
    return (
        f"not assumed: the {gpu.name} (compute capability {major}.{minor}) has no {dtype} tensor cores "
        f"and its datasheet no {dtype} peak (torch emulates {dtype} there, slowly); set "
        "device_config.dtype=float16 or float32, or device_config.peak_tflops"
    )


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
        *([f"  ({rate.hint})"] if rate.hint else []),
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
