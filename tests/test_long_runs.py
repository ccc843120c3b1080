"""Runs that look after themselves, on real micro runs: a loss spike rolled back, checkpoints
saved before evaluation, batch_size: auto, a time budget, the heartbeat, and the warning after a
first step that promises a very long run."""

from __future__ import annotations

import json
import signal
import threading
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trickster import footprint, run_checkpoints
from trickster.cli import main
from trickster.config import load_config, save_config
from trickster.data import loader
from trickster.errors import UserError
from trickster.observe.curves import Curves
from trickster.observe.plots import loss_figure
from trickster.observe.status import read_status
from trickster.train import budget, loop, optim
from trickster.train.loop import train

from . import children
from .conftest import QUIET, micro_config
from .dist_child import spiking_schedule

SPIKE = {  # 30 steps, a checkpoint every 5, every loss logged, a spike window of 8 losses
    "max_steps": 30,
    "warmup_steps": 2,
    "log_every": 1,
    "eval_every": 100,
    "save_every": 5,
    "sample_tokens": 0,
    "spike_window": 8,
}


def raise_lr_once(monkeypatch):
    """A real spike: the learning rate of three updates (steps 15 to 17) x100, the first time they
    run only (a replay after the rollback gets the schedule's own)."""
    monkeypatch.setattr(optim, "lr_at", spiking_schedule(optim.lr_at))


def losses(result) -> list[tuple[int, float]]:
    return [(r["step"], r["train_loss"]) for r in result.history if r["event"] == "train"]


def weights(run_dir):
    return load_file(run_dir / "checkpoints" / "final" / "model.safetensors")


@pytest.mark.slow
def test_a_loss_spike_rolls_back_and_goes_on_as_if_its_batches_were_never_drawn(micro, monkeypatch, tmp_path):
    raise_lr_once(monkeypatch)
    said = []
    spiked = train(micro(training_config=SPIKE), echo=said.append)
    monkeypatch.undo()

    rollback = next(r for r in spiked.history if r["event"] == "rollback")
    first, last = rollback["first_step"], rollback["last_step"]
    assert rollback["checkpoint"] == "step_000015" and rollback["step"] == 15
    assert 17 <= first <= last <= 21 and rollback["peak_loss"] > 2 * rollback["median"]
    assert any(
        "loss spike at steps" in line and "rolled back to checkpoints/step_000015" in line for line in said
    )
    assert spiked.state.rollbacks == 1 and spiked.state.step == 30
    curves = Curves.from_records(spiked.history)  # the report's loss curve: each step once, a mark
    assert curves.train_step == list(range(1, 31))
    assert curves.spikes == [(last, rollback["peak_loss"])]
    assert [step for step, _ in curves.abandoned] == list(range(16, last))  # logged before the rollback
    assert loss_figure(curves) is not None

    # the same run, told from the start to pass over the draws of steps first-1 .. last
    skip = [first - 2, last]  # draw indices: step s draws index s-1 (no accumulation)
    init = loader.BatchSampler.__init__

    def skipping_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.skip(*skip)

    monkeypatch.setattr(loader.BatchSampler, "__init__", skipping_init)
    cfg = micro(training_config=SPIKE)
    cfg.logging.output_dir = str(tmp_path / "clean")
    clean = train(cfg, **QUIET)
    replayed = spiked.history[spiked.history.index(rollback) :]
    after = [(r["step"], r["train_loss"]) for r in replayed if r["event"] == "train"]
    assert after == [(step, loss) for step, loss in losses(clean) if step > 15]
    a, b = weights(spiked.run_dir), weights(clean.run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_the_checkpoint_a_rollback_returns_to_keeps_the_loss_of_its_own_step(micro, monkeypatch):
    """step_000015 is saved before step 15's evaluation, whose loss its info.json then gets. The
    rollback to it saved it again from its trainer.pt, which holds step 10's loss: its info.json
    then gave step 10's loss as step 15's."""
    raise_lr_once(monkeypatch)
    spiked = train(micro(training_config={**SPIKE, "eval_every": 5}), **QUIET)
    rollback = next(r for r in spiked.history if r["event"] == "rollback")
    assert rollback["checkpoint"] == "step_000015"
    measured = {r["step"]: r["val_loss"] for r in spiked.history if r["event"] == "eval"}
    info = run_checkpoints.read_info(spiked.run_dir / "checkpoints" / "step_000015")
    assert info["val_loss"] == measured[15] != measured[10]
    assert info["val_loss_step"] == 15


@pytest.mark.slow
def test_a_rolled_back_run_resumes_exactly(micro, monkeypatch, tmp_path):
    raise_lr_once(monkeypatch)
    whole = train(micro(training_config=SPIKE), **QUIET)
    assert whole.state.rollbacks == 1

    # again, killed (nothing saved) at step 23, after the rollback; then resumed
    raise_lr_once(monkeypatch)
    cfg = micro(training_config=SPIKE)
    cfg.logging.output_dir = str(tmp_path / "killed")
    step, calls = loop.Trainer.step, []

    def dies_at_23(self):
        calls.append(self.state.step)
        if len(calls) > 25 and self.state.step == 22:
            raise KeyboardInterrupt  # as a kill: no checkpoint, no event
        return step(self)

    monkeypatch.setattr(loop.Trainer, "step", dies_at_23)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, **QUIET)
    monkeypatch.setattr(loop.Trainer, "step", step)
    resumed = train(cfg, resume=True, **QUIET)
    assert resumed.state.rollbacks == 1  # the rollback is part of the checkpoint
    a, b = weights(whole.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_spikes_beyond_max_rollbacks_stop_the_run_naming_the_last_good_checkpoint(micro, monkeypatch):
    raise_lr_once(monkeypatch)
    cfg = micro(training_config={**SPIKE, "max_rollbacks": 0})
    with pytest.raises(
        UserError,
        match=r"another loss spike .* after 0 rollbacks; the last good checkpoint is checkpoints/step_000015",
    ):
        train(cfg, **QUIET)
    run = Path(cfg.logging.output_dir)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_000005",
        "step_000010",
        "step_000015",
    ]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert (last["event"], last["reason"], last["checkpoint"]) == ("stopped", "loss-spikes", "step_000015")


