"""A training run whose terminal or output is gone (the `tee` or `head` it printed into ended, an
ssh session closed): it trains to its end, or on SIGHUP stops with a checkpoint (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import trickster
from trickster import run_checkpoints
from trickster.config import save_config

from . import children
from .conftest import micro_config


def test_a_run_whose_output_pipe_closes_trains_to_its_end(shakespeare_dir, tmp_path):
    training = {"max_steps": 6, "log_every": 1, "save_every": 3, "eval_every": 3, "sample_tokens": 4}
    cfg = micro_config(shakespeare_dir, tmp_path / "run", training_config=training)
    save_config(cfg, tmp_path / "run.yaml")
    child = children.Child("trickster", "train", "--config", str(tmp_path / "run.yaml"))
    assert child.stdout.readline().startswith("=")  # the header has begun: `| head -n 1` ends here
    child.stdout.close()
    child.stderr.close()
    assert child.wait(timeout=300) == 0
    run = tmp_path / "run"
    assert (
        run_checkpoints.checkpoint_step(run / "checkpoints" / "final") == 6
    )  # the old code stopped at step 0
    steps = [e["step"] for e in map(json.loads, (run / "metrics.jsonl").open()) if e["event"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def hangup_after_first_step(child) -> tuple[int, str]:
    """SIGHUP, as a closed terminal sends it, once the run has logged step 1: (exit status, what
    the run printed after that on stdout and stderr)."""
    while (line := child.stdout.readline()) and not line.startswith("step      1:"):
        pass
    os.kill(child.pid, signal.SIGHUP)
    out, err = child.communicate(timeout=300)
    return child.returncode, out + err


def test_a_closed_terminal_stops_the_run_with_a_checkpoint(shakespeare_dir, tmp_path):
    """SIGHUP's default ended the process at once: the steps since the last checkpoint were lost."""
    training = {"max_steps": 40, "log_every": 1, "save_every": 100, "eval_every": 100, "sample_tokens": 0}
    cfg = micro_config(shakespeare_dir, tmp_path / "run", training_config=training)
    save_config(cfg, tmp_path / "run.yaml")
    argv = ["train", "--config", str(tmp_path / "run.yaml")]
    status, err = hangup_after_first_step(children.Child("trickster", *argv))
    assert status == 128 + signal.SIGHUP, err
    saved = run_checkpoints.latest(tmp_path / "run")
    assert (
        saved is not None
        and f"stopped by SIGHUP at step {run_checkpoints.checkpoint_step(saved)}; saved" in err
    ), err


def test_a_run_under_nohup_ignores_the_hangup(shakespeare_dir, tmp_path):
    training = {"max_steps": 6, "log_every": 1, "save_every": 100, "eval_every": 100, "sample_tokens": 0}
    cfg = micro_config(shakespeare_dir, tmp_path / "run", training_config=training)
    save_config(cfg, tmp_path / "run.yaml")
    argv = ["train", "--config", str(tmp_path / "run.yaml")]
    source = str(Path(trickster.__file__).parent.parent)
    child = subprocess.Popen(
        ["nohup", sys.executable, "-m", "trickster", *argv],
        env={**os.environ, "PYTHONPATH": source},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    status, err = hangup_after_first_step(child)
    assert status == 0, err
    assert run_checkpoints.checkpoint_step(tmp_path / "run" / "checkpoints" / "final") == 6
