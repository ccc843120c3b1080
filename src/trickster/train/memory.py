"""Memory during training: a micro-batch that fits (`training_config.batch_size: auto`) and the
one line an out-of-memory error becomes.

batch_size: auto measures trial steps of a throwaway copy of the model (fresh weights, its own
AdamW, random tokens; the run's random generators are left untouched) at micro-batches 1 and 2:
the difference is the memory of one more window, the rest is what does not depend on the batch.
The largest micro-batch that fits in footprint.HEADROOM (90%) of the device's memory (or of
device_config.memory_gib) follows, capped at each process's share of the global batch; on a GPU a
last trial step at that size confirms it (one smaller on an out-of-memory error). What a process
of an FSDP2 job holds beyond the trial copy (the weights it gathers; with gradient accumulation,
whole gradients and the weights gathered between micro-batches) is added by the formula
(footprint.beyond_one_process), so that the step the run takes fits. On a GPU a step
is measured by the allocator's peak, with activation checkpointing when the run uses it; on a CPU
by the tensors a step holds: weights, gradients, AdamW state, the activations autograd saves
(counted as they are saved, every one of them), the loss's chunk of float32 logits and the
backward pass's working memory, as footprint.py's formula counts a step of several micro-batches
(it does not take off the gradients a step of one micro-batch makes as it frees the activations:
that step holds less, never more).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from trickster import footprint
from trickster.config import Config
from trickster.errors import UserError
from trickster.model.flops import adapter_parameters, parameter_breakdown
from trickster.model.transformer import Transformer
from trickster.run_checkpoints import START_AFRESH, none_saved
from trickster.train.device import allocation_failed, autocast_for, resolve_precision
from trickster.train.optim import build_optimizer
from trickster.train.validate import draw_width_of

if TYPE_CHECKING:
    from trickster.train.dist import Dist

MAX_ACCUMULATION = 1024  # the most gradient accumulation steps the advice keeps a global batch with


@dataclass
class AutoBatch:
    micro_batch: int
    accumulation: int
    global_batch: int  # windows per optimizer step, all processes
    window_bytes: int  # measured memory of one more window in the micro-batch
    usable_bytes: int  # footprint.HEADROOM of the device's (or memory_gib's) memory

    def describe(self, world_size: int) -> str:
        return (
            f"batch_size auto: micro-batch {self.micro_batch} x {world_size} process(es) x "
            f"accumulation {self.accumulation} = {self.global_batch} windows per step (measured "
            f"{self.window_bytes / 2**20:,.1f} MiB per window, {self.usable_bytes / 2**30:.2f} GiB usable)"
        )


def choose_batch(cfg: Config, device: torch.device, job: Dist, windows: int) -> AutoBatch:
    """The micro-batch and accumulation for `windows` per optimizer step of `job`, measured on
    `device` (the job's processes on one machine share a CPU's RAM)."""
    capacity, _ = footprint.memory_limit(cfg, device, job.local_world_size)
    usable = int(footprint.HEADROOM * capacity)
    world_size = job.world_size
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        with allocation_refused(cfg, device, job):
            model = Transformer(cfg.model).to(device)
        # recompute as the run will: a GPU's peak then holds the block recomputed in the backward
        # pass; the CPU count cannot see that block, so there every activation is kept (more bytes
        # per window: a smaller micro-batch, never one that does not fit)
        model.checkpoint_activations = cfg.device.activation_checkpointing and device.type == "cuda"
        optimizer = build_optimizer(model, cfg.training, device)
        try:
            one = trial_step_bytes(model, optimizer, cfg, device, 1)
            window = max(1, trial_step_bytes(model, optimizer, cfg, device, 2) - one)
        except torch.OutOfMemoryError:
            one = window = None
        if one is None or one > usable:
            raise no_window_fits(cfg, device, usable)
        fit, room = job_fit(cfg, device, job, windows, (one - window, window), usable)
        micro, accumulation = footprint.split_global_batch(windows, world_size, fit)
        on_gpu = device.type == "cuda"
        while on_gpu and micro > 1 and not step_fits(model, optimizer, cfg, device, micro, room):
            micro, accumulation = footprint.split_global_batch(windows, world_size, micro - 1)
        del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return AutoBatch(micro, accumulation, micro * accumulation * world_size, window, usable)


def job_fit(
    cfg: Config, device: torch.device, job: Dist, windows: int, measured: tuple[int, int], usable: int
) -> tuple[int, int]:
    """(the largest micro-batch, at most a process's share of `windows`, whose step fits in
    `usable` bytes on each process of `job`; the room a trial step of it may take), from a trial
    step's `measured` (fixed bytes, bytes per window). The trial copy is the whole model in one
    process: what a process of an FSDP2 job holds beyond it (footprint.beyond_one_process: the
    weights it gathers; with accumulation, which a micro-batch below the share needs, whole float32
    gradients and the gathered weights between micro-batches), or of a DDP job with accumulation
    (no_sync's gradients beside the all-reduce buckets), is added by the formula."""
    fixed, window = measured
    share = windows // job.world_size
    computed = resolve_precision(cfg, device)
    more, _ = footprint.beyond_one_process(computed, job.world_size, accumulating=False)
    fit = min((usable - fixed - more) // window, share)
    if fit < 1:
        raise no_window_fits(cfg, device, usable)
    if fit == share:
        return fit, usable - more
    more, kept = footprint.beyond_one_process(computed, job.world_size, accumulating=True)
    if fixed + more + max(window, kept) > usable:
        held, fix = footprint.ACCUMULATION_HOLDS[job.mode]
        other = f"{fix}, " if fix else ""  # one process: nothing but giving the accumulation up
        raise UserError(
            f"batch_size auto: a step of {windows:,} windows needs gradient accumulation, and with it "
            f"{held}: not even a micro-batch of one window fits in the {usable / 2**30:.2f} GiB usable "
            f"on {device}; lower training_config.global_batch to {fit * job.world_size:,} window(s) "
            f"(no accumulation), {other}or choose a smaller model"
        )
    return (usable - fixed - more) // window, usable - more


def no_window_fits(cfg: Config, device: torch.device, usable: int) -> UserError:
    return UserError(
        f"batch_size auto: a micro-batch of one window of {cfg.seq_len} tokens does not fit in "
        f"the {usable / 2**30:.2f} GiB usable on {device}; lower training_config.seq_len, "
        "choose a smaller model, or set device_config.activation_checkpointing=true"
    )


def step_fits(model, optimizer, cfg: Config, device: torch.device, micro: int, usable: float) -> bool:
    """Whether a trial step at micro-batch `micro` runs and peaks within `usable` bytes. After an
    out-of-memory error the step's gradients and, its tensors freed, the allocator's cache are
    dropped, so that the next trial starts from the same memory."""
    try:
        fitted = trial_step_bytes(model, optimizer, cfg, device, micro) <= usable
    except torch.OutOfMemoryError:
        fitted = False
    if not fitted:
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return fitted


def trial_step_bytes(model, optimizer, cfg: Config, device: torch.device, batch: int) -> int:
    """Peak bytes of one training step (forward, backward, AdamW) at micro-batch `batch`."""
    tokens = torch.randint(0, cfg.model.vocab_size, (batch, cfg.seq_len + 1), device=device)
    fixed = {p.untyped_storage().data_ptr() for p in [*model.parameters(), *model.buffers()]}
    saved: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in fixed:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with autocast_for(device, cfg.device.dtype):
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
    loss.backward()
    optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        optimizer.zero_grad(set_to_none=True)
        return peak
    state = sum(_bytes(p) + _bytes(p.grad) for p in model.parameters())
    state += sum(_bytes(v) for s in optimizer.state.values() for v in s.values())
    optimizer.zero_grad(set_to_none=True)
    # the loss's chunk of float32 logits and the backward pass's working memory, transient; the
    # gradients a step of one micro-batch makes as it frees the activations are not taken off
    # (footprint.Memory.overlap): every micro-batch below a process's share accumulates, and holds both.
    # Asked of the formula for this one plain process (under FSDP it counts no backward pass's
    # working memory); what the job's processes hold beyond it is job_fit's
    formula = footprint.memory_estimate(footprint.one_process(cfg), batch_size=batch, accumulating=True)
    return state + sum(saved.values()) + formula.logits + formula.backward


def _bytes(tensor) -> int:
    return tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0


def out_of_memory(
    cfg: Config, device: torch.device, job: Dist, during: str, step: int, checkpoint: Path | None
) -> UserError:
    """The one line for an out-of-memory error `during` "a training step" or "an evaluation"."""
    t = cfg.training
    capacity, what = footprint.memory_limit(cfg, device, job.local_world_size)
    fit = footprint.fitting_batch(cfg, footprint.HEADROOM * capacity, job.world_size, most=t.batch_size // 2)
    if checkpoint is None:  # the run folder is no longer empty: the same command alone is refused
        again = f"run the command again with that change and {START_AFRESH}"  # --resume finds nothing
        where = f"{none_saved(cfg.logging.output_dir)}: {again}"
    else:
        where = f"continue from checkpoints/{checkpoint.name} with --resume and that change"
    return UserError(
        f"out of memory ({what} of {device}, {capacity / 2**30:.1f} GiB) during {during} at step "
        f"{step} (micro-batch {t.batch_size} x {cfg.seq_len} tokens); "
        f"{_batch_advice(cfg, fit, job.world_size)}; {where}"
    )


def _batch_advice(cfg: Config, fit: int, world_size: int) -> str:
    """A micro-batch of `fit` windows that keeps the global batch, or what to do when none fits."""
    t = cfg.training
    if fit < 1:
        return (
            "even a micro-batch of 1 is too large: lower training_config.seq_len, choose a smaller "
            "model, or set device_config.activation_checkpointing=true"
        )
    share = t.batch_size * t.gradient_accumulation_steps
    if share > MAX_ACCUMULATION * fit:  # a batch asked for by mistake (1e18): no use keeping it
        return f"lower training_config.batch_size to {fit} or less"
    micro, accumulation = footprint.split_global_batch(share * world_size, world_size, fit)
    return (
        f"`trickster plan` suggests training_config.batch_size={micro} with "
        f"gradient_accumulation_steps={accumulation} (the same {share * world_size:,} windows per step)"
    )


def check_fits(cfg: Config, device: torch.device, job: Dist) -> None:
    """Refuse, before a model is built, a run whose weights, gradients and optimizer state are more
    than the whole of the device's memory (or device_config.memory_gib; on a CPU each of `job`'s
    processes on this machine has its share of the RAM), or whose step plan's formula puts above
    it even with half the activations it counts: a model too big for it would
    otherwise end in an allocator's traceback while it is built, or at its first step. The whole
    memory, not the HEADROOM the plan fits runs into: the formula leaves out the allocator's cache
    and the CUDA context, so a step it puts above all of the memory cannot fit."""
    t = cfg.training
    batch = 1 if t.batch_size == "auto" else t.batch_size  # auto: at least one window must fit
    # dtype auto counted as the run computes (bfloat16 on a fast GPU: half the activations)
    computed = resolve_precision(cfg, device)
    mem = footprint.memory_estimate(computed, batch_size=batch, processes=job.world_size)
    capacity, what = footprint.memory_limit(cfg, device, job.local_world_size)
    if mem.state > capacity:  # counted exactly: bytes per parameter
        need = f"its weights, gradients and optimizer state need {_size(mem.state)}"
        raise model_too_big(cfg, device, job, need, " (nothing was changed)")
    if t.batch_size == "auto" or mem.state + (mem.total - mem.state) / 2 <= capacity:
        # the activations' formula is checked on CPUs only: a step it puts over, but not by twice
        # its activations, runs, and memory.out_of_memory says what to change if it does not fit;
        # auto: choose_batch measures whether one window fits, and says so
        return
    has = f"{what} of {device}, {_size(capacity)}"
    fit = footprint.fitting_batch(computed, footprint.HEADROOM * capacity, job.world_size)  # as estimated
    raise UserError(
        f"one training step does not fit in memory ({has}): the micro-batch of {t.batch_size:,} x "
        f"{cfg.seq_len} tokens needs {_size(mem.total)} ({_size(mem.activations + mem.logits)} of "
        f"activations); {_batch_advice(cfg, fit, job.world_size)} (nothing was changed)"
    )


def check_validation_set(cfg: Config, job: Dist) -> None:
    """Refuse a validation set (training_config.eval_batches draws, held in RAM as int64 rows,
    inputs and targets: 24 bytes a token) bigger than a process of `job`'s share of the RAM: drawn
    batch by batch, eval_batches: 1e18 ran for ever before the first step, growing a list."""
    t = cfg.training
    # each draw is a global batch; batch_size: auto's is the one asked for
    auto = t.batch_size == "auto"
    batch = footprint.global_windows(cfg, job.world_size) if auto else draw_width_of(t, job.world_size)
    windows = t.eval_batches * batch
    need = 24 * windows * cfg.seq_len
    # in RAM whatever the device; each of the job's processes here holds the whole set in its share
    capacity, what = footprint.process_memory(torch.device("cpu"), job.local_world_size)
    if need > capacity and t.batch_size == "auto" and need // t.eval_batches > capacity:
        # not eval_batches: one draw of the global batch asked for is already too big
        raise UserError(
            f"batch_size auto: a global batch of {batch:,} windows of {cfg.seq_len} tokens makes each "
            f"validation draw {_size(need // t.eval_batches)} held in memory, more than the {what} "
            f"({_size(capacity)}); lower training_config.global_batch (or global_batch_tokens)"
        )
    if need > capacity:
        raise UserError(
            f"training_config.eval_batches {t.eval_batches:,} makes a validation set of {windows:,} "
            f"windows of {cfg.seq_len} tokens, {_size(need)} held in memory, more than the "
            f"{what} ({_size(capacity)}); lower training_config.eval_batches (each evaluation "
            "reads every window; 20 is usual)"
        )


def model_too_big(cfg: Config, device: torch.device, job: Dist, need: str, end: str = "") -> UserError:
    """The one line for a model (or its LoRA adapters) whose `need` is more than the memory a
    process of `job` has."""
    capacity, what = footprint.memory_limit(cfg, device, job.local_world_size)
    params = parameter_breakdown(cfg.model).total
    lora = cfg.training.lora
    if lora is None:
        size = f"{params:,} parameters"
        fix = "choose a smaller model (lower model_config.hidden_dim, mlp_dim, num_layers or vocab_size)"
    else:
        size = f"{params:,} parameters and {adapter_parameters(cfg.model, lora):,} more in LoRA adapters"
        fix = f"lower training_config.lora.rank (now {lora.rank:,}), fine-tune a smaller model"
    return UserError(
        f"the model is too big for {device} ({what}, {_size(capacity)}): {size}, and {need}; {fix}, "
        f"or use a device with more memory; `trickster plan` shows what fits{end}"
    )


@contextmanager
def allocation_refused(cfg: Config, device: torch.device, job: Dist):
    """Building the model: an allocation the device refuses becomes model_too_big's line (check_fits
    refuses most such models before; this catches the memory that other programs hold)."""
    try:
        yield
    except (RuntimeError, MemoryError) as err:
        if not allocation_failed(err):
            raise
        weights = footprint.memory_estimate(cfg, batch_size=1).weights  # LoRA adapters included
        need = f"building it failed to allocate memory (its weights alone: {_size(weights)})"
        raise model_too_big(cfg, device, job, need) from None


_size = footprint.size_text


BATCH_KEYS = ("batch_size", "gradient_accumulation_steps", "global_batch", "global_batch_tokens")


def resolve_batch(
    cfg: Config,
    device: torch.device,
    job: Dist,
    resumed_from: Path | None,
    resumed: Config | None,
    changed: dict,
) -> tuple[Config, str | None, dict]:
    """batch_size: auto made concrete: (the config with the chosen micro-batch and accumulation, a
    line for the header, the changes on resume). A resumed run keeps the numbers its checkpoint
    (`resumed_from`, whose config.yaml is `resumed`) was trained with while they still make the
    global batch asked for; otherwise they are measured again. The config written to the run folder
    holds the numbers (and no global_batch)."""
    if cfg.training.batch_size != "auto":
        return cfg, None, changed
    world_size = job.world_size
    windows = footprint.global_windows(cfg, world_size)
    saved = resumed.training if resumed is not None else None
    if saved is not None and saved.batch_size * saved.gradient_accumulation_steps * world_size == windows:
        micro, accumulation = saved.batch_size, saved.gradient_accumulation_steps
        note = (
            f"batch_size auto: micro-batch {micro} x accumulation {accumulation}, as "
            f"checkpoints/{resumed_from.name} was trained"
        )
    else:
        chosen = choose_batch(cfg, device, job, windows)
        micro, accumulation, note = chosen.micro_batch, chosen.accumulation, chosen.describe(world_size)
    cfg = cfg.model_copy(deep=True)
    t = cfg.training
    t.global_batch = t.global_batch_tokens = None
    t.batch_size, t.gradient_accumulation_steps = micro, accumulation
    changed = {k: v for k, v in changed.items() if k.removeprefix("training_config.") not in BATCH_KEYS}
    for key in BATCH_KEYS[:2] if saved is not None else ():
        if getattr(saved, key) != getattr(t, key):
            changed[f"training_config.{key}"] = [getattr(saved, key), getattr(t, key)]
    return cfg, note, changed