@pytest.mark.slow
def test_after_a_stop_for_spikes_a_resume_with_new_settings_counts_fresh_rollbacks(
    micro, monkeypatch, capsys
):
    """max_rollbacks 1: the spike after steps 15-17 is rolled back, the one after 20-22 stops the
    run (from step_000020, saved with 1 rollback counted). The same command again continues the
    count and stops at the same spike; resumed with more warmup, as the stop's line asks, a person
    has acted: the run rolls back again and ends, one rollback counted since."""

    def spiking():  # x100 at steps 15-17, x10,000 at 20-22 (the learning rate is lower by then)
        return spiking_schedule(spiking_schedule(optim_lr_at, (15, 16, 17, 20, 21, 22)), (20, 21, 22))

    optim_lr_at = optim.lr_at
    cfg = micro(training_config={**SPIKE, "max_rollbacks": 1})
    stop = r"spike \(steps 22-24\) after 1 rollbacks; the last good checkpoint is checkpoints/step_000020"
    for resume in (False, True):  # the same command again: the count goes on
        monkeypatch.setattr(optim, "lr_at", spiking())
        with pytest.raises(UserError, match=stop):
            train(cfg, resume=resume, **QUIET)

    monkeypatch.setattr(optim, "lr_at", spiking())
    cfg.training.warmup_steps = 3
    capsys.readouterr()
    resumed = train(cfg, resume=True, echo=print, progress=False)
    out = capsys.readouterr().out
    assert resumed.state.step == 30 and resumed.state.rollbacks == 1
    assert "loss-spike rollbacks counted afresh (the run stopped after 1; " in out
    assert "rolled back to checkpoints/step_000020" in out and "(rollback 1 of at most 1)" in out


