"""`trickster plan`: what a config costs before you train it.

Parameters and FLOPs per token come from model.py (parameter_breakdown, flops_per_token).
Memory is a formula (below); the time is an estimate from a micro-benchmark measured on the
device; the token budget follows the compute-optimal rule of about 20 tokens per parameter
(Hoffmann et al. 2022, "Chinchilla").

Memory for one training step, in bytes (P parameters, micro-batch B x T tokens, L layers,
hidden d, MLP m, key/value width kv = num_kv_heads * head_dim, nh heads, vocabulary V):

- weights 4P, gradients 4P, AdamW state 8P (exp_avg and exp_avg_sq; with optimizer: muon, the
  block matrices Muon takes keep one momentum buffer, 4 bytes each): all float32, whatever
  device_config.dtype says (autocast computes in bf16/fp16; it keeps float32 weights). With
  bf16/fp16 autocast also caches a 2-byte copy of every matrix: + 2P.
- activations saved for the backward pass, per token:
  float32:    L * (6d + 2kv + 4m + nh + 2) * 4
  bf16/fp16:  L * ((2d + nh + 2) * 4 + (4d + 2kv + 4m) * 2)   (RMSNorm keeps float32)
  plus (2d + V + 3) * 4 + 8 for the final norm, the log-softmax of the float32 logits and the
  targets.
  The float32 line matches, within 1%, the tensors autograd saves for this model on CPU (tested
  in tests/test_plan.py with saved-tensor hooks). The bf16/fp16 line assumes fused attention
  (flash / memory-efficient SDPA on a GPU) that keeps no T x T matrix; on CPU half precision
  keeps more.
- the logits and their gradient, 2 * B * T * V * 4 (float32), both alive at the start of the
  backward pass.

Not counted: the allocator's cache and fragmentation, the CUDA context (about 0.5 GiB) and the
temporary buffers of individual kernels; the plan asks for 10% headroom.
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
from trickster.model.flops import flops_per_token, parameter_breakdown
from trickster.model.transformer import Transformer
from trickster.train.device import autocast_for
from trickster.train.optim import build_optimizer

TOKENS_PER_PARAMETER = 20  # compute-optimal training tokens per parameter (Chinchilla)
HEADROOM = 0.9  # use at most this fraction of the device's memory
GiB = 1024**3


@dataclass
class Memory:
    weights: int
    gradients: int
    optimizer: int
    autocast_copy: int
    activations: int
    logits: int  # the float32 logits and their gradient

    @property
    def state(self) -> int:
        """What does not depend on the batch."""
        return self.weights + self.gradients + self.optimizer + self.autocast_copy

    @property
    def total(self) -> int:
        return self.state + self.activations + self.logits


def activation_bytes_per_token(cfg: Config) -> int:
    """Bytes of activations saved for the backward pass per token of the micro-batch (formula above)."""
    m = cfg.model
    d, L, nh, V = m.hidden_dim, m.num_layers, m.num_heads, m.vocab_size
    kv = (m.num_kv_heads or m.num_heads) * (d // nh)
    if cfg.device.dtype == "float32":
        per_layer = (6 * d + 2 * kv + 4 * m.mlp_dim + nh + 2) * 4
    else:
        per_layer = (2 * d + nh + 2) * 4 + (4 * d + 2 * kv + 4 * m.mlp_dim) * 2
    return L * per_layer + (2 * d + V + 3) * 4 + 8


def memory_estimate(cfg: Config, batch_size: int | None = None, seq_len: int | None = None) -> Memory:
    """Bytes for one training step at cfg's micro-batch (or the one given)."""
    breakdown = parameter_breakdown(cfg.model)
    params = breakdown.total
    tokens = (batch_size or cfg.training.batch_size) * (seq_len or cfg.seq_len)
    half = cfg.device.dtype != "float32"
    muon = 0  # the block matrices: everything in the blocks but their two norm weights
    if cfg.training.optimizer == "muon":
        muon = breakdown.blocks - 2 * cfg.model.hidden_dim * cfg.model.num_layers
    return Memory(
        weights=4 * params,
        gradients=4 * params,
        optimizer=8 * (params - muon) + 4 * muon,
        autocast_copy=2 * params if half else 0,
        activations=tokens * activation_bytes_per_token(cfg),  # per token: no T x T term (fused attention)
        logits=2 * tokens * cfg.model.vocab_size * 4,
    )


