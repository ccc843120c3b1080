"""Where a run stands: its counters, and every random generator it draws from."""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass
class TrainState:
    """Counters that, with the model, optimizer, sampler and RNGs, define where a run stands."""

    step: int = 0
    tokens_seen: int = 0
    best_val_loss: float = math.inf
    last_val_loss: float | None = None
    interval_loss_sum: float = 0.0  # finite train losses since the last log line
    interval_steps: int = 0
    skipped_steps: int = 0  # updates skipped for a non-finite loss or gradient norm, in all
    nonfinite_streak: int = 0  # ... and in a row, up to now

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for name, value in state.items():
            setattr(self, name, value)


def weights_finite(model: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def rng_state(device: torch.device) -> dict:
    """Every random generator a run may draw from (NumPy's as a tensor: no pickled arrays)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if device.type == "cuda" else [],
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
    }


def set_rng_state(rng: dict, device: torch.device) -> None:
    torch.set_rng_state(rng["torch"])
    if device.type == "cuda" and rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    if "python" in rng:
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in rng:
        kind, keys, pos, has_gauss, cached = rng["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
