"""Loss spikes: the train loss far above its recent running median for several steps in a row.

A step's loss counts as high when it exceeds `factor` x the median of the last `window` normal
losses. `steps` high losses in a row make a spike; a shorter run of high losses is noise and
joins the history. High losses never enter the history while they last, so a spike cannot raise
the median it is measured against. Nothing is reported until the history holds `window` losses:
the early, steep part of training is never a spike. Non-finite losses are left to the
non-finite-update check and ignored here.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from trickster import run_checkpoints
from trickster.errors import UserError
from trickster.train import checksums

# why a rollback passed over a checkpoint (rollback_to)
PASSED_OVER = "its files no longer match the checksums saved with them (changed or damaged on disk)"


@dataclass
class Spike:
    first_step: int  # the first step of the run of high losses
    last_step: int  # the step that made it a spike
    peak_loss: float
    median: float  # the running median the losses were compared with


class SpikeDetector:
    """Feed it every step's train loss; it answers with a Spike when one is complete."""

    def __init__(self, factor: float | None, steps: int, window: int):
        self.factor, self.steps, self.window = factor, steps, window
        self.history: deque[float] = deque(maxlen=window)
        self.high: list[tuple[int, float]] = []  # (step, loss) of the current run of high losses

    def update(self, step: int, loss: float) -> Spike | None:
        if self.factor is None or not math.isfinite(loss):
            return None
        median = statistics.median(self.history) if len(self.history) == self.window else None
        if median is None or loss <= self.factor * median:
            self.history.extend(value for _, value in self.high)  # a short run was noise
            self.high.clear()
            self.history.append(loss)
            return None
        self.high.append((step, loss))
        if len(self.high) < self.steps:
            return None
        spike = Spike(self.high[0][0], step, max(value for _, value in self.high), median)
        self.high.clear()
        return spike

    def state_dict(self) -> dict:
        return {"history": list(self.history), "high": [list(pair) for pair in self.high]}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(state.get("history", []), maxlen=self.window)
        self.high = [(int(step), float(loss)) for step, loss in state.get("high", [])]


class Rollback(NamedTuple):
    """Where a rollback returns to, from one listing of the run's checkpoints (rollback_to)."""

    checkpoint: Path | None  # the newest numbered one before the spike whose files are intact
    passed_over: list[str]  # the newer ones whose files changed on disk since they were written
    later: list[Path]  # the numbered ones and `final` saved after `checkpoint`: to be discarded
    info: dict | None = None  # checkpoint's info.json, as read for its sums (its own val loss)


def rollback_to(run_dir: Path, step: int, files: tuple[str, ...]) -> Rollback:
    """The checkpoint a rollback returns to: the newest numbered one saved before `step` whose
    `files` (those a resume reads) still match the checksums saved with them; the names of the
    newer ones it passes over because theirs do not (changed on disk since they were written); and
    the checkpoints a resume would take that were saved after it (discard). Each one's info.json is
    read once, for its step and its sums."""
    listed = run_checkpoints.with_info(run_checkpoints.continuable(run_dir))  # oldest first, then final
    passed_over = []
    for path, info in reversed(listed):
        if path.name == "final" or info["step"] >= step:
            continue
        if checksums.first_changed(path, files, info) is None:
            later = [p for p, saved in listed if saved["step"] > info["step"]]
            return Rollback(path, passed_over, later, info)
        passed_over.append(path.name)
    return Rollback(None, passed_over, [])


def discard(checkpoints: list[Path]) -> None:
    """Delete the checkpoints saved after the one a rollback returns to (Rollback.later): they hold
    the spike's weights, or a later point of the schedule that is about to be replayed, and a
    resume must never pick them. `best` is never among them: it was chosen by validation loss."""
    for path in checkpoints:
        run_checkpoints.remove(path)


def spike_line(
    spike: Spike, rolled_back_to: str | None, rollbacks: int, limit: int, passed_over: Sequence[str] = ()
) -> str:
    at = (
        f"step {spike.first_step}"
        if spike.first_step == spike.last_step
        else f"steps {spike.first_step}-{spike.last_step}"
    )
    # two decimals: with spike_factor 1.05 a spike of 1.04x read '1.0x', below the factor it passed
    what = (
        f"step {spike.last_step:>6}: loss spike at {at} (up to {spike.peak_loss:.4f}, "
        f"{spike.peak_loss / spike.median:.2f}x the running median {spike.median:.4f})"
    )
    if passed_over:  # the rollback's own check (rollback_to)
        what += f"; passed over checkpoints/{' and '.join(passed_over)}: {PASSED_OVER}"
    if rolled_back_to is None:
        return f"{what}; no checkpoint before it to return to, training on"
    return (
        f"{what}; rolled back to checkpoints/{rolled_back_to}, skipping the batches of steps "
        f"{spike.first_step - 1}-{spike.last_step} (rollback {rollbacks} of at most {limit})"
    )


def too_many_spikes(spike: Spike, good: Path, limit: int) -> UserError:
    return UserError(
        f"training stopped at step {spike.last_step}: another loss spike (steps {spike.first_step}-"
        f"{spike.last_step}) after {limit} rollbacks; the last good checkpoint is checkpoints/{good.name}; "
        "lower training_config.learning_rate or raise warmup_steps (or raise max_rollbacks), then "
        "continue with --resume"
    )
