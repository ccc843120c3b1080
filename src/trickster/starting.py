"""A Ctrl-C while a command starts: `interrupted` and exit status 130 at once, as later.

Until its modules are loaded (argparse and the parser, then torch: seconds on a busy machine), a
command has nothing to tidy. Python's own handler raises KeyboardInterrupt wherever the
interpreter is, which there is inside an import: outside cli.main's `except` (a traceback and
"killed by SIGINT"), or inside Python code that torch's C++ calls while it loads, where it
aborted the process (`terminate called after throwing an instance of
'pybind11::error_already_set'`) or left CPython's flag for an unhandled KeyboardInterrupt set, so
the process said `interrupted` and then died of SIGINT all the same. So until then the handler
ends the process itself; once loaded, Python's handler is back, and the command's own handling
(training's stop after a step, a preparation's partial folder) takes the Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

INTERRUPTED_EXIT = 130  # 128 + SIGINT, as a shell reports a process ended by Ctrl-C


def _end_at_once(signum, frame) -> None:
    with contextlib.suppress(OSError, ValueError):  # stderr closed or gone: the status still says it
        sys.stderr.write("interrupted\n")
        sys.stderr.flush()
    os._exit(INTERRUPTED_EXIT)


def end_at_once() -> None:
    """Ctrl-C ends the process at once from here on; nothing changes where SIGINT is not Python's
    default: ignored (a job started with `&` by a script, which asked for that), or an embedding
    program's own handler, or off the main thread, where no handler can be set."""
    if signal.getsignal(signal.SIGINT) not in (signal.default_int_handler, _end_at_once):
        return
    with contextlib.suppress(ValueError):  # not the main thread
        signal.signal(signal.SIGINT, _end_at_once)


@contextlib.contextmanager
def while_loading() -> Iterator[None]:
    """Ctrl-C ends the process at once inside the block (loading a command), and raises
    KeyboardInterrupt again after it, however the block ends (a caller in the same process, such
    as a test calling cli.main, gets Python's handler back)."""
    end_at_once()
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is _end_at_once:  # so the main thread's
            signal.signal(signal.SIGINT, signal.default_int_handler)
