"""`trickster plan`: what a config costs before you train it.

Parameters and FLOPs per token (a LoRA step's, with training_config.lora) come from model/flops.py,
memory from a formula (footprint.py); the time is an estimate from a micro-benchmark measured on the
device (at most about 10 seconds, or skipped with a note; `--no-bench` skips it); the token budget
follows the compute-optimal rule of about 20 tokens per parameter (Hoffmann et al. 2022, "Chinchilla").
"""

from __future__ import annotations

import math
import re
import statistics
import time
from dataclasses import dataclass

import torch

from trickster.config import Config, load_config, preset_names
from trickster.errors import UserError
from trickster.footprint import (
    HEADROOM,
    GiB,
    Memory,
    fitting_batch,
    global_windows,
    memory_estimate,
    memory_limit,
    split_global_batch,
)
from trickster.model import lora
from trickster.model.flops import flops_per_token, parameter_breakdown
from trickster.model.transformer import Transformer
from trickster.model.vocab import assumed_vocab
from trickster.train.device import autocast_for, resolve_precision, set_matmul_precision, settings_restored
from trickster.train.optim import build_optimizer
from trickster.units import format_duration

TOKENS_PER_PARAMETER = 20  # compute-optimal training tokens per parameter (Chinchilla)
BENCH_SECONDS = 10.0  # the most the benchmark may take, model building included
CPU_COPY_BYTES = 2 * 1024**3  # a CPU benchmarks no copy whose training state is larger


@dataclass
class Benchmark:
    """What the micro-benchmark ran and measured."""

    layers: int
    batch_size: int
    seq_len: int
    steps: int
    seconds_per_step: float
    flops_per_token: int  # of the benchmarked copy

    @property
    def tokens_per_sec(self) -> float:
        return self.batch_size * self.seq_len / self.seconds_per_step

    @property
    def flops_per_sec(self) -> float:
        return self.tokens_per_sec * self.flops_per_token


class BenchSkipped(Exception):
    """The benchmark could not run within its time (the message says why, for the plan)."""


def benchmark(cfg: Config, device: torch.device, seconds: float = BENCH_SECONDS) -> Benchmark:
    """Time forward + backward + optimizer steps of a copy of the model on the device, in about
    `seconds` (model building included; up to half again when contention slows the last steps);
    raises BenchSkipped when even the smallest step is too slow for that, or when on a CPU the
    copy's training state alone passes CPU_COPY_BYTES.

    The copy keeps the width, heads, MLP, vocabulary, dtype, LoRA adapters and activation
    checkpointing (whose recompute costs a third more FLOPs than the plan counts), but has at most 2
    layers (float32 matmuls in TF32 on CUDA, as training runs them). Its smallest step (1 x 16
    tokens) is timed first; the micro-batch timed is then the largest of the run's context and batch
    (halved from the run's) that costs at most about 1.5e11 FLOPs per step on a CPU (2e13 on a GPU)
    and of which 4 steps fit the time left. Then timed steps until at least 3 (10 on a GPU) and one
    second have passed (at most 30): the median counts, so a moment of contention on a shared
    machine does not decide it. The plan assumes the full model trains at the FLOP rate the copy
    reaches: an estimate, pessimistic when the copy's batch is smaller than the run's.
    """
    deadline = time.perf_counter() + seconds
    bench_cfg = cfg.model_copy(deep=True)
    bench_cfg.model.num_layers = min(cfg.model.num_layers, 2)
    bench_cfg.device.enable_fsdp = False  # the copy runs in this one process
    # a LoRA copy holds gradients and AdamW state for its adapters only: 4 bytes per frozen weight
    # where full training holds 16
    copy = memory_estimate(bench_cfg, batch_size=1)  # the state alone: any batch will do
    state = copy.weights + copy.gradients + copy.optimizer
    if device.type == "cpu" and state > CPU_COPY_BYTES:
        copy_params = parameter_breakdown(bench_cfg.model).total
        raise BenchSkipped(
            f"a {bench_cfg.model.num_layers}-layer copy of this model has {copy_params:,} parameters "
            f"({_gib(state)} of weights, gradients and optimizer state): too big to time on a CPU in seconds"
        )
    with settings_restored():
        if cfg.device.threads:  # as training does
            torch.set_num_threads(cfg.device.threads)
        set_matmul_precision(device)
        return _timed_steps(cfg, bench_cfg, device, deadline)