@pytest.mark.slow
def test_checkpoints_are_saved_before_evaluation(shakespeare_dir, tmp_path):
    """A kill during the last evaluation (an out-of-memory kill, say) leaves `final` whole."""
    training = {"max_steps": 8, "eval_every": 4, "save_every": 4, "sample_tokens": 0}
    save_config(
        micro_config(shakespeare_dir, tmp_path / "run", training_config=training), tmp_path / "run.yaml"
    )
    argv = ["during-eval", "3", "train", "--config", str(tmp_path / "run.yaml")]
    killed = children.run("tests.crash_child", *argv)
    assert killed.returncode == -signal.SIGKILL, killed.stderr  # in the evaluation at step 8
    final = tmp_path / "run" / "checkpoints" / "final"
    assert run_checkpoints.is_complete(final) and run_checkpoints.checkpoint_step(final) == 8
    assert run_checkpoints.is_complete(tmp_path / "run" / "checkpoints" / "step_000004")


def test_a_checkpoint_saved_before_its_evaluation_records_that_evaluation(micro):
    """step_000004 is written before the evaluation at step 4; its info.json (what `info`, `serve`
    and `runs` show) holds that evaluation's loss, not the one of step 2."""
    training = {"max_steps": 6, "warmup_steps": 1, "eval_every": 2, "save_every": 4, "sample_tokens": 0}
    result = train(micro(training_config=training), **QUIET)
    val = {r["step"]: r["val_loss"] for r in result.history if r["event"] == "eval"}
    folder = result.run_dir / "checkpoints"
    for name, step in (("step_000004", 4), ("final", 6)):
        info = json.loads((folder / name / "info.json").read_text())
        assert (info["step"], info["val_loss"]) == (step, val[step])
        assert info["best_val_loss"] == min(v for s, v in val.items() if 0 < s <= step)


def auto_batch(micro, windows_fitting: float, **training):
    """batch_size: auto for 32 windows a step, in the memory plan's formula gives `windows_fitting`
    windows of the micro model (test_memory.py checks the measurement against the formula)."""
    sized = micro(model_config={"vocab_size": 128})  # the char vocabulary, padded as training pads it
    one = footprint.memory_estimate(sized, batch_size=1, accumulating=True)
    window = footprint.memory_estimate(sized, batch_size=2, accumulating=True).total - one.total
    memory = (one.total + (windows_fitting - 1) * window) / footprint.HEADROOM / 2**30
    settings = {"batch_size": "auto", "global_batch": 32, "max_steps": 4, "warmup_steps": 1, "save_every": 2}
    return micro(
        training_config={**settings, "sample_tokens": 0, **training}, device_config={"memory_gib": memory}
    )


def test_batch_size_auto_is_measured_stored_and_kept_on_resume(micro):
    said = []
    result = train(auto_batch(micro, windows_fitting=5.5), echo=said.append)
    assert any(
        "batch_size auto: micro-batch 4 x 1 process(es) x accumulation 8 = 32 windows" in s for s in said
    )
    run = result.run_dir
    stored = load_config(run / "config.yaml").training
    assert (stored.batch_size, stored.gradient_accumulation_steps, stored.global_batch) == (4, 8, None)
    assert result.history[0]["tokens_per_step"] == 32 * 64
    assert not any("the first step took" in s for s in said)  # a short run gets no warning

    said.clear()  # continued with room for every window: the numbers it was trained with stay
    resumed = train(auto_batch(micro, windows_fitting=100, max_steps=6), resume=True, echo=said.append)
    assert (resumed.cfg.training.batch_size, resumed.cfg.training.gradient_accumulation_steps) == (4, 8)
    assert any("micro-batch 4 x accumulation 8, as checkpoints/final was trained" in s for s in said)
    assert not any("changed on resume: training_config.batch_size" in s for s in said)
    assert read_status(run)["state"] == "finished"


def fake_clock(monkeypatch, seconds_per_reading: float) -> None:
    """The time budget's clock: every reading `seconds_per_reading` later than the one before."""
    now = [0.0]

    def monotonic() -> float:
        now[0] += seconds_per_reading
        return now[0]

    monkeypatch.setattr(budget, "time", types.SimpleNamespace(monotonic=monotonic))


