"""status.json: a live run's heartbeat, rewritten atomically at every log interval.

    {"state": "running", "pid": 4242, "host": "box", "step": 1200, "max_steps": 10000,
     "train_loss": 1.93, "tokens_per_sec": 5400.0, "eta_seconds": 3100.0, "updated": 1764380000.0}

`state` is running while the process trains, then finished, stopped (a signal, the time budget,
too many rollbacks) or failed (an error). A process that dies without a word (SIGKILL, a power
cut, the out-of-memory killer) leaves "running" behind: `liveness` tells it apart by checking
that the process still exists and started before the heartbeat (not one given the same id since),
so `trickster runs` shows it as stopped.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

from trickster.atomic import process_exists, replace_file
from trickster.errors import FULL

STATUS = "status.json"


def write_status(run_dir: str | Path, state: str, **fields) -> dict:
    """Replace RUN_DIR/status.json in one rename: a reader sees the old file or the new one."""
    record = {
        "state": state,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        **fields,
        "updated": round(time.time(), 3),
    }
    text = json.dumps(record) + "\n"
    try:
        replace_file(Path(run_dir) / STATUS, text, durable=False)  # a heartbeat
    except OSError as err:
        if err.errno not in FULL:
            raise
        _rewrite_in_place(Path(run_dir) / STATUS, text.encode())
    return record


def _rewrite_in_place(path: Path, data: bytes) -> None:
    """status.json rewritten over its own bytes, on a full disk, where its new copy found no room
    (its last word, `stopped`, would be lost and the run read as still running): a file of a few
    hundred bytes keeps the block it has (ext4, XFS, tmpfs), so the write needs none. A reader
    may meet it half-written for that moment (read_status: no heartbeat)."""
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()


def read_status(run_dir: str | Path) -> dict | None:
    """The last heartbeat, or None when the run never wrote one (or it cannot be read)."""
    try:
        record = json.loads((Path(run_dir) / STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and "state" in record else None


def liveness(status: dict) -> str:
    """What a heartbeat says now: "running", "running?" (another machine's process, whose
    existence cannot be checked here), or the state it ended in ("stopped" when it died)."""
    if status.get("state") != "running":
        return str(status.get("state"))
    if status.get("host") != socket.gethostname():
        return "running?"
    pid = status.get("pid")
    alive = process_exists(pid) and not started_after(pid, status.get("updated"))
    return "running" if alive else "stopped"


SILENT_AFTER_S = 600  # the least quiet that counts: an evaluation or a large checkpoint takes minutes


def silent_for(status: dict, log_every: int | None, now: float | None = None) -> float | None:
    """How long a running heartbeat has been quiet, when that is far longer than its pace leads
    one to expect (3 log intervals, at least SILENT_AFTER_S): a process that still exists but no
    longer trains (stuck in a collective, a hung file system, stopped with SIGSTOP). Else None."""
    updated, step, max_steps = status.get("updated"), status.get("step"), status.get("max_steps")
    if not isinstance(updated, (int, float)):
        return None
    quiet = (time.time() if now is None else now) - updated
    eta, expected = status.get("eta_seconds"), 0.0
    steps_left = max_steps - step if isinstance(step, int) and isinstance(max_steps, int) else 0
    if isinstance(eta, (int, float)) and steps_left > 0:  # eta / steps_left: its pace, per step
        expected = 3 * (eta / steps_left) * (log_every or 1)
    return quiet if quiet > max(SILENT_AFTER_S, expected) else None


def started_after(pid, moment) -> bool:
    """Whether process `pid` started after `moment` (seconds since the epoch): then it is not the
    run that wrote the heartbeat at that moment, but one given its id since (ids are reused: a
    container restarted, whose processes are numbered from 1 again; a reboot). Linux only, from
    /proc; False where that cannot be told."""
    if not isinstance(moment, (int, float)) or not isinstance(pid, int):
        return False
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
        boot = next(int(line.split()[1]) for line in Path("/proc/stat").open() if line.startswith("btime "))
        started = boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22: starttime, in ticks
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return started > moment + 2  # btime is whole seconds


def trains_now(run_dir: str | Path) -> bool:
    """Whether a process trains in `run_dir` now, as its heartbeat says (one on another machine,
    which cannot be checked from here, counts)."""
    status = read_status(run_dir)
    return status is not None and liveness(status) in ("running", "running?")


class Heartbeat:
    """What the training process writes to status.json: at every log interval while it runs and
    once when it ends. Used as a context manager, it records an error that ends the run as
    `stopped` with the error's first line. The time left is this process's pace so far
    (evaluations and checkpoints included) times the steps left."""

    def __init__(self, run_dir: str | Path, max_steps: int, enabled: bool = True):
        self.run_dir, self.max_steps, self.enabled = Path(run_dir), max_steps, enabled
        self.step = self.first_step = 0
        self.started = time.monotonic()

    def start(self, step: int) -> None:
        self.step = self.first_step = step
        self.started = time.monotonic()

    def beat(self, state: str, step: int, **fields) -> None:
        self.step = step
        if not self.enabled:
            return
        done = step - self.first_step
        pace = (time.monotonic() - self.started) / done if done > 0 else None
        eta = round(pace * (self.max_steps - step), 1) if pace is not None and state == "running" else None
        with contextlib.suppress(OSError):  # a full disk shows in metrics.jsonl's writes, not here
            write_status(self.run_dir, state, step=step, max_steps=self.max_steps, eta_seconds=eta, **fields)

    def __enter__(self) -> Heartbeat:
        self.beat("running", self.step)
        return self

    def __exit__(self, kind, error, traceback) -> None:
        if error is None:
            return
        line = (str(error).splitlines() or [kind.__name__])[0][:300]
        reason = getattr(error, "stop_reason", None)  # a word for `trickster runs`, the line beside it
        fields = {"reason": line} if reason is None else {"reason": reason, "error": line}
        self.beat("stopped", self.step, **fields)
