"""Runs stopped between their evaluations: resumed to end at the very step they stopped at, and as
`trickster runs` and the report show them before their first evaluation after step 0."""

from __future__ import annotations

import os
import signal

from trickster import cli, run_checkpoints
from trickster.train import loop
from trickster.train.loop import train

from .conftest import QUIET, events, micro_config, text_reads


def stopped_at(shakespeare_dir, tmp_path, monkeypatch, step: int, **training):
    """A micro run (eval_every 20) stopped by SIGTERM during step `step`."""
    values = {"max_steps": 40, "warmup_steps": 0, "sample_tokens": 0, **training}
    cfg = micro_config(shakespeare_dir, tmp_path / "run", training_config=values)
    real_step = loop.Trainer.step

    def stopping(trainer):
        if trainer.state.step == step - 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return real_step(trainer)

    monkeypatch.setattr(loop.Trainer, "step", stopping)
    assert train(cfg, **QUIET).exit_signal == signal.SIGTERM
    monkeypatch.setattr(loop.Trainer, "step", real_step)
    return cfg


def test_a_run_resumed_to_end_at_the_step_it_stopped_at_is_evaluated_there(
    shakespeare_dir, tmp_path, monkeypatch
):
    """Stopped at step 5 (its checkpoint step_000005, no evaluation there), resumed with
    max_steps=5: no step is left, and the run ended with `final` and no evaluation of its last
    step, unlike every run that reaches its last step; its `best` was none."""
    cfg = stopped_at(shakespeare_dir, tmp_path, monkeypatch, 5)
    cfg.training.max_steps = 5
    result = train(cfg, resume=True, **QUIET)
    run = tmp_path / "run"
    assert [e["step"] for e in events(run, "eval")] == [0, 5]
    assert (
        result.state.step == 5
        and events(run, "end")[0]["best_val_loss"] == events(run, "eval")[1]["val_loss"]
    )
    final = run_checkpoints.read_info(run / "checkpoints" / "final")
    assert final["val_loss"] == events(run, "eval")[1]["val_loss"]
    assert (run / "checkpoints" / "best").is_dir()


def test_a_run_resumed_at_its_last_step_reads_its_checkpoint_s_config_once(
    shakespeare_dir, tmp_path, monkeypatch
):
    """Whether the checkpoint was saved off its eval_every (so the last step is evaluated on
    resume) is told by the checkpoint's config.yaml as the resume read it: it was read again."""
    cfg = stopped_at(shakespeare_dir, tmp_path, monkeypatch, 5)
    cfg.training.max_steps = 5
    reads = text_reads(monkeypatch)
    train(cfg, resume=True, **QUIET)
    assert [e["step"] for e in events(tmp_path / "run", "eval")] == [0, 5]  # the last step evaluated
    assert reads.count(tmp_path / "run" / "checkpoints" / "step_000005" / "config.yaml") == 1


def test_runs_says_why_a_run_stopped_before_its_first_evaluation_has_no_best(
    shakespeare_dir, tmp_path, monkeypatch, capsys
):
    stopped_at(shakespeare_dir, tmp_path, monkeypatch, 5)
    assert cli.main(["runs", str(tmp_path)]) == 0
    header, row = capsys.readouterr().out.splitlines()
    # the best val loss column said `-`: as if the run had been evaluated and found nothing
    assert "  none yet (first at step 20)  " in row, row
