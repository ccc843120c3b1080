"""Start `torchrun ARGS...`, kill the launcher with SIGKILL as soon as its workers have started (as
a user or a scheduler that spares the workers would), and wait for the orphaned workers to end;
then print their exit statuses, sorted, as the last line of stdout in JSON (used by test_dist.py):

    python -m tests.launcher_killed --standalone --nproc-per-node 2 -m trickster train ...

This process makes itself the workers' subreaper (Linux's prctl PR_SET_CHILD_SUBREAPER): orphaned
by the launcher's death, they become its children, so it can wait for them and read their exit
statuses. The workers write to this process's stdout and stderr, which they inherit.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_CHILD_SUBREAPER = 36


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:  # the thread ended meanwhile
            pass
    return found


def main(argv: list[str], workers_expected: int = 2, timeout: float = 240) -> list[int]:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *argv])
    deadline = time.monotonic() + timeout
    while len(workers := children(launcher.pid)) < workers_expected:
        if launcher.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"torchrun started {len(workers)} worker(s), then ended: {launcher.returncode}")
        time.sleep(0.01)
    launcher.send_signal(signal.SIGKILL)  # the workers are still importing torch: none joined yet
    launcher.wait()
    statuses = {}
    while len(statuses) < len(workers):
        pid, status = os.waitpid(-1, os.WNOHANG)  # the orphans are this process's children now
        if pid in workers:
            statuses[pid] = os.waitstatus_to_exitcode(status)
        elif time.monotonic() > deadline:  # none is left behind, whatever the test finds
            for worker in set(workers) - set(statuses):
                os.kill(worker, signal.SIGKILL)
            deadline = math.inf
        elif pid == 0:
            time.sleep(0.05)
    return sorted(statuses.values())


if __name__ == "__main__":
    statuses = main(sys.argv[1:])
    print(json.dumps(statuses), flush=True)
