"""Memory during training: a micro-batch that fits (`training_config.batch_size: auto`) and the
one line an out-of-memory error becomes.

batch_size: auto measures trial steps of a throwaway copy of the model (fresh weights, its own
AdamW, random tokens; the run's random generators are left untouched) at micro-batches 1 and 2:
the difference is the memory of one more window, the rest is what does not depend on the batch.
The largest micro-batch that fits in footprint.HEADROOM (90%) of the device's memory (or of
device_config.memory_gib) follows, capped at each process's share of the global batch; on a GPU a
last trial step at that size confirms it (one smaller on an out-of-memory error). On a GPU a step
is measured by the allocator's peak, with activation checkpointing when the run uses it; on a CPU
by the tensors a step holds: weights, gradients, AdamW state, the activations autograd saves
(counted as they are saved, every one of them) and the loss's chunk of float32 logits, as plan.py's
formula counts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from trickster import footprint
from trickster.config import Config
from trickster.errors import UserError
from trickster.model.transformer import Transformer
from trickster.train import checkpoint as ckpt
from trickster.train.device import autocast_for
from trickster.train.optim import build_optimizer

OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)


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


def choose_batch(cfg: Config, device: torch.device, windows: int, world_size: int = 1) -> AutoBatch:
    """The micro-batch and accumulation for `windows` per optimizer step, measured on `device`."""
    capacity, _ = footprint.memory_limit(cfg, device)
    usable = int(footprint.HEADROOM * capacity)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
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
            raise UserError(
                f"batch_size auto: a micro-batch of one window of {cfg.seq_len} tokens does not fit in "
                f"the {usable / 2**30:.2f} GiB usable on {device}; lower training_config.seq_len, "
                "choose a smaller model, or set device_config.activation_checkpointing=true"
            )
        fit = min((usable - (one - window)) // window, windows // world_size)
        micro, accumulation = footprint.split_global_batch(windows, world_size, fit)
        on_gpu = device.type == "cuda"
        while on_gpu and micro > 1 and not step_fits(model, optimizer, cfg, device, micro, usable):
            micro, accumulation = footprint.split_global_batch(windows, world_size, micro - 1)
        del model, optimizer
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return AutoBatch(micro, accumulation, micro * accumulation * world_size, window, usable)


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
    loss = footprint.memory_estimate(cfg, batch_size=batch).logits  # a chunk of float32 logits, transient
    return state + sum(saved.values()) + loss


def _bytes(tensor) -> int:
    return tensor.numel() * tensor.element_size() if isinstance(tensor, torch.Tensor) else 0


def out_of_memory(
    cfg: Config, device: torch.device, during: str, step: int, checkpoint: Path | None, world_size: int = 1
) -> UserError:
    """The one line for an out-of-memory error `during` "a training step" or "an evaluation"."""
    t = cfg.training
    capacity, what = footprint.memory_limit(cfg, device)
    fit = min(footprint.fitting_batch(cfg, footprint.HEADROOM * capacity), t.batch_size // 2)
    if fit >= 1:
        share = t.batch_size * t.gradient_accumulation_steps
        micro, accumulation = footprint.split_global_batch(share * world_size, world_size, fit)
        advice = (
            f"`trickster plan` suggests training_config.batch_size={micro} with "
            f"gradient_accumulation_steps={accumulation} (the same {share * world_size} windows per step)"
        )
    else:
        advice = (
            "even a micro-batch of 1 is too large: lower training_config.seq_len, choose a smaller "
            "model, or set device_config.activation_checkpointing=true"
        )
    where = (
        f"continue from checkpoints/{checkpoint.name} with --resume and that change"
        if checkpoint
        else "no checkpoint was saved yet: start again with that change"
    )
    return UserError(
        f"out of memory ({what} of {device}, {capacity / 2**30:.1f} GiB) during {during} at step "
        f"{step} (micro-batch {t.batch_size} x {cfg.seq_len} tokens); {advice}; {where}"
    )


BATCH_KEYS = ("batch_size", "gradient_accumulation_steps", "global_batch", "global_batch_tokens")


def resolve_batch(
    cfg: Config, device: torch.device, world_size: int, resumed_from: Path | None, changed: dict
) -> tuple[Config, str | None, dict]:
    """batch_size: auto made concrete: (the config with the chosen micro-batch and accumulation, a
    line for the header, the changes on resume). A resumed run keeps the numbers its checkpoint
    was trained with while they still make the global batch asked for; otherwise they are
    measured again. The config written to the run folder holds the numbers (and no global_batch)."""
    if cfg.training.batch_size != "auto":
        return cfg, None, changed
    windows = footprint.global_windows(cfg, world_size)
    saved = ckpt.read_config(resumed_from).training if resumed_from is not None else None
    if saved is not None and saved.batch_size * saved.gradient_accumulation_steps * world_size == windows:
        micro, accumulation = saved.batch_size, saved.gradient_accumulation_steps
        note = (
            f"batch_size auto: micro-batch {micro} x accumulation {accumulation}, as "
            f"checkpoints/{resumed_from.name} was trained"
        )
    else:
        chosen = choose_batch(cfg, device, windows, world_size)
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