def _timed_steps(cfg: Config, bench_cfg: Config, device: torch.device, deadline: float) -> Benchmark:
    grace = (deadline - time.perf_counter()) / 2
    on_gpu = device.type in ("cuda", "mps")
    flop_cap, min_steps = (2e13, 10) if on_gpu else (1.5e11, 3)
    model = Transformer(bench_cfg.model).to(device)
    if cfg.training.lora is not None:  # a LoRA step: frozen weights, only the adapters' gradients
        lora.apply_lora(model, cfg.training.lora)
    model.checkpoint_activations = cfg.device.activation_checkpointing  # its recompute, as training
    optimizer = build_optimizer(model, cfg.training, device)
    generator = torch.Generator().manual_seed(0)

    def step(batch: int, seq_len: int) -> float:
        x = torch.randint(0, bench_cfg.model.vocab_size, (batch, seq_len + 1), generator=generator).to(device)
        start = time.perf_counter()
        with autocast_for(device, cfg.device.dtype):
            _, loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()
        return time.perf_counter() - start

    def work(size: tuple[int, int]) -> float:
        return size[0] * size[1] * flops_per_token(bench_cfg.model, size[1], cfg.training.lora)

    sizes = _sizes(cfg.training.batch_size, cfg.seq_len)
    sizes = [size for size in sizes if work(size) <= flop_cap] or sizes[:1]
    try:
        # the smallest step, twice (the first also allocates and picks kernels): the faster of the
        # two is its cost, free of a moment of contention. No second when 3 more steps would not
        # fit even at half the first's cost (gpt2-small's Muon step on a CPU: 4 s before this)
        smallest = step(*sizes[0])
        if time.perf_counter() + 3 * smallest / 2 <= deadline:
            smallest = min(smallest, step(*sizes[0]))
        if time.perf_counter() + 3 * smallest > deadline:
            raise BenchSkipped(
                f"one step of a {bench_cfg.model.num_layers}-layer copy of the model takes "
                f"{smallest:.1f} s on {device}, too long to time here"
            )
        # the largest size of which 4 steps fit the time left, priced as the last step timed
        # scaled by FLOPs (an over-estimate from a small step, mostly fixed costs): priced again
        # from each larger step until no larger one fits
        size, last = sizes[0], smallest
        while True:
            left = deadline - time.perf_counter()
            fitting = [s for s in sizes if 4 * last * work(s) / work(size) <= left]
            bigger = max(fitting, key=work, default=size)
            if work(bigger) <= work(size):
                break
            size, last = bigger, step(*bigger)
        times, start = [last], time.perf_counter()
        # at least min_steps (a moment of contention must not decide), in at most half again the time
        while (
            len(times) < 30 and time.perf_counter() + times[-1] < deadline + (len(times) < min_steps) * grace
        ):
            if len(times) >= min_steps and time.perf_counter() - start >= 1.0:
                break
            times.append(step(*size))
    except torch.OutOfMemoryError:
        raise UserError(
            f"the benchmark copy of the model ({bench_cfg.model.num_layers} layers, batch {sizes[0][0]} x "
            f"{sizes[0][1]}) does not fit on {device}; lower training_config.batch_size or choose a "
            "smaller model"
        ) from None
    batch, seq_len = size
    fpt = flops_per_token(bench_cfg.model, seq_len, cfg.training.lora)
    timed = times[1:] if len(times) > 2 else times  # the first step at a new size picks kernels
    return Benchmark(bench_cfg.model.num_layers, batch, seq_len, len(timed), statistics.median(timed), fpt)


