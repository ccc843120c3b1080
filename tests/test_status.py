"""status.json: written whole or not at all, and read back as running or stopped by whether the
process that wrote it still exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from trickster.observe.status import STATUS, liveness, read_status, write_status


def test_written_atomically_and_read_back(tmp_path):
    record = write_status(tmp_path, "running", step=12, max_steps=100, train_loss=2.5)
    assert read_status(tmp_path) == record
    assert record["pid"] == os.getpid() and record["step"] == 12
    assert [p.name for p in tmp_path.iterdir()] == [STATUS]  # no staging file left behind
    write_status(tmp_path, "finished", step=100, max_steps=100)
    assert read_status(tmp_path)["state"] == "finished"


def test_a_live_process_is_running_and_a_dead_one_stopped(tmp_path):
    assert liveness(write_status(tmp_path, "running", step=1)) == "running"
    child = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead = {**read_status(tmp_path), "pid": int(child.stdout)}  # that process has exited
    assert liveness(dead) == "stopped"
    assert liveness({**dead, "host": "another-machine"}) == "running?"  # cannot check from here
    assert liveness({**dead, "state": "finished"}) == "finished"


def test_missing_or_damaged_status_reads_as_none(tmp_path):
    assert read_status(tmp_path) is None
    (tmp_path / STATUS).write_text("{not json")
    assert read_status(tmp_path) is None
    (tmp_path / STATUS).write_text(json.dumps([1, 2]))
    assert read_status(tmp_path) is None


def test_a_dead_runs_id_given_to_a_newer_process_is_not_the_run(tmp_path):
    """Process ids are reused: a container restarted numbers its processes from 1 again, so the id
    of a run killed there (an out-of-memory kill) soon names another process, and the old check,
    that a process of that id exists, showed the dead run as running for good."""
    heartbeat = {**write_status(tmp_path, "running", step=7), "updated": time.time() - 60}
    newer = subprocess.Popen(["sleep", "30"])  # started after the run's last heartbeat
    try:
        assert liveness({**heartbeat, "pid": newer.pid}) == "stopped"
    finally:
        newer.kill()
        newer.wait()
    assert liveness(write_status(tmp_path, "running", step=8)) == "running"  # its writer started before
