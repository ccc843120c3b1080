"""training_config.async_save: numbered checkpoints written by a background thread while the
run trains on, on real micro runs: the same checkpoints and losses as saves on the training
thread, a SIGKILL during a background write resumed exactly, a failed write said in one line."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path

import pytest
import torch

from trickster import run_checkpoints
from trickster.data import loader
from trickster.errors import UserError
from trickster.train import async_save, checkpoint_load, loop, tensor_files
from trickster.train import checkpoint as ckpt
from trickster.train.async_save import snapshot
from trickster.train.loop import train

from .conftest import QUIET, events, micro_config
from .test_resume import CRASH_RUN, assert_same_weights, crash, curve

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def in_background(sections: dict) -> dict:
    """`sections` with training_config.async_save on."""
    return {**sections, "training_config": {**sections.get("training_config", {}), "async_save": True}}


@pytest.fixture(scope="module")
def reference(shakespeare_dir, tmp_path_factory):
    """CRASH_RUN with every checkpoint written on the training thread."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    return train(micro_config(shakespeare_dir, run_dir, **CRASH_RUN), **QUIET)


def folders(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def safetensors_content(file: Path) -> tuple[dict, bytes]:
    """A safetensors file's header, parsed, and its tensors' bytes: the header's metadata is in the
    order of a Rust HashMap, which differs between two saves of the same tensors."""
    data = file.read_bytes()
    size = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + size]), data[8 + size :]


