"""status.json: a live run's heartbeat, rewritten atomically at every log interval.

    {"state": "running", "pid": 4242, "host": "box", "step": 1200, "max_steps": 10000,
     "train_loss": 1.93, "tokens_per_sec": 5400.0, "eta_seconds": 3100.0, "updated": 1764380000.0}

`state` is running while the process trains, then finished, stopped (a signal, the time budget,
too many rollbacks) or failed (an error). A process that dies without a word (SIGKILL, a power
cut, the out-of-memory killer) leaves "running" behind: `liveness` tells it apart by checking
that the process still exists, so `trickster runs` shows it as stopped.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

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
    path = Path(run_dir) / STATUS
    staging = path.with_name(f".{STATUS}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(record) + "\n", encoding="utf-8")
    os.replace(staging, path)
    return record


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
    return "running" if _process_exists(status.get("pid")) else "stopped"


def heartbeat_age(status: dict, now: float | None = None) -> float:
    return max(0.0, (now or time.time()) - float(status.get("updated", 0)))


def _process_exists(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process with that id: alive
        return True
    return True
