"""`trickster plan`: what a config costs before you train it.

Parameters and FLOPs per token (a LoRA step's, with training_config.lora) come from model/flops.py,
memory from a formula (footprint.py); the time is an estimate from a micro-benchmark measured on the
device (plan_benchmark.py: at most about 10 seconds, or skipped with a note; `--no-bench` skips
it), or for a GPU planned by name and not here (plan_gpu.py) its datasheet peak at an assumed MFU;
the token budget follows the compute-optimal rule of about 20 tokens per parameter (Hoffmann
et al. 2022, "Chinchilla"), except for a fine-tune (training_config.init_from), whose model is
trained already. Prepared data (--data, or data_config.path once prepared: plan_data.py) gives the
vocabulary and the epochs of each budget.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from trickster.config import Config, load_config
from trickster.errors import UserError
from trickster.footprint import (
    ACCUMULATION_HOLDS,
    HEADROOM,
    GiB,
    Memory,
    accumulation_cost,
    fitting_batch,
    global_windows,
    memory_estimate,
    memory_limit,
    split_global_batch,
)
from trickster.model import lora
from trickster.model.flops import adapter_parameters, flops_per_token, parameter_breakdown
from trickster.model.vocab import assumed_vocab
from trickster.plan_benchmark import Benchmark, BenchSkipped, benchmark
from trickster.plan_data import PlannedData, data_line, planned_data
from trickster.plan_gpu import AssumedRate, NamedGpu, assumed_rate, time_lines, unrated
from trickster.plural import counted
from trickster.presets import preset_names
from trickster.train.device import resolve_precision
from trickster.train.launch_env import parallel_mode
from trickster.units import format_duration

TOKENS_PER_PARAMETER = 20  # compute-optimal training tokens per parameter (Chinchilla)


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
    gpu: NamedGpu | None = None  # a GPU planned by name, not here
    assumed: AssumedRate | None = None  # its time, assumed (None: no peak in the run's dtype)
    data: PlannedData | None = None  # the prepared data counted with (vocabulary, epochs)

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
    gpu: NamedGpu | None = None,
    mfu: float | None = None,
    data: str | None = None,
) -> Plan:
    """`processes`: how many training processes (GPUs) share the run: DDP replicas, or FSDP
    shards with device_config.enable_fsdp (as device_config.mesh_shape says, when set). On a CPU
    they run on this machine and each has its share of the RAM, as in training
    (footprint.memory_limit); a GPU is each one's own.
    `gpu`: a GPU that is not here (device: cuda), planned by its datasheet and never asked of torch;
    nothing is measured, its time assumes `mfu` (plan_gpu.ASSUMED_MFU's range when None).
    `data`: --data, a prepared folder (else data_config.path's, once prepared): its vocabulary and
    tokens are counted (plan_data.planned_data)."""
    capability = gpu.sheet.capability if gpu else None
    cfg, prepared = planned_data(cfg, data)
    cfg, vocab_note = assumed_vocab(resolve_precision(cfg, device, capability))  # dtype/compile: auto
    if cfg.device.mesh_shape:
        processes = cfg.device.mesh_shape[0] * cfg.device.mesh_shape[1]
    device_bytes, what = memory_limit(cfg, device, processes, gpu.memory if gpu else None)
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
        data=prepared,
    )
    plan.advice = _advice(plan)
    if gpu is not None:
        plan.gpu, plan.assumed = gpu, assumed_rate(cfg, gpu, mfu)
        if plan.assumed is None:
            plan.bench_note = unrated(cfg, gpu)
    elif measure:
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
    # what no micro-batch goes below: the state, and what FSDP keeps where one window's activations were
    least = memory_estimate(cfg, 1, None, plan.processes).least
    if least > budget:
        smaller = [
            name
            for name in _presets_by_size()
            if memory_estimate(_preset(name)).total <= budget and _size(name) < plan.params
        ]
        hint = f" such as preset {smaller[-1]}" if smaller else ""
        fix = f"choose a smaller model{hint}, or a device with more memory"
        if plan.device.type == "cuda":  # processes on one CPU share its RAM: sharding divides it too
            fix = (
                f"choose a smaller model{hint}, a device with more memory, or {_sharding_hint(plan, budget)}"
            )
        kept = " (with the weights FSDP keeps gathered between micro-batches)" if mem.accumulated else ""
        return [
            f"the weights, gradients and AdamW state alone need {_gib(least)}{kept}, more than "
            f"the {_gib(budget)} usable: {fix}"
        ]
    fits_batch = fitting_batch(cfg, budget, plan.processes)
    alone = fitting_batch(cfg, budget, plan.processes, alone=True) if fits_batch < 1 else 0
    if alone >= 1:  # what the accumulation holds is what does not fit
        more, kept = accumulation_cost(cfg, plan.processes)
        held, fix = _accumulation_holds(plan)
        advice = [
            f"with gradient accumulation {held} ({_gib(more + kept)} more), which do not fit: set "
            f"training_config.batch_size={alone} and training_config.gradient_accumulation_steps=1 "
            f"({alone * plan.processes:,} window(s) a step){f', or {fix}' if fix else ''}"
        ]
    elif fits_batch >= 1:
        accumulation = math.ceil(t.batch_size * t.gradient_accumulation_steps / fits_batch)
        advice = [
            f"lower the micro-batch: set training_config.batch_size={fits_batch} and "
            f"training_config.gradient_accumulation_steps={accumulation} "
            f"(about the same {t.batch_size * t.gradient_accumulation_steps * cfg.seq_len:,} tokens per step)"
        ]
    else:
        advice = [_one_sequence_advice(plan, budget)]
    if cfg.device.dtype == "float32" and plan.device.type == "cuda":
        advice.append("device_config.dtype=bfloat16 roughly halves the activations")
    return advice


def _one_sequence_advice(plan: Plan, budget: float) -> str:
    """A shorter sequence, halved until one fits; when the config accumulates, what giving the
    accumulation up allows, since a step of several micro-batches holds more than a step of one
    (accumulation_cost: under FSDP2 whole gradients and gathered weights, under DDP no_sync's
    gradients beside the all-reduce buckets, in one process the earlier micro-batches' gradients
    beside the activations)."""
    cfg = plan.cfg

    def fitting_seq_len(accumulating: bool | None) -> int:
        seq_len = cfg.seq_len
        while seq_len > 16 and memory_estimate(cfg, 1, seq_len, plan.processes, accumulating).total > budget:
            seq_len //= 2
        return seq_len

    seq_len = fitting_seq_len(accumulating=None)
    advice = (
        f"even one sequence of {cfg.seq_len} tokens does not fit: set training_config.batch_size=1 "
        f"and training_config.seq_len={seq_len}"
    )
    more, kept = accumulation_cost(cfg, plan.processes)
    alone = (
        fitting_seq_len(accumulating=False)
        if more + kept and cfg.training.gradient_accumulation_steps > 1
        else 0
    )
    if alone > seq_len:
        advice += (
            f"; with gradient accumulation {_accumulation_holds(plan)[0]} ({_gib(more + kept)} more): "
            "without it (training_config.gradient_accumulation_steps=1) "
            f"training_config.seq_len={alone} fits"
        )
    return advice


def _accumulation_holds(plan: Plan) -> tuple[str, str]:
    """What the planned job's gradient accumulation holds, and what else makes room for it."""
    return ACCUMULATION_HOLDS[parallel_mode(plan.cfg.device, plan.processes)]


def _ddp(plan: Plan) -> bool:
    """Whether the planned job trains under DDP: asked for, or torchrun's processes without FSDP."""
    return parallel_mode(plan.cfg.device, plan.processes) == "ddp"


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


def _adapters(cfg: Config) -> str:
    """A LoRA fine-tune's adapters beside the model's count, as its run header counts them."""
    adapted = cfg.training.lora
    if adapted is None:
        return ""
    adapters = adapter_parameters(cfg.model, adapted)
    return f" and {adapters:,} in LoRA adapters ({lora.adapted_layers(adapted)}: the only weights trained)"


def format_plan(plan: Plan) -> str:
    cfg, m, t = plan.cfg, plan.cfg.model, plan.cfg.training
    where = f"{plan.gpu.name} (by its datasheet: no GPU is used)" if plan.gpu else plan.device
    lines = [
        f"plan for {plan.name} on {where}"
        + (f", {plan.processes} processes ({_parallel(cfg)})" if plan.processes > 1 else ""),
        *([data_line(plan.data, cfg)] if plan.data else []),
        f"model: {m.shape()}{plan.vocab_note}",
        f"parameters: {plan.params:,}{_adapters(cfg)}",
        f"training FLOPs per token (context {cfg.seq_len}): {plan.flops_per_token:,}",
        "",
        *_memory_lines(plan),
        "",
        "tokens:",
    ]
    budgets = _budgets(plan)
    for label, tokens in budgets:
        # a fine-tune's model is trained already: tokens per parameter measure nothing there
        per = [] if t.init_from else [f"{tokens / plan.params:,.1f} per parameter"]
        per += [plan.data.epochs(tokens)] if plan.data else []
        lines.append(f"  {label:<44} {tokens:>16,}" + (f"  ({', '.join(per)})" if per else ""))
    if t.init_from:
        lines.append(f"  {_fine_tuned(plan)}")
    return "\n".join([*lines, "", *_time_lines(plan, budgets)])


def _budgets(plan: Plan) -> list[tuple[str, int]]:
    """The token budgets the plan counts and times: the config's, the compute-optimal one (not for
    a fine-tune), --tokens, one epoch of the data."""
    cfg, t = plan.cfg, plan.cfg.training
    per_step = t.batch_size * cfg.seq_len * t.gradient_accumulation_steps * plan.processes
    budgets = [(f"this config ({counted(t.max_steps, 'step')} x {per_step:,})", plan.run_tokens)]
    if not t.init_from:
        budgets.append((f"compute-optimal (~{TOKENS_PER_PARAMETER} per parameter)", plan.optimal_tokens))
    if plan.tokens:
        budgets.append(("--tokens", plan.tokens))
    if plan.data:
        budgets.append((f"one epoch of the data ({plan.data.given})", plan.data.train_tokens))
    return budgets


def _fine_tuned(plan: Plan) -> str:
    """What a fine-tune trains, said where a run from scratch has its compute-optimal budget."""
    adapted = plan.cfg.training.lora
    if adapted is None:
        trained = f"all {plan.params:,} parameters of the model it starts from"
    else:
        adapters = adapter_parameters(plan.cfg.model, adapted)
        trained = f"{adapters:,} parameters, its LoRA adapters ({lora.adapted_layers(adapted)})"
    return (
        f"a fine-tune (training_config.init_from) trains {trained}: no compute-optimal budget "
        f"(~{TOKENS_PER_PARAMETER} tokens per parameter is for a model trained from scratch)"
    )


def _parallel(cfg: Config) -> str:
    return "FSDP" if cfg.device.enable_fsdp else "data parallel"


def _memory_lines(plan: Plan) -> list[str]:
    cfg, t, mem = plan.cfg, plan.cfg.training, plan.memory
    where = "per process " if plan.processes > 1 or mem.shards > 1 else ""
    share = f", 1/{mem.shards}" if mem.shards > 1 else ""
    # under FSDP2 the gradients row holds the few blocks' gradients that the backward pass is
    # sharding; the sharded ones take the activations' place (kept), and with accumulation the
    # whole ones are in the gathered row
    sharding = cfg.device.enable_fsdp and t.lora is None
    gradients = f"gradients (float32{share})"
    if sharding:
        gradients = "gradients being sharded (float32)"
    elif _ddp(plan) and t.gradient_accumulation_steps > 1:
        gradients = "gradients (float32, and buckets)"
    rows = [
        (f"weights (float32{share})", mem.weights),
        (gradients, mem.gradients),
        (_optimizer_label(t.optimizer, share), mem.optimizer),
    ]
    if mem.gathered:
        gathered = "FSDP gathered weights, whole grads" if mem.accumulated else "FSDP gathered weights"
        rows.append((gathered, mem.gathered))
    if mem.autocast_copy:
        short = {"bfloat16": "bf16", "float16": "fp16"}[cfg.device.dtype]
        rows.append((f"autocast weight copy ({short})", mem.autocast_copy))
    recompute = " (checkpointed)" if cfg.device.activation_checkpointing else ""
    rows += [
        (f"activations{recompute}", mem.activations),
        ("loss (a chunk of logits)", mem.logits + mem.loss_gradient),
    ]
    if mem.backward:
        rows.append(("backward pass working memory", mem.backward))
    if mem.overlap:  # the gradients, made as the backward pass frees the activations
        rows.append(("less grads made as activations go", -mem.overlap))
    if mem.kept_beyond:  # what FSDP keeps once the activations are gone outweighs them
        kept = "FSDP weights kept" if mem.accumulated else "sharded gradients"
        rows.append((f"{kept}, beyond these", mem.kept_beyond))
    rows.append(("total", mem.total))
    width = max(len(label) for label, _ in rows)
    lines = [
        f"memory {where}for one step, micro-batch {t.batch_size} x {cfg.seq_len} tokens, {cfg.device.dtype} "
        "(formula in trickster/footprint.py):",
        *(f"  {label:<{width}} {_gib(size):>10}" for label, size in rows),
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
    if plan.assumed is not None:
        return time_lines(plan.assumed, plan.flops_per_token, plan.processes, budgets, plan.fits)
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
