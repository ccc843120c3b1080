"""What a training run prints: one channel for the header, the step lines, evaluations and warnings.

Quiet log levels and processes other than rank 0 print nothing (problems still arrive as errors).
With a progress bar (only on a terminal unless asked), the periodic train line becomes the bar's
postfix and every other line is written above the bar, so the two never tear each other.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from tqdm import tqdm

QUIET_LEVELS = ("warning", "error")


class Console:
    def __init__(self, echo: Callable[[str], object], level: str, speaks: bool, progress: bool | None):
        self.speaks = speaks and level not in QUIET_LEVELS
        self.debug = level == "debug"
        self._echo = echo
        self._progress = progress
        self._bar: tqdm | None = None

    def line(self, text: str) -> None:
        if not self.speaks:
            return
        if self._bar is not None:
            self._bar.write(text)
        else:
            self._echo(text)

    def start_bar(self, enabled_in_config: bool, total: int, initial: int) -> None:
        """A bar redraws in place: in a log file (not a terminal) plain lines read better."""
        wanted = enabled_in_config and sys.stderr.isatty() if self._progress is None else self._progress
        if self.speaks and wanted:
            self._bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, leave=True)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def progress(self, postfix: dict, text: str) -> None:
        """The periodic train figures: the bar's postfix, or a line of their own."""
        if self._bar is not None:
            self._bar.set_postfix(**postfix)
        else:
            self.line(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class SlowPass:
    """One line, the first time a pass over batches (an evaluation) runs long, with how far it got
    and its pace: a large model's first evaluation on a CPU takes a minute, during which the run
    would otherwise print nothing. Said once per process: later passes take as long."""

    AFTER_SECONDS = 5.0

    def __init__(self, line: Callable[[str], None]):
        self._line = line
        self._said = False
        self._what, self._began = "", 0.0

    def start(self, what: str) -> None:
        self._what, self._began = what, time.perf_counter()

    def __call__(self, done: int, total: int) -> None:
        if self._said or done == total:
            return
        elapsed = time.perf_counter() - self._began
        if elapsed < self.AFTER_SECONDS:
            return
        self._said = True
        left = elapsed / done * (total - done)
        self._line(
            f"{self._what}: {done:,} of {total:,} batches in {elapsed:,.0f} s, about {left:,.0f} s to go"
        )