def _sizes(batch_size: int, seq_len: int) -> list[tuple[int, int]]:
    """Micro-batches from 1 x 16 tokens up to the run's: the context doubles first, then the batch."""
    sizes, batch, tokens = [], 1, min(16, seq_len)
    while True:
        sizes.append((batch, tokens))
        if tokens < seq_len:
            tokens = min(2 * tokens, seq_len)
        elif batch < batch_size:
            batch = min(2 * batch, batch_size)
        else:
            return sizes


@dataclass
class Plan:
    cfg: Config
    name: str  # what was planned: "preset nano" or the config file
    device: torch.device
    params: int
    flops_per_token: int
    memory: Memory
    device_bytes: int
    device_what: str
    run_tokens: int  # max_steps x tokens per step
    optimal_tokens: int
    tokens: int | None  # --tokens, if given
    bench: Benchmark | None
    advice: list[str]
    vocab_note: str = ""
    processes: int = 1  # training processes (GPUs) the run is planned for
    bench_note: str = "not measured"  # why there is no benchmark, when there is none

    @property
    def fits(self) -> bool:
        return self.memory.total <= HEADROOM * self.device_bytes

    def seconds(self, tokens: int) -> float | None:
        """Wall time for `tokens`, each process training its share at the benchmark's rate."""
        if self.bench is None:
            return None
        return tokens * self.flops_per_token / (self.bench.flops_per_sec * self.processes)


def make_plan(
    cfg: Config,
    device: torch.device,
    tokens: int | None = None,
    name: str = "",
    measure: bool = True,
    processes: int = 1,
) -> Plan:
    """`processes`: how many training processes (GPUs) share the run; FSDP shards over them,
    unless device_config.mesh_shape says otherwise."""
    cfg, vocab_note = assumed_vocab(resolve_precision(cfg, device))  # device_config.dtype/compile: auto
    if cfg.device.mesh_shape:
        processes = cfg.device.mesh_shape[0] * cfg.device.mesh_shape[1]
    device_bytes, what = memory_limit(cfg, device)
    if cfg.training.batch_size == "auto":  # the formula's choice here; training measures it
        cfg = cfg.model_copy(deep=True)
        fit = fitting_batch(cfg, HEADROOM * device_bytes, processes)
        t = cfg.training
        t.batch_size, t.gradient_accumulation_steps = split_global_batch(
            global_windows(cfg, processes), processes, fit
        )
    t = cfg.training
    params = parameter_breakdown(cfg.model).total
    plan = Plan(
        cfg=cfg,
        name=name,
        device=device,
        params=params,
        flops_per_token=flops_per_token(cfg.model, cfg.seq_len, t.lora),
        memory=memory_estimate(cfg, processes=processes),
        device_bytes=device_bytes,
        device_what=what,
        run_tokens=t.max_steps * t.batch_size * cfg.seq_len * t.gradient_accumulation_steps * processes,
        optimal_tokens=TOKENS_PER_PARAMETER * params,
        tokens=tokens,
        bench=None,
        advice=[],
        vocab_note=vocab_note,
        processes=processes,
        bench_note="not measured (--no-bench)",
    )
    plan.advice = _advice(plan)
    if measure:
        try:
            plan.bench = benchmark(cfg, device)
        except BenchSkipped as skipped:
            plan.bench_note = f"not measured: {skipped}"
    return plan


