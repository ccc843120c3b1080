"""A training run whose stdout and stderr are gone (the `tee` or `head` it printed into ended, the
terminal of a closed ssh session): it trains to its end, its events still recorded (real process)."""

from __future__ import annotations

import json

from trickster.config import save_config
from trickster.train import checkpoint as ckpt

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
    assert ckpt.checkpoint_step(run / "checkpoints" / "final") == 6  # the old code stopped at step 0
    steps = [e["step"] for e in map(json.loads, (run / "metrics.jsonl").open()) if e["event"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"
