"""Where a run stands: its counters, the outcome and timing of its steps, every random generator
it draws from, and what a finished run returns (TrainResult)."""

from __future__ import annotations

import contextlib
import functools
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from trickster.config import Config
from trickster.observe.events import read_metrics


@dataclass
class TrainState:
    """Counters that, with the model, optimizer, sampler and RNGs, define where a run stands."""

    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    last_val_loss: float | None = None
    last_val_step: int | None = None  # the step last_val_loss was measured at
    interval_loss_sum: float = 0.0  # finite train losses since the last log line
    interval_steps: int = 0
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient norm, in all
    nonfinite_streak: int = 0  # ... and in a row, up to now
    rollbacks: int = 0  # returns to an earlier checkpoint after a loss spike
    train_seconds: float = 0.0  # wall time of the training loop, summed over resumes (max_time)

    @property
    def best_loss_seen(self) -> float | None:
        """best_val_loss, or None before the first finite evaluation (JSON has no infinity)."""
        return self.best_val_loss if math.isfinite(self.best_val_loss) else None

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


@dataclass
class StepResult:
    loss: float  # mean over the micro-batches and processes
    grad_norm: float
    lr: float
    applied: bool  # False: a non-finite loss or gradient norm skipped the update
    stop: bool  # a process received SIGINT/SIGTERM
    out_of_time: bool = False  # training_config.max_time is spent (on any process)


class StepTimer:
    """Wall time of the steps since the last log line; evaluations and checkpoints excluded."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.start, self.steps = time.perf_counter(), 0

    @contextlib.contextmanager
    def paused(self):
        paused = time.perf_counter()
        yield
        self.start += time.perf_counter() - paused

    def seconds(self) -> float:
        return time.perf_counter() - self.start


def nonfinite_weights(model: torch.nn.Module) -> torch.Tensor:
    """1.0 on the model's device if any weight this process holds is NaN or inf, else 0.0; no host
    sync. Under FSDP2 a process holds a shard only: dist.sum_across agrees on the verdict."""
    local = [p.to_local() if hasattr(p, "to_local") else p for p in model.parameters()]
    finite = torch.stack([torch.isfinite(p).all() for p in local]).all()
    return (~finite).float()


def rng_state(device: torch.device) -> dict:
    """Every random generator this process draws from (NumPy's as a tensor: no pickled arrays).

    On CUDA, the state of this process's own device only: a run resumed where fewer GPUs are
    visible still finds one state per process.
    """
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def set_rng_state(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng["cuda"]:
        torch.cuda.set_rng_state(rng["cuda"][0], device)
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


@dataclass
class TrainResult:
    cfg: Config  # as resolved for the run (vocab_size filled in)
    run_dir: Path
    state: TrainState
    exit_signal: int | None = None  # SIGINT / SIGTERM if the run was stopped early
    params: int = 0
    finished_before: bool = False  # resume: auto in a run that had done its steps: nothing ran

    @functools.cached_property
    def history(self) -> list[dict]:
        """Every event of the run's metrics.jsonl, read when first asked for: a run of a million
        logged steps holds about 1.5 GB of them, which `trickster train` never asks for. Ask while
        the run folder is still there."""
        return read_metrics(self.run_dir / "metrics.jsonl")