def _advice(plan: Plan) -> list[str]:
    """What to change when the run does not fit (empty when it does)."""
    cfg, mem, budget = plan.cfg, plan.memory, HEADROOM * plan.device_bytes
    if plan.fits:
        return []
    t = cfg.training
    if mem.state > budget:
        smaller = [
            name
            for name in _presets_by_size()
            if memory_estimate(_preset(name)).total <= budget and _size(name) < plan.params
        ]
        hint = f" such as preset {smaller[-1]}" if smaller else ""
        return [
            f"the weights, gradients and AdamW state alone need {_gib(mem.state)}, more than the "
            f"{_gib(budget)} usable: choose a smaller model{hint}, a device with more memory, or "
            f"{_sharding_hint(plan, budget)}"
        ]
    fits_batch = fitting_batch(cfg, budget, plan.processes)
    if fits_batch >= 1:
        accumulation = math.ceil(t.batch_size * t.gradient_accumulation_steps / fits_batch)
        advice = [
            f"lower the micro-batch: set training_config.batch_size={fits_batch} and "
            f"training_config.gradient_accumulation_steps={accumulation} "
            f"(about the same {t.batch_size * t.gradient_accumulation_steps * cfg.seq_len:,} tokens per step)"
        ]
    else:
        seq_len = cfg.seq_len
        while seq_len > 16 and memory_estimate(cfg, 1, seq_len, plan.processes).total > budget:
            seq_len //= 2
        advice = [
            f"even one sequence of {cfg.seq_len} tokens does not fit: set training_config.batch_size=1 "
            f"and training_config.seq_len={seq_len}"
        ]
    if cfg.device.dtype == "float32" and plan.device.type == "cuda":
        advice.append("device_config.dtype=bfloat16 roughly halves the activations")
    return advice


def _sharding_hint(plan: Plan, budget: float) -> str:
    """How many GPUs FSDP would need for this run's state to fit (same micro-batch)."""
    cfg = plan.cfg.model_copy(deep=True)
    cfg.device.enable_ddp, cfg.device.enable_fsdp, cfg.device.mesh_shape = False, True, None
    gpus = next((n for n in (2, 4, 8, 16, 32, 64) if memory_estimate(cfg, processes=n).total <= budget), None)
    if gpus is None:
        return "shard it over GPUs (device_config.enable_fsdp=true under torchrun)"
    return (
        f"shard it: device_config.enable_fsdp=true under torchrun over {gpus} such devices "
        f"(`trickster plan ... --processes {gpus}`)"
    )


def _preset(name: str) -> Config:
    return assumed_vocab(load_config(preset=name))[0]


def _size(name: str) -> int:
    return parameter_breakdown(_preset(name).model).total


def _presets_by_size() -> list[str]:
    return sorted(preset_names(), key=_size)


# --------------------------------------------------------------------------- output