def fitting_batch(cfg: Config, budget: float) -> int:
    """The largest micro-batch whose step fits in `budget` bytes by the formula (0: not even one)."""
    mem = memory_estimate(cfg, batch_size=1)
    return max(0, int((budget - mem.state) // (mem.activations + mem.logits)))


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


def benchmark(cfg: Config, device: torch.device, steps: int | None = None) -> Benchmark:
    """Time a few forward + backward + optimizer steps of a copy of the model on the device.

    The copy keeps the width, heads, MLP, vocabulary, context and dtype, but has at most 2 layers;
    its micro-batch (then, if needed, its context) is halved until one step costs at most about
    1.5e11 FLOPs on a CPU (2e13 on a GPU), so the benchmark takes seconds. One warm-up step, then
    timed steps until at least `steps` (3 on a CPU, 10 on a GPU) and one second have passed (at
    most 30 steps); the median step time counts, so a moment of contention on a shared machine
    does not decide it. The plan assumes the full model trains at the FLOP rate the copy reaches:
    an estimate, usually pessimistic when the copy's batch is smaller than the real one.
    """

    if cfg.device.threads:  # as train() does
        torch.set_num_threads(cfg.device.threads)
    on_gpu = device.type in ("cuda", "mps")
    budget = 2e13 if on_gpu else 1.5e11
    steps = steps or (10 if on_gpu else 3)
    bench_cfg = cfg.model_copy(deep=True)
    bench_cfg.model.num_layers = min(cfg.model.num_layers, 2)
    batch, seq_len = cfg.training.batch_size, cfg.seq_len
    fpt = flops_per_token(bench_cfg.model, seq_len)
    while batch > 1 and batch * seq_len * fpt > budget:
        batch //= 2
    while seq_len > 16 and batch * seq_len * flops_per_token(bench_cfg.model, seq_len) > budget:
        seq_len //= 2
    fpt = flops_per_token(bench_cfg.model, seq_len)

    generator = torch.Generator().manual_seed(0)
    model = Transformer(bench_cfg.model).to(device)
    model.train()
    optimizer = build_optimizer(model, cfg.training, device)
    x = torch.randint(0, bench_cfg.model.vocab_size, (batch, seq_len + 1), generator=generator).to(device)
    inputs, targets = x[:, :-1], x[:, 1:]

    def step() -> None:
        with autocast_for(device, cfg.device.dtype):
            _, loss = model(inputs, targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    try:
        step()  # warm-up: allocations, kernel selection
        sync()
        times: list[float] = []
        deadline = time.perf_counter() + 1.0
        while len(times) < steps or (time.perf_counter() < deadline and len(times) < 30):
            start = time.perf_counter()
            step()
            sync()
            times.append(time.perf_counter() - start)
    except torch.OutOfMemoryError:
        raise UserError(
            f"the benchmark copy of the model ({bench_cfg.model.num_layers} layers, batch {batch} x "
            f"{seq_len}) does not fit on {device}; lower training_config.batch_size or choose a smaller model"
        ) from None
    return Benchmark(bench_cfg.model.num_layers, batch, seq_len, len(times), statistics.median(times), fpt)


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

    @property
    def fits(self) -> bool:
        return self.memory.total <= HEADROOM * self.device_bytes

    def seconds(self, tokens: int) -> float | None:
        if self.bench is None:
            return None
        return tokens * self.flops_per_token / self.bench.flops_per_sec


def make_plan(
    cfg: Config, device: torch.device, tokens: int | None = None, name: str = "", measure: bool = True
) -> Plan:
    vocab_note = ""
    if cfg.model.vocab_size == "auto":
        cfg = cfg.model_copy(deep=True)
        cfg.model.vocab_size, vocab_note = 256, " (auto: set from the tokenizer; counted here as 256)"
    t = cfg.training
    params = parameter_breakdown(cfg.model).total
    memory = memory_estimate(cfg)
    device_bytes, what = memory_limit(cfg, device)
    plan = Plan(
        cfg=cfg,
        name=name,
        device=device,
        params=params,
        flops_per_token=flops_per_token(cfg.model, cfg.seq_len),
        memory=memory,
        device_bytes=device_bytes,
        device_what=what,
        run_tokens=t.max_steps * t.batch_size * cfg.seq_len * t.gradient_accumulation_steps,
        optimal_tokens=TOKENS_PER_PARAMETER * params,
        tokens=tokens,
        bench=None,
        advice=[],
        vocab_note=vocab_note,
    )
    plan.advice = _advice(plan)
    if measure:
        plan.bench = benchmark(cfg, device)
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
            f"{_gib(budget)} usable: choose a smaller model{hint}, or a device with more memory "
            "(sharding across GPUs is not built yet)"
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
    cfg, m, t, mem = plan.cfg, plan.cfg.model, plan.cfg.training, plan.memory
    lines = [
        f"plan for {plan.name} on {plan.device}",
        f"model: hidden {m.hidden_dim}, {m.num_layers} layers, {m.num_heads} heads "
        f"({m.num_kv_heads or m.num_heads} kv), MLP {m.mlp_dim}, context {m.max_seq_len}, "
        f"vocab {m.vocab_size}{plan.vocab_note}",
        f"parameters: {plan.params:,}",
        f"training FLOPs per token (context {cfg.seq_len}): {plan.flops_per_token:,}",
        "",
        f"memory for one step, micro-batch {t.batch_size} x {cfg.seq_len} tokens, {cfg.device.dtype} "
        "(formula in trickster/plan.py):",
        f"  weights (float32)              {_gib(mem.weights):>10}",
        f"  gradients (float32)            {_gib(mem.gradients):>10}",
        f"  AdamW state (2 x float32)      {_gib(mem.optimizer):>10}",
    ]
    if mem.autocast_copy:
        short = {"bfloat16": "bf16", "float16": "fp16"}[cfg.device.dtype]
        lines.append(f"  autocast weight copy ({short})    {_gib(mem.autocast_copy):>10}")
    lines += [
        f"  activations                    {_gib(mem.activations):>10}",
        f"  logits and their gradient      {_gib(mem.logits):>10}",
        f"  total                          {_gib(mem.total):>10}",
    ]
    usable = HEADROOM * plan.device_bytes
    verdict = "fits" if plan.fits else "DOES NOT FIT"
    lines.append(
        f"  {verdict}: {_gib(mem.total)} of {_gib(usable)} usable "
        f"({HEADROOM:.0%} of {_gib(plan.device_bytes)} {plan.device_what})"
    )
    for advice in plan.advice:
        lines.append(f"  to fit: {advice}")
    lines += ["", "tokens:"]
    per_step = t.batch_size * cfg.seq_len * t.gradient_accumulation_steps
    budgets = [
        (f"this config ({t.max_steps:,} steps x {per_step:,})", plan.run_tokens),
        (f"compute-optimal (~{TOKENS_PER_PARAMETER} per parameter)", plan.optimal_tokens),
    ]
    if plan.tokens:
        budgets.append(("--tokens", plan.tokens))
    for label, tokens in budgets:
        lines.append(f"  {label:<44} {tokens:>16,}  ({tokens / plan.params:,.1f} per parameter)")
    lines.append("")
    b = plan.bench
    if b is None:
        lines.append("time: not measured")
        return "\n".join(lines)
    copy = "the model" if b.layers == m.num_layers else f"a {b.layers}-layer copy of the model"
    if cfg.device.compile:
        copy += " (without torch.compile)"
    lines.append(
        f"time (estimate): {copy}, batch {b.batch_size} x {b.seq_len}, {b.steps} timed training "
        f"steps on {plan.device}: median {b.seconds_per_step * 1000:,.1f} ms/step, "
        f"{b.flops_per_sec / 1e9:,.1f} GFLOP/s"
    )
    rate = b.flops_per_sec / plan.flops_per_token
    lines.append(f"  at that rate the full model trains {rate:,.{0 if rate >= 10 else 2}f} tokens/s")
    for label, tokens in budgets:
        lines.append(f"  {label:<44} {format_seconds(plan.seconds(tokens)):>16}")
    if not plan.fits:
        lines.append("  (the full run does not fit as configured; see above)")
    return "\n".join(lines)


def format_seconds(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} h"
    if seconds < 2 * 365 * 86400:
        return f"{seconds / 86400:.1f} days"
    return f"{seconds / (365 * 86400):,.0f} years"


def _gib(n: float) -> str:
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    return f"{n / 1024**2:.1f} MiB"
