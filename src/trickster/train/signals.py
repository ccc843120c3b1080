"""SIGINT and SIGTERM during training: stop after the current step and save."""

from __future__ import annotations

import contextlib
import signal


class StopSignals:
    """Turn SIGINT/SIGTERM into a flag that the loop checks after each step."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: keep default handling
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
