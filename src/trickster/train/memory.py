"""Memory during training: the one line an out-of-memory error becomes."""

from __future__ import annotations

from pathlib import Path

import torch

from trickster import plan
from trickster.config import Config
from trickster.errors import UserError

OUT_OF_MEMORY = (torch.OutOfMemoryError, MemoryError)


def out_of_memory(
    cfg: Config, device: torch.device, during: str, step: int, checkpoint: Path | None, world_size: int = 1
) -> UserError:
    """The one line for an out-of-memory error `during` "a training step" or "an evaluation"."""
    t = cfg.training
    capacity, what = plan.memory_limit(cfg, device)
    fit = min(plan.fitting_batch(cfg, plan.HEADROOM * capacity), t.batch_size // 2)
    if fit >= 1:
        share = t.batch_size * t.gradient_accumulation_steps
        micro, accumulation = plan.split_global_batch(share * world_size, world_size, fit)
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
