"""Time: `training_config.max_time`, and what the first step says about the run's length.

The budget counts the wall time the training loop has run, summed over every resume
(TrainState.train_seconds), so `--resume` with a larger budget continues where the last one
stopped, and the same budget again has nothing left to spend.
"""

from __future__ import annotations

import time

from trickster.config import TrainingConfig
from trickster.errors import UserError
from trickster.units import format_duration, parse_duration

LONG_RUN = 86400.0  # without a budget, a schedule that promises more than a day gets a warning


class Clock:
    """Seconds of training so far: those of earlier sessions (from the checkpoint) plus this one's."""

    def __init__(self, t: TrainingConfig):
        self.budget = parse_duration(t.max_time) if t.max_time is not None else None
        self.start(0.0)

    def start(self, seconds_before: float) -> None:
        self.before, self.started = seconds_before, time.monotonic()

    def seconds(self) -> float:
        return self.before + time.monotonic() - self.started

    def out_of_time(self) -> bool:
        return self.budget is not None and self.seconds() >= self.budget

    def check_left(self, step: int, max_steps: int) -> None:
        """Refuse to continue a run whose budget is already spent (a resume with the same one)."""
        if self.out_of_time() and step < max_steps:
            raise UserError(
                f"the time budget training_config.max_time ({format_duration(self.budget)}) is spent: "
                f"the run has trained {format_duration(self.before)} and stopped at step {step:,} of "
                f"{max_steps:,}; raise max_time to continue with --resume"
            )

    def end_line(self, step: int, max_steps: int) -> str:
        return (
            f"time budget training_config.max_time ({format_duration(self.budget)}) reached at step "
            f"{step:,} of {max_steps:,} ({step / max_steps:.0%} of the schedule); saved checkpoints/final; "
            "continue with --resume and a larger max_time"
        )

    def first_step_note(self, step_seconds: float, step: int, max_steps: int) -> str | None:
        """After the first step: a warning when the schedule will take far longer than the settings
        suggest (more than max_time, or more than a day without one); None otherwise."""
        steps_left = max_steps - step
        left = step_seconds * steps_left
        start = f"the first step took {_step_time(step_seconds)}: the {steps_left:,} steps left need about"
        if self.budget is not None and self.seconds() + left > self.budget:
            reach = step + int(max(self.budget - self.seconds(), 0) / step_seconds)
            return (
                f"{start} {format_duration(left)}, more than training_config.max_time "
                f"({format_duration(self.budget)}) allows: it will stop the run near step {reach:,} "
                f"of {max_steps:,}"
            )
        if self.budget is None and left > LONG_RUN:
            return (
                f"{start} {format_duration(left)} at this pace; if that is not what you meant, stop "
                "with Ctrl-C and check model_config.max_seq_len, training_config.batch_size and "
                "max_steps (`trickster plan` estimates a config), or set training_config.max_time"
            )
        return None


def _step_time(seconds: float) -> str:
    """A step's time: whole seconds would say a step of 0.4 s took "0s", while its many steps left
    are what the warning is about; under 10 s it keeps two significant figures (0.47s, 3.2s)."""
    return f"{seconds:.2g}s" if seconds < 9.5 else format_duration(seconds)