def same_values(a, b) -> bool:
    """Two trainer.pt contents, tensor by tensor."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_values(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(same_values, a, b))
    return a == b


def test_background_saves_write_the_checkpoints_of_saves_on_the_training_thread(
    reference, shakespeare_dir, tmp_path, monkeypatch
):
    """Each numbered write waits, in its thread, until the training thread has drawn another
    batch: the run only ends if training went on while the checkpoint was written."""
    writers, drawn, next_rows = [], threading.Event(), loader.BatchSampler.next_rows
    save_checkpoint = ckpt.save_checkpoint

    def drawing(self, *args, **kwargs):
        drawn.set()
        return next_rows(self, *args, **kwargs)

    def waiting(target, *args, **kwargs):
        if threading.current_thread() is not threading.main_thread():
            drawn.clear()
            writers.append((Path(target).name, drawn.wait(60)))
        return save_checkpoint(target, *args, **kwargs)

    monkeypatch.setattr(loader.BatchSampler, "next_rows", drawing)
    monkeypatch.setattr(ckpt, "save_checkpoint", waiting)
    run_dir = tmp_path / "run"
    result = train(micro_config(shakespeare_dir, run_dir, **in_background(CRASH_RUN)), **QUIET)

    assert writers == [("step_000004", True), ("step_000008", True)]  # best and final: on the training thread
    assert curve(result.history) == curve(reference.history)
    assert folders(run_dir) == folders(reference.run_dir) == ["best", "final", "step_000004", "step_000008"]
    assert_same_checkpoints(run_dir, reference.run_dir)


def assert_same_checkpoints(run_dir: Path, reference_dir: Path) -> None:
    """Every checkpoint of two runs: the same tensors, trainer state and info.json, but the clock."""
    for name in folders(run_dir):
        ours, theirs = run_dir / "checkpoints" / name, reference_dir / "checkpoints" / name
        assert safetensors_content(ours / run_checkpoints.WEIGHTS) == safetensors_content(
            theirs / run_checkpoints.WEIGHTS
        ), name
        states = [checkpoint_load.load_trainer_state(p) for p in (ours, theirs)]
        for state in states:
            state["train_state"].pop("train_seconds")  # the clock: no two runs take the same time
        assert same_values(*states), name
        info, expected = (json.loads((p / "info.json").read_text()) for p in (ours, theirs))
        for kept in (info, expected):  # the time, and the sums of files compared above
            kept.pop("saved"), kept["sha256"].pop("trainer.pt"), kept["sha256"].pop(run_checkpoints.WEIGHTS)
        assert info == expected, name


def held_until_the_next_wait(monkeypatch, names: set[str] | None = None) -> list[bool]:
    """Background writes of the checkpoints `names` (None: all) wait until the training thread next
    waits for a write (Writer.settle), or 60 s; the list says for each one whether it was released so."""
    settling, held = threading.Event(), []
    settle, save_checkpoint = async_save.Writer.settle, ckpt.save_checkpoint

    def noted_settle(self):
        settling.set()
        return settle(self)

    def holding(target, *args, **kwargs):
        named = names is None or Path(target).name in names
        if named and threading.current_thread() is not threading.main_thread():
            settling.clear()  # set by the wait at the start of this very save
            held.append(settling.wait(60))
        return save_checkpoint(target, *args, **kwargs)

    monkeypatch.setattr(async_save.Writer, "settle", noted_settle)
    monkeypatch.setattr(ckpt, "save_checkpoint", holding)
    return held


def test_an_evaluation_at_a_background_checkpoint_records_its_loss_in_it(
    shakespeare_dir, tmp_path, monkeypatch
):
    """Numbered checkpoints at the evaluations' steps (3, 6, 9), each write held until the
    training thread next waits: the evaluation after it waits for it before it writes its loss
    into its info.json, and `best` links its files, as in a run saving on the training thread."""
    meeting = {**CRASH_RUN, "training_config": {**CRASH_RUN["training_config"], "save_every": 3}}
    foreground = train(micro_config(shakespeare_dir, tmp_path / "foreground", **meeting), **QUIET)
    held = held_until_the_next_wait(monkeypatch, {"step_000003", "step_000006", "step_000009"})
    background = train(
        micro_config(shakespeare_dir, tmp_path / "background", **in_background(meeting)), **QUIET
    )

    assert held == [True, True, True]
    assert curve(background.history) == curve(foreground.history)
    assert folders(background.run_dir) == folders(foreground.run_dir)
    assert_same_checkpoints(background.run_dir, foreground.run_dir)
    info = json.loads((background.run_dir / "checkpoints" / "step_000006" / "info.json").read_text())
    assert info["val_loss"] == next(
        r["val_loss"] for r in events(background.history, "eval") if r["step"] == 6
    )


def test_sigkill_during_a_background_write_resumes_as_the_uninterrupted_run(
    reference, shakespeare_dir, tmp_path
):
    """Killed half-way through step 8's trainer.pt, written in the background while step 9 trained:
    the staging folder is left without COMPLETE, the resume starts from step 4 and ends with the
    losses and weights of the run never killed."""
    run_dir = tmp_path / "run"
    crash(shakespeare_dir, run_dir, "during-background-write", 2, run=in_background(CRASH_RUN))

    hidden = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    assert [name.split("-")[0] for name in hidden] == [".step_000008.tmp"], hidden
    assert not (run_dir / "checkpoints" / hidden[0] / run_checkpoints.COMPLETE).exists()
    assert run_checkpoints.latest(run_dir).name == "step_000004"

    resumed = train(micro_config(shakespeare_dir, run_dir, **in_background(CRASH_RUN)), resume=True, **QUIET)

    assert curve(resumed.history) == curve(reference.history)
    for name in ("final", "best"):
        assert_same_weights(run_dir / "checkpoints" / name, reference.run_dir / "checkpoints" / name)
    [resume_event] = events(resumed.history, "resume")
    assert (resume_event["checkpoint"], len(resume_event["repairs"])) == ("step_000004", 1)
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def test_a_failed_background_write_is_one_line_at_the_next_wait(micro, monkeypatch):
    """The disk fills up during the second numbered checkpoint, written in the background: the run
    ends with the line a save on the training thread gives, and the first checkpoint is whole."""
    save_file, calls = tensor_files.save_file, []

    def full(tensors, filename, *args, **kwargs):
        calls.append(threading.current_thread() is threading.main_thread())
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(filename))
        return save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(tensor_files, "save_file", full)
    every_2 = {"max_steps": 8, "warmup_steps": 1, "eval_every": 100, "save_every": 2}
    cfg = micro(training_config={**every_2, "async_save": True})
    refused = r"could not write checkpoint .*step_000004 \(No space left on device\)"
    with pytest.raises(UserError, match=refused):
        train(cfg, **QUIET)
    assert calls == [False, False]  # both in the background
    run_dir = Path(cfg.logging.output_dir)
    assert folders(run_dir) == ["step_000002"]
    monkeypatch.setattr(tensor_files, "save_file", save_file)  # space freed
    assert train(cfg, resume=True, **QUIET).state.step == 8


@pytest.mark.slow
def test_a_loss_spike_rolls_back_to_the_checkpoint_still_written_in_the_background(micro, monkeypatch):
    """The micro run's real spike (test_long_runs.py) rolls back to step_000015. Here that
    checkpoint's background write is held until the training thread next waits for a write: the
    rollback must wait for it too, or it returns to step_000010 and the run goes on otherwise."""
    from .test_long_runs import SPIKE, losses, raise_lr_once, weights

    results = {}
    for background in (False, True):
        raise_lr_once(monkeypatch)
        held = held_until_the_next_wait(monkeypatch, {"step_000015"})
        cfg = micro(training_config={**SPIKE, "async_save": background})
        cfg.logging.output_dir += f"-{background}"
        results[background] = train(cfg, **QUIET)
        monkeypatch.undo()
    assert held == [True, True]  # its write, and the rollback's own save of it; both released by a wait
    rollbacks = [[r for r in results[b].history if r["event"] == "rollback"] for b in (False, True)]
    assert rollbacks[0][0]["checkpoint"] == "step_000015"
    assert [{k: r[k] for k in r if k != "time"} for r in rollbacks[1]] == [
        {k: r[k] for k in r if k != "time"} for r in rollbacks[0]
    ]
    assert losses(results[True]) == losses(results[False])
    a, b = weights(results[True].run_dir), weights(results[False].run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_stop_by_signal_says_saved_once_its_background_checkpoint_is_whole(micro, monkeypatch):
    """SIGTERM during step 3: the run saves step_000003 in the background (held until the training
    thread next waits) and says `saved checkpoints/step_000003` only once that folder is whole."""
    held, step, steps, whole = held_until_the_next_wait(monkeypatch), loop.Trainer.step, [], []

    def signalled(trainer):
        steps.append(len(steps))
        if len(steps) == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # its handler notes it; the step then sees it
        return step(trainer)

    monkeypatch.setattr(loop.Trainer, "step", signalled)
    cfg = micro(training_config={"save_every": 100, "eval_every": 100, "async_save": True})
    checkpoint = Path(cfg.logging.output_dir) / "checkpoints" / "step_000003"

    def echo(line="", *args, **kwargs):
        if str(line).startswith("stopped by SIGTERM"):
            whole.append(run_checkpoints.is_complete(checkpoint))

    result = train(cfg, echo=echo)
    assert (result.exit_signal, result.state.step) == (signal.SIGTERM, 3)
    assert held == [True] and whole == [True]


def test_a_snapshot_shares_no_tensor_with_what_it_copied():
    weight = torch.ones(3)
    state = {"weights": {"a": weight, "tied": weight}, "rng": [(1, torch.zeros(2))], "step": 5}
    copied, spare = snapshot(state)
    weight.add_(1)
    state["rng"][0][1].add_(1)
    assert torch.equal(copied["weights"]["a"], torch.ones(3))
    assert copied["weights"]["a"] is copied["weights"]["tied"]  # a tied weight stays one tensor
    assert torch.equal(copied["rng"][0][1], torch.zeros(2)) and copied["step"] == 5

    again, _ = snapshot(state, spare)  # into the first one's memory, no longer read
    assert again["weights"]["a"] is copied["weights"]["a"] and torch.equal(again["weights"]["a"], weight)
    assert again["rng"][0][1] is copied["rng"][0][1] and torch.equal(again["rng"][0][1], torch.ones(2))


def test_fsdp2_writes_its_optimizer_shards_in_the_background_as_in_the_foreground(shakespeare_dir, tmp_path):
    """2 gloo processes under FSDP2: step 10's checkpoint, its shards written by
    torch.distributed.checkpoint.async_save while steps 11-20 train, holds what the same job
    saving on its training threads wrote; the losses are the same."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    from .test_dist import config, forked_job, history, losses

    runs = {}
    for name, overrides in (("foreground", ()), ("background", ("training_config.async_save=true",))):
        (tmp_path / name).mkdir()
        cfg = config(shakespeare_dir, tmp_path / name / "run", batch_size=4, enable_fsdp=True, timeout_s=120)
        forked_job(cfg, tmp_path / name, *overrides)
        runs[name] = tmp_path / name / "run"
    ours, theirs = runs["background"], runs["foreground"]
    assert losses(history(ours)) == losses(history(theirs))
    assert losses(history(ours), "eval", "val_loss") == losses(history(theirs), "eval", "val_loss")
    assert folders(ours) == folders(theirs) == ["best", "final", "step_000010"]
    for run in (ours, theirs):
        step = run / "checkpoints" / "step_000010"
        dcp_to_torch_save(step / ckpt.OPTIMIZER, run / "moments.pt")
    moments = [torch.load(run / "moments.pt", weights_only=True) for run in (ours, theirs)]
    assert moments[0].keys() == moments[1].keys() and same_values(*moments)
    a, b = (p / "checkpoints" / "step_000010" for p in (ours, theirs))
    assert safetensors_content(a / run_checkpoints.WEIGHTS) == safetensors_content(
        b / run_checkpoints.WEIGHTS
    )
