"""SIGINT, SIGTERM and SIGHUP during training: the first stops the run after the current step and
saves; a second one ends the process at once.

A Python signal handler only runs between bytecodes, so while one long step runs inside
PyTorch (hours, with a context that does not fit the machine) it would not run at all. The
second signal is therefore watched from a thread: CPython's C-level handler writes the signal
number to the wakeup file descriptor as soon as the signal arrives, the thread (blocked in
recv, which holds no GIL, as most PyTorch ops hold none) wakes up and ends the process with
os._exit. Checkpoints are written under a temporary name and renamed, so the newest complete
one stays valid; a half-written one is tidied by the next --resume.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from trickster import run_checkpoints
from trickster.errors import Interrupted
from trickster.observe.status import read_status, write_status
from trickster.run_checkpoints import RUN_AGAIN
from trickster.train.run_lock import run_dir_in_use

if TYPE_CHECKING:
    from trickster.train.dist import Dist

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# A closed terminal (an ssh session ended) sends SIGHUP, whose default ends the process without
# a checkpoint; under `nohup` it is ignored, as the user asked, and stays so.
HANGUP = getattr(signal, "SIGHUP", None)


# A job scheduler (SLURM's scancel or preemption) signals every process of a job step: torchrun's
# workers get its SIGTERM and then the one torchrun forwards, within milliseconds. Counted as two,
# they ended the processes at once, without the checkpoint the first one asks for.
REPEAT_WINDOW_S = 2.0
# how a run with no checkpoint goes on: --resume answers 'nothing to resume', resume=auto starts afresh
START = "training_config.resume=auto"


def watched() -> tuple[int, ...]:
    """The signals that stop a run: SIGINT, SIGTERM, and SIGHUP unless the process ignores it."""
    hangup_ignored = HANGUP is None or signal.getsignal(HANGUP) is signal.SIG_IGN
    return SIGNALS if hangup_ignored else (*SIGNALS, HANGUP)


class StopSignals:
    """`received`: the first SIGINT/SIGTERM, which the loop checks after each step.

    `on_first(signum)` runs on the watcher thread when the first signal arrives (a log line);
    `on_repeat(signum)` when another comes within REPEAT_WINDOW_S of it, which is taken as the same
    request; `on_second(signum)` runs just before the process exits with 128 + signum, as a shell
    would report a process killed by that signal.
    """

    def __init__(self, on_first=None, on_second=None, on_repeat=None):
        self.received: int | None = None
        self.on_first, self.on_second, self.on_repeat = on_first, on_second, on_repeat
        self._previous: dict = {}
        self._previous_fd = -1
        self._signals: tuple[int, ...] = SIGNALS
        self._reader = self._writer = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are only delivered to the main thread's handlers: keep the defaults
        self._reader, self._writer = socket.socketpair()
        self._writer.setblocking(False)
        self._signals = watched()
        for sig in self._signals:
            self._previous[sig] = signal.signal(sig, self._handle)
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="stop-signals", daemon=True)
        self._thread.start()
        return self

    def _handle(self, signum, frame) -> None:
        if self.received is None:
            self.received = signum

    def _watch(self) -> None:
        first_at: float | None = None  # the first signal's; one within REPEAT_WINDOW_S of it is a repeat
        while True:
            try:
                data = self._reader.recv(64)
            except OSError:
                return
            if not data:  # closed by __exit__
                return
            for signum in data:
                if signum not in self._signals:
                    continue
                if first_at is None:
                    first_at = time.monotonic()
                    self.received = self.received or signum
                    if self.on_first:
                        self.on_first(signum)
                elif time.monotonic() - first_at < REPEAT_WINDOW_S:
                    if self.on_repeat:
                        self.on_repeat(signum)
                else:
                    if self.on_second:
                        self.on_second(signum)
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(128 + signum)

    def __exit__(self, *exc) -> None:
        if self._thread is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        with contextlib.suppress(OSError):
            self._writer.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=5)
        self._reader.close()
        self._writer.close()
        self._thread = None


def continue_command(run_dir: Path, job: Dist | None = None, how: str = "--resume") -> str:
    """The whole command that continues the run in `run_dir` (a run `trickster quickstart` started
    has no --resume of its own); a job of several processes under torchrun with as many again: one
    process alone may not hold what they shared."""
    command = f"trickster train --config {shlex.quote(str(run_dir / 'config.yaml'))} {how}"
    if job is not None and job.world_size > 1:
        command = f"torchrun --nproc-per-node {job.local_world_size} -m {command}"
        if job.world_size > job.local_world_size:
            command += " (on each node, with the job's other torchrun options)"
    return command


def announce_signals(run_dir: Path, job: Dist | None = None) -> tuple:
    """(on_first, on_second, on_repeat) callbacks for a training run: a line on stderr for each
    signal."""

    def say(signum: int, what: str) -> None:
        print(f"{signal.Signals(signum).name} {what}", file=sys.stderr, flush=True)

    def first(signum: int) -> None:
        say(
            signum,
            "received: stopping after this step and saving a checkpoint; send it again to stop at once",
        )

    def repeat(signum: int) -> None:
        say(
            signum,
            f"again within {REPEAT_WINDOW_S:g} s: taken as the same request (a job scheduler signals "
            "every process, torchrun forwards its own); send it again to stop at once",
        )

    def second(signum: int) -> None:
        newest = run_checkpoints.latest(run_dir)
        where = (
            f"checkpoints/{newest.name} is the newest checkpoint"
            if newest
            else run_checkpoints.none_saved(run_dir)
        )
        name = signal.Signals(signum).name
        again = continue_command(run_dir, job, "--resume" if newest else START)
        print(f"second {name}: stopped at once; {where}; continue with: {again}", file=sys.stderr, flush=True)
        _last_word(run_dir, f"second {name}, stopped at once")

    return first, second, repeat


def _last_word(run_dir: Path, reason: str) -> None:
    """status.json says why the process ended: left `running`, `trickster runs` and the report
    called a run stopped by a second Ctrl-C one whose process died without a word."""
    last = read_status(run_dir) or {}
    with contextlib.suppress(OSError):  # the process ends now whatever becomes of its heartbeat
        write_status(
            run_dir, "stopped", step=last.get("step"), max_steps=last.get("max_steps"), reason=reason
        )


class _StopSignal(KeyboardInterrupt):
    """SIGTERM or SIGHUP while the run starts, raised where the main thread is, as Ctrl-C's
    KeyboardInterrupt is: the blocks around it (the run folder's claim) tidy on the way out."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StoppedStarting(Interrupted):
    """The one line of a run stopped by a signal before it trained (`interrupted: ...`), with the
    exit status a shell gives a process that signal ended."""

    def __init__(self, signum: int, run_dir: Path):
        super().__init__(f"{signal.Signals(signum).name} before the first step; {_go_on(run_dir)}")
        self.exit_status = 128 + signum


def _go_on(run_dir: Path) -> str:
    """What the run folder holds once the stopped start has tidied, and the command that goes on."""
    if run_checkpoints.latest(run_dir) is not None:
        return f"the checkpoints are as they were; continue with: {continue_command(run_dir)}"
    if not run_dir_in_use(run_dir):
        return "nothing was written; run the same command again"
    none = run_checkpoints.none_saved(run_dir)
    if (run_dir / "config.yaml").is_file():  # the run's files are written: the same command is refused
        return f"{none}; continue with: {continue_command(run_dir, how=START)}"
    return f"{none}; {RUN_AGAIN}"


@contextlib.contextmanager
def while_starting(run_dir: Path) -> Iterator[None]:
    """SIGTERM and SIGHUP in the block (loading the data, batch_size: auto's trial steps, building
    the model, loading a checkpoint) stop the run as Ctrl-C does: an exception where the main thread
    is, so the run folder's lock and an empty checkpoints/ it made are removed on the way out;
    their default ended the process at once and left both. Then the one line StoppedStarting.
    StopSignals takes the signals over while the run trains, and gives them back to this. A signal
    within REPEAT_WINDOW_S of the first is the same request (a scheduler's and torchrun's); a later
    one ends the process at once. A signal the process ignores (SIGHUP under nohup) stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    first_at: list[float] = []

    def stop(signum, frame) -> None:
        if not first_at:
            first_at.append(time.monotonic())
            raise _StopSignal(signum)
        if time.monotonic() - first_at[0] >= REPEAT_WINDOW_S:
            os._exit(128 + signum)

    previous = {sig: signal.getsignal(sig) for sig in watched()}
    defaults = (signal.SIG_DFL, signal.default_int_handler)
    taken = [sig for sig, handler in previous.items() if handler in defaults]
    for sig in taken:
        signal.signal(sig, stop)
    try:
        yield
    except KeyboardInterrupt as stopped:
        if isinstance(stopped, Interrupted):  # worded already
            raise
        raise StoppedStarting(getattr(stopped, "signum", signal.SIGINT), run_dir) from None
    finally:
        for sig in taken:
            signal.signal(sig, previous[sig])
