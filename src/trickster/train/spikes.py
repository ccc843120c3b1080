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
from dataclasses import dataclass


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