@pytest.mark.slow
def test_max_time_ends_the_run_cleanly_and_a_larger_budget_continues_it(micro, monkeypatch, tmp_path):
    training = {"max_steps": 20, "eval_every": 10, "save_every": 10, "sample_tokens": 0}
    whole = train(micro(training_config=training), **QUIET)

    cfg = micro(training_config={**training, "max_time": "12s"})
    cfg.logging.output_dir = str(tmp_path / "budget")
    fake_clock(monkeypatch, 1.0)  # two readings a step: a budget of 12 s lasts about 6 steps
    said = []
    stopped = train(cfg, echo=said.append)
    step = stopped.state.step
    assert 4 <= step <= 8
    events = [r["event"] for r in stopped.history if r["step"] == step]
    assert events[-2:] == ["eval", "stopped"] and stopped.history[-1]["reason"] == "max_time"
    final = tmp_path / "budget" / "checkpoints" / "final"
    assert run_checkpoints.checkpoint_step(final) == step
    assert (
        f"reached at step {step} of 20 ({step / 20:.0%} of the schedule); saved checkpoints/final" in said[-1]
    )
    assert read_status(tmp_path / "budget")["state"] == "stopped"

    with pytest.raises(UserError, match="training_config.max_time .* is spent"):
        train(cfg, resume=True, **QUIET)
    cfg.training.max_time = "100h"
    resumed = train(cfg, resume=True, **QUIET)
    assert resumed.state.step == 20 and resumed.history[-1]["event"] == "end"
    a, b = weights(whole.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the stop and the resume changed nothing


def test_a_first_step_that_promises_days_says_so(micro, monkeypatch):
    ticks = iter(range(0, 10**9, 86400))  # every reading of the loop's clock: a day later
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    settings = {"max_steps": 3, "warmup_steps": 1, "eval_every": 100, "save_every": 100, "sample_tokens": 0}
    said = []
    train(micro(training_config=settings), echo=said.append)
    assert "the first step took 24h 00m: the 2 steps left need about 2.0 days at this pace" in "\n".join(said)


@pytest.mark.slow
def test_runs_shows_a_live_run_as_running_and_a_killed_one_as_stopped(shakespeare_dir, tmp_path, capsys):
    training = {"max_steps": 100000, "log_every": 1, "eval_every": 100000, "save_every": 100000}
    save_config(
        micro_config(shakespeare_dir, tmp_path / "run", training_config=training), tmp_path / "run.yaml"
    )
    child = children.Child("trickster", "train", "--config", str(tmp_path / "run.yaml"))
    deadline = time.monotonic() + 120
    while ((read_status(tmp_path / "run") or {}).get("step") or 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    status = read_status(tmp_path / "run")
    assert status["state"] == "running" and status["pid"] == child.pid and status["max_steps"] == 100000
    assert status["tokens_per_sec"] > 0 and status["eta_seconds"] > 0 and status["train_loss"] > 0
    assert main(["runs", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("running")
    child.kill()
    child.wait(timeout=60)
    assert main(["runs", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines()[1].endswith("stopped (process died)")


def test_a_run_writing_to_a_log_file_shows_each_line_as_it_happens(shakespeare_dir, tmp_path):
    """`trickster train ... > train.log` (stdout a pipe or file: block-buffered): the line of step 3
    is in the log while the run is a few steps further, not 8 KB (about 100 step lines) later."""
    training = {"max_steps": 100000, "log_every": 1, "eval_every": 100000, "save_every": 100000}
    cfg = micro_config(shakespeare_dir, tmp_path / "run", training_config={**training, "sample_tokens": 0})
    save_config(cfg, tmp_path / "run.yaml")
    child = children.Child("trickster", "train", "--config", str(tmp_path / "run.yaml"), "--no-progress")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(child.stdout), daemon=True)
    reader.start()
    metrics, deadline = tmp_path / "run" / "metrics.jsonl", time.monotonic() + 120
    try:
        while not any(line.startswith("step      3: train loss") for line in lines):
            assert child.poll() is None and time.monotonic() < deadline, f"the log holds only {lines}"
            time.sleep(0.01)
        written = metrics.read_text().splitlines()  # the last line may be half written
        trained = [json.loads(line)["step"] for line in written if '"train"' in line and line.endswith("}")]
    finally:
        child.kill()
        child.wait(timeout=60)
    assert 3 <= max(trained) < 40
