"""`trickster plan`: what a config costs before you train it.

Parameters and FLOPs per token come from model/flops.py (parameter_breakdown, flops_per_token).
Memory is a formula (below); the time is an estimate from a micro-benchmark measured on the
device (at most about 10 seconds, or skipped with a note; `--no-bench` skips it); the token budget
follows the compute-optimal rule of about 20 tokens per parameter (Hoffmann et al. 2022,
"Chinchilla").

Memory for one training step on one process, in bytes (P parameters, micro-batch B x T tokens,
L layers, hidden d, MLP m, key/value width kv = num_kv_heads * head_dim, nh heads, vocabulary V,
N = the FSDP shard degree, 1 without FSDP):

- weights 4P/N, gradients 4P/N, AdamW state 8P/N (exp_avg and exp_avg_sq; with optimizer: muon,
  the block matrices Muon takes keep one momentum buffer, 4 bytes each): all float32,
  whatever device_config.dtype says (autocast computes in bf16/fp16; it keeps float32 weights).
  With bf16/fp16 autocast also caches a 2-byte copy of every matrix: + 2P (not under FSDP with
  bfloat16, whose gathered weights are already bfloat16).
- FSDP's gathered weights (2 bytes each with bfloat16, else 4): the root (embedding, final norm,
  output) and two blocks (the one computing, the next being gathered). With gradient
  accumulation the weights stay gathered between the micro-batches of a step and the gradients
  are kept whole in float32 until the last one: P x 2 (or 4) + 4P.
- activations saved for the backward pass, per token:
  float32:    L * (6d + 2kv + 4m + nh + 2) * 4
  bf16/fp16:  L * ((2d + nh + 2) * 4 + (4d + 2kv + 4m) * 2)   (RMSNorm keeps float32)
  with activation checkpointing only each block's input is kept, L * d * 4, plus one block's
  activations while it is recomputed;
  plus (2d + 1) * 4 + 8 for the final norm, the loss's gradient for it and the token ids, and,
  once per step, the loss's float32 gradient for the output matrix, V * d * 4.
  The float32 line matches, within 1%, the tensors autograd saves for this model on CPU (tested
  in tests/test_plan.py with saved-tensor hooks). The bf16/fp16 line assumes fused attention
  (flash / memory-efficient SDPA on a GPU) that keeps no T x T matrix; on CPU half precision
  keeps more.
- the loss's working memory: one chunk of float32 logits (model/transformer.py computes the loss
  a chunk of at most 2^25 logits at a time), about three tensors of that size.

Not counted: the allocator's cache and fragmentation, the CUDA context (about 0.5 GiB), the
temporary buffers of individual kernels and of the collectives; the plan asks for 10% headroom.
"""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from dataclasses import dataclass

import torch

from trickster.config import Config, load_config, preset_names
from trickster.errors import UserError
from trickster.model import transformer
from trickster.model.flops import flops_per_token, parameter_breakdown
from trickster.model.transformer import Transformer
from trickster.train.device import autocast_for, resolve_precision, set_matmul_precision
from trickster.train.optim import build_optimizer
from trickster.units import format_duration

TOKENS_PER_PARAMETER = 20  # compute-optimal training tokens per parameter (Chinchilla)
HEADROOM = 0.9  # use at most this fraction of the device's memory
BENCH_SECONDS = 10.0  # the most the benchmark may take, model building included
CPU_COPY_BYTES = 2 * 1024**3  # a CPU benchmarks no copy whose training state is larger
GiB = 1024**3


@dataclass
class Memory:
    weights: int
    gradients: int
    optimizer: int
    autocast_copy: int
    activations: int
    logits: int  # the loss's working memory: one chunk of float32 logits
    gathered: int = 0  # FSDP: weights gathered for computing, and whole gradients between micro-batches
    shards: int = 1  # the FSDP shard degree the state is divided by
    loss_gradient: int = 0  # the loss's float32 gradient for the output matrix, once per step

    @property
    def state(self) -> int:
        """What does not depend on the batch."""
        fixed = self.weights + self.gradients + self.optimizer + self.autocast_copy + self.gathered
        return fixed + self.loss_gradient

    @property
    def total(self) -> int:
        return self.state + self.activations + self.logits


