"""What a training run prints: one channel for the header, the step lines, evaluations and warnings.

Quiet log levels and processes other than rank 0 print nothing (problems still arrive as errors).
With a progress bar (only on a terminal unless asked), the periodic train line becomes the bar's
postfix and every other line is written above the bar, so the two never tear each other.
"""

from __future__ import annotations

import sys
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