TOKEN_SUFFIX = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_tokens(text: str) -> int:
    """5000000, 5M, 2.5B or 2e9 -> an integer number of tokens."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbgt]?)\s*", text.lower())
    tokens = float(match.group(1)) * TOKEN_SUFFIX.get(match.group(2), 1) if match else 0.0
    if not 1 <= tokens < math.inf:  # 1e400 reads as infinity
        raise UserError(
            f"--tokens must be a positive number of tokens such as 5000000, 5M or 2e9 (got {text!r})"
        )
    return int(tokens)


def format_plan(plan: Plan) -> str:
    cfg, m, t = plan.cfg, plan.cfg.model, plan.cfg.training
    lines = [
        f"plan for {plan.name} on {plan.device}"
        + (f", {plan.processes} processes ({_parallel(cfg)})" if plan.processes > 1 else ""),
        f"model: {m.shape()}{plan.vocab_note}",
        f"parameters: {plan.params:,}",
        f"training FLOPs per token (context {cfg.seq_len}): {plan.flops_per_token:,}",
        "",
        *_memory_lines(plan),
        "",
        "tokens:",
    ]
    per_step = t.batch_size * cfg.seq_len * t.gradient_accumulation_steps * plan.processes
    budgets = [
        (f"this config ({t.max_steps:,} steps x {per_step:,})", plan.run_tokens),
        (f"compute-optimal (~{TOKENS_PER_PARAMETER} per parameter)", plan.optimal_tokens),
    ]
    if plan.tokens:
        budgets.append(("--tokens", plan.tokens))
    for label, tokens in budgets:
        lines.append(f"  {label:<44} {tokens:>16,}  ({tokens / plan.params:,.1f} per parameter)")
    return "\n".join([*lines, "", *_time_lines(plan, budgets)])


def _parallel(cfg: Config) -> str:
    return "FSDP" if cfg.device.enable_fsdp else "data parallel"


def _memory_lines(plan: Plan) -> list[str]:
    cfg, t, mem = plan.cfg, plan.cfg.training, plan.memory
    where = "per process " if plan.processes > 1 or mem.shards > 1 else ""
    share = f", 1/{mem.shards}" if mem.shards > 1 else ""
    lines = [
        f"memory {where}for one step, micro-batch {t.batch_size} x {cfg.seq_len} tokens, {cfg.device.dtype} "
        "(formula in trickster/footprint.py):",
        f"  weights (float32{share}){'':<{14 - len(share)}} {_gib(mem.weights):>10}",
        f"  gradients (float32{share}){'':<{12 - len(share)}} {_gib(mem.gradients):>10}",
        f"  {_optimizer_label(t.optimizer, share):<31} {_gib(mem.optimizer):>10}",
    ]
    if mem.gathered:
        lines.append(f"  FSDP gathered weights, grads   {_gib(mem.gathered):>10}")
    if mem.autocast_copy:
        short = {"bfloat16": "bf16", "float16": "fp16"}[cfg.device.dtype]
        lines.append(f"  autocast weight copy ({short})    {_gib(mem.autocast_copy):>10}")
    recompute = " (checkpointed)" if cfg.device.activation_checkpointing else "               "
    lines += [
        f"  activations{recompute}    {_gib(mem.activations):>10}",
        f"  loss (a chunk of logits)       {_gib(mem.logits + mem.loss_gradient):>10}",
        f"  total                          {_gib(mem.total):>10}",
    ]
    usable = HEADROOM * plan.device_bytes
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(
        f"  {verdict}: {_gib(mem.total)} of {_gib(usable)} usable "
        f"({HEADROOM:.0%} of {_gib(plan.device_bytes)} {plan.device_what})"
    )
    return lines + [f"  to fit: {advice}" for advice in plan.advice]


def _time_lines(plan: Plan, budgets: list[tuple[str, int]]) -> list[str]:
    b, m = plan.bench, plan.cfg.model
    if b is None:
        return [f"time: {plan.bench_note}"]
    copy = "the model" if b.layers == m.num_layers else f"a {b.layers}-layer copy of the model"
    if plan.cfg.device.compile:
        copy += " (without torch.compile)"
    rate = b.flops_per_sec / plan.flops_per_token
    lines = [
        f"time (estimate): {copy}, batch {b.batch_size} x {b.seq_len}, {b.steps} timed training "
        f"steps on {plan.device}: median {b.seconds_per_step * 1000:,.1f} ms/step, "
        f"{b.flops_per_sec / 1e9:,.1f} GFLOP/s",
        f"  at that rate the full model trains {rate:,.{0 if rate >= 10 else 2}f} tokens/s"
        + (
            f" per process, x {plan.processes} processes (if it scales linearly)"
            if plan.processes > 1
            else ""
        ),
    ]
    lines += [f"  {label:<44} {format_duration(plan.seconds(tokens)):>16}" for label, tokens in budgets]
    if not plan.fits:
        lines.append("  (the full run does not fit as configured; see above)")
    return lines


def _optimizer_label(optimizer: str, share: str) -> str:
    """AdamW keeps two float32 moments per weight; Muon one momentum per block matrix (AdamW the rest)."""
    if optimizer == "muon":
        return f"Muon + AdamW state{share}"
    return f"AdamW state (2 x float32{share})"


def _gib(n: float) -> str:
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / 1024**2:.1f} MiB"