def activation_bytes_per_token(cfg: Config) -> int:
    """Bytes of activations saved for the backward pass per token of the micro-batch (formula above)."""
    m = cfg.model
    d, L, nh = m.hidden_dim, m.num_layers, m.num_heads
    kv = (m.num_kv_heads or m.num_heads) * (d // nh)
    if cfg.device.dtype in ("float32", "auto"):
        per_layer = (6 * d + 2 * kv + 4 * m.mlp_dim + nh + 2) * 4
    else:
        per_layer = (2 * d + nh + 2) * 4 + (4 * d + 2 * kv + 4 * m.mlp_dim) * 2
    blocks = L * d * 4 + per_layer if cfg.device.activation_checkpointing else L * per_layer
    return blocks + (2 * d + 1) * 4 + 8


def activation_bytes(cfg: Config, tokens: int) -> int:
    """Activations of a micro-batch of `tokens`, with the loss's gradient for the output matrix."""
    return tokens * activation_bytes_per_token(cfg) + cfg.model.vocab_size * cfg.model.hidden_dim * 4


def shard_degree(cfg: Config, processes: int) -> int:
    """Over how many processes FSDP shards the model state (1 without FSDP)."""
    if not cfg.device.enable_fsdp:
        return 1
    return cfg.device.mesh_shape[1] if cfg.device.mesh_shape else processes


def memory_estimate(
    cfg: Config, batch_size: int | None = None, seq_len: int | None = None, processes: int = 1
) -> Memory:
    """Bytes for one training step on one process at cfg's micro-batch (or the one given)."""
    b = parameter_breakdown(cfg.model)
    P, shards = b.total, shard_degree(cfg, processes)
    muon = 0  # the block matrices: everything in the blocks but their two norm weights
    if cfg.training.optimizer == "muon":
        muon = b.blocks - 2 * cfg.model.hidden_dim * cfg.model.num_layers
    tokens = (batch_size or cfg.training.batch_size) * (seq_len or cfg.seq_len)
    half = cfg.device.dtype in ("bfloat16", "float16")
    gathered, autocast_copy = 0, 2 * P if half else 0
    if cfg.device.enable_fsdp:
        width = 2 if cfg.device.dtype == "bfloat16" else 4  # the MixedPrecisionPolicy's weights
        working = b.embedding + b.output + b.final_norm + 2 * b.per_block
        if cfg.training.gradient_accumulation_steps > 1:
            gathered = P * width + 4 * P
        else:
            gathered = min(working, P) * width
        autocast_copy = 2 * min(working, P) if half and width == 4 else 0
    chunk = min(tokens, max(1, transformer.LOSS_CHUNK_ELEMENTS // cfg.model.vocab_size))
    return Memory(
        weights=4 * P // shards,
        gradients=4 * P // shards,
        optimizer=(8 * (P - muon) + 4 * muon) // shards,
        autocast_copy=autocast_copy,
        activations=tokens * activation_bytes_per_token(cfg),  # no T x T term (fused attention)
        logits=3 * chunk * cfg.model.vocab_size * 4,
        gathered=gathered,
        shards=shards,
        loss_gradient=activation_bytes(cfg, 0),
    )


def fitting_batch(cfg: Config, budget: float) -> int:
    """The largest micro-batch whose step fits in `budget` bytes by the formula (0: not even one)."""
    mem = memory_estimate(cfg, batch_size=1)
    return max(0, int((budget - mem.state) // (mem.activations + mem.logits)))


def global_windows(cfg: Config, world_size: int = 1) -> int:
    """batch_size: auto's target, windows per optimizer step over all processes (a multiple of them)."""
    t = cfg.training
    if t.global_batch is None:
        return max(1, round(t.global_batch_tokens / cfg.seq_len / world_size)) * world_size
    if t.global_batch % world_size:
        raise UserError(
            f"training_config.global_batch ({t.global_batch}) must be a multiple of the "
            f"{world_size} processes; choose another global_batch"
        )
    return t.global_batch


def split_global_batch(windows: int, world_size: int, fit: int) -> tuple[int, int]:
    """(micro-batch <= fit, accumulation) whose product with world_size is `windows`: the fewest
    accumulation steps that divide each process's share exactly, up to twice the fewest that
    could do; otherwise the fewest, and the global batch rounds up by less than one micro-batch
    per step."""
    share = windows // world_size
    fewest = math.ceil(share / max(fit, 1))
    exact = next((a for a in range(fewest, 2 * fewest + 1) if share % a == 0), None)
    accumulation = exact or fewest
    return math.ceil(share / accumulation), accumulation


def memory_limit(cfg: Config, device: torch.device) -> tuple[int, str]:
    """device_config.memory_gib in bytes if set, else the device's memory; and what it is."""
    if cfg.device.memory_gib is not None:
        return int(cfg.device.memory_gib * GiB), "device_config.memory_gib"
    return device_memory(device)


def device_memory(device: torch.device) -> tuple[int, str]:
    """Total memory of the device in bytes, and what it is."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"GPU memory ({props.name})"
    if device.type == "mps":
        return torch.mps.recommended_max_memory(), "Metal recommended working set"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "RAM"


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

    The copy keeps the width, heads, MLP, vocabulary and dtype, but has at most 2 layers (float32
    matmuls in TF32 on CUDA, as training runs them). Its smallest step (1 x 16 tokens) is timed
    first; the micro-batch timed is then the largest of the run's context and batch (halved
    from the run's) that costs at most about 1.5e11 FLOPs per step on a CPU (2e13 on a GPU) and
    of which 4 steps fit the time left. Then timed steps until at least 3 (10 on a GPU) and one
    second have passed (at most 30): the median counts, so a moment of contention on a shared
    machine does not decide it. The plan assumes the full model trains at the FLOP rate the copy
    reaches: an estimate, pessimistic when the copy's batch is smaller than the run's.
    """
    deadline = time.perf_counter() + seconds
    bench_cfg = cfg.model_copy(deep=True)
    bench_cfg.model.num_layers = min(cfg.model.num_layers, 2)
    copy_params = parameter_breakdown(bench_cfg.model).total
    if device.type == "cpu" and 16 * copy_params > CPU_COPY_BYTES:
        raise BenchSkipped(
            f"a {bench_cfg.model.num_layers}-layer copy of this model has {copy_params:,} parameters "
            f"({_gib(16 * copy_params)} of weights, gradients and AdamW state): "
            "too big to time on a CPU in seconds"
        )
    threads = torch.get_num_threads()
    if cfg.device.threads:  # as training does
        torch.set_num_threads(cfg.device.threads)
    restore_precision = set_matmul_precision(device)
    try:
        return _timed_steps(cfg, bench_cfg, device, deadline)
    finally:
        restore_precision()
        torch.set_num_threads(threads)


def _timed_steps(cfg: Config, bench_cfg: Config, device: torch.device, deadline: float) -> Benchmark:
    grace = (deadline - time.perf_counter()) / 2
    on_gpu = device.type in ("cuda", "mps")
    flop_cap, min_steps = (2e13, 10) if on_gpu else (1.5e11, 3)
    model = Transformer(bench_cfg.model).to(device)
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
        return size[0] * size[1] * flops_per_token(bench_cfg.model, size[1])

    sizes = _sizes(cfg.training.batch_size, cfg.seq_len)
    sizes = [size for size in sizes if work(size) <= flop_cap] or sizes[:1]
    try:
        # the smallest step, twice (the first also allocates and picks kernels): the faster of the
        # two is its cost, free of a moment of contention
        smallest = min(step(*sizes[0]), step(*sizes[0]))
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
    fpt = flops_per_token(bench_cfg.model, seq_len)
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
    cfg, vocab_note = resolve_precision(cfg, device), ""  # device_config.dtype/compile: auto
    if cfg.model.vocab_size == "auto":
        cfg = cfg.model_copy(deep=True)
        cfg.model.vocab_size, vocab_note = 256, " (auto: set from the tokenizer; counted here as 256)"
    if cfg.device.mesh_shape:
        processes = cfg.device.mesh_shape[0] * cfg.device.mesh_shape[1]
    device_bytes, what = memory_limit(cfg, device)
    if cfg.training.batch_size == "auto":  # the formula's choice here; training measures it
        cfg = cfg.model_copy(deep=True)
        fit = fitting_batch(cfg, HEADROOM * device_bytes)
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
        flops_per_token=flops_per_token(cfg.model, cfg.seq_len),
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
    fits_batch = fitting_batch(cfg, budget)
    if fits_batch >= 1:
        accumulation = math.ceil(t.batch_size * t.gradient_accumulation_steps / fits_batch)
        advice = [
            f"lower the micro-batch: set training_config.batch_size={fits_batch} and "
            f"training_config.gradient_accumulation_steps={accumulation} "
            f"(about the same {t.batch_size * t.gradient_accumulation_steps * cfg.seq_len:,} tokens per step)"
        ]
    else:
        seq_len = cfg.seq_len
        while seq_len > 16 and memory_estimate(cfg, 1, seq_len).total > budget:
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
    cfg = load_config(preset=name)
    if cfg.model.vocab_size == "auto":
        cfg.model.vocab_size = 256
    return cfg


def _size(name: str) -> int:
    return parameter_breakdown(_preset(name).model).total


def _presets_by_size() -> list[str]:
    return sorted(preset_names(), key=_size)


# --------------------------------------------------------------------------- output

TOKEN_SUFFIX = {"k": 10**3, "m": 10**6, "b": 10**9, "g": 10**9, "t": 10**12}


def parse_tokens(text: str) -> int:
    """5000000, 5M, 2.5B or 2e9 -> an integer number of tokens."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([kmbgt]?)\s*", text.lower())
    if not match or float(match.group(1)) * TOKEN_SUFFIX.get(match.group(2), 1) < 1:
        raise UserError(
            f"--tokens must be a positive number of tokens such as 5000000, 5M or 2e9 (got {text!r})"
        )
    return int(float(match.group(1)) * TOKEN_SUFFIX.get(match.group(2), 1))


def format_plan(plan: Plan) -> str:
    cfg, m, t = plan.cfg, plan.cfg.model, plan.cfg.training
    lines = [
        f"plan for {plan.name} on {plan.device}"
        + (f", {plan.processes} processes ({_parallel(cfg)})" if plan.processes > 1 else ""),
        f"model: hidden {m.hidden_dim}, {m.num_layers} layers, {m.num_heads} heads "
        f"({m.num_kv_heads or m.num_heads} kv), MLP {m.mlp_dim}, context {m.max_seq_len}, "
        f"vocab {m.vocab_size}{plan.vocab_note}",
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
        "(formula in trickster/plan.py):",
        f"  weights (float32{share}){'':<{14 - len(share)}} {_gib(mem.weights):>10}",
        f"  gradients (float32{share}){'':<{12 - len(share)}} {_gib(mem.gradients):>10}",
        f"  AdamW state (2 x float32{share}){'':<{6 - len(share)}} {_gib(mem.optimizer):>10}",
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


def _gib(n: float) -> str:
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / 1024**2:.1f} MiB"
