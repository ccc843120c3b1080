"""A training run's stdout and stderr lost (the `tee` or `head` it printed into gone, the terminal
of a closed ssh session, a full disk under `> train.log`): the run trains on, and what it would
have printed goes to /dev/null. metrics.jsonl and status.json still record every step.

Python raises BrokenPipeError (EPIPE), or OSError (EIO on a hung-up terminal, ENOSPC), at the
first print after that. Unguarded, that print ended the run before its next checkpoint, and a
BrokenPipeError with exit status 0, as if it had finished. The stream's file descriptor is pointed
at /dev/null once its first write fails, as Python's documentation advises for SIGPIPE, so what
its buffer still holds, tqdm's bar and the flush at exit (which would make the exit status 120)
write nowhere instead of failing again.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator


class Guarded:
    """A text stream whose failed writes send the stream's descriptor to /dev/null."""

    def __init__(self, stream):
        self._stream = stream

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except OSError:
            self._to_devnull()
            return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError:
            self._to_devnull()

    def _to_devnull(self) -> None:
        to_devnull(self._stream)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()  # the buffered rest, now into /dev/null


def to_devnull(stream) -> None:
    """`stream`'s file descriptor pointed at /dev/null (where it has one)."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)


@contextlib.contextmanager
def tolerated() -> Iterator[None]:
    """sys.stdout and sys.stderr guarded while the block runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = Guarded(sys.stdout), Guarded(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
