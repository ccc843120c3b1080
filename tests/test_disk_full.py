"""A disk that fills while a run trains: the run ends in one line that says the disk is full, where,
and how to go on from the checkpoint it kept; status.json says `stopped` (disk-full), so `trickster
runs` does not take it for a dead process; the run then resumes to its end."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
from pathlib import Path

import pytest

from trickster import cli, run_checkpoints
from trickster.config import save_config
from trickster.train import loop, tensor_files

from .conftest import micro_config

FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def fill_disk(monkeypatch, folder: Path, code: int = errno.ENOSPC, words: str | None = None) -> None:
    """From now on no file under `folder` can be created or grown, as on a full disk: opening one
    to write, append or create fails (here at once, on a real disk at the first write), and so do
    safetensors' writes. A file opened to be rewritten over its own bytes (r+) needs no new block,
    and is let through. `code`: ENOSPC, or EDQUOT (a quota); `words`: the system's (os.strerror's)."""
    real_open = builtins.open
    words = os.strerror(code) if words is None else words

    def full_open(file, mode="r", *args, **kwargs):
        path = os.path.abspath(os.fspath(file)) if isinstance(file, (str, os.PathLike)) else ""
        if path.startswith(str(folder)) and any(c in mode for c in "wax"):
            raise OSError(code, words, path)
        return real_open(file, mode, *args, **kwargs)

    def full_save(tensors, file, metadata=None):
        raise OSError(code, words, str(file))

    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(io, "open", full_open)
    monkeypatch.setattr(tensor_files, "save_file", full_save)


@pytest.fixture
def run_filling(shakespeare_dir, tmp_path, monkeypatch, capsys):
    """run(after_step=S or before_save=NAME, **training) -> (exit status, stderr) of a 40-step micro
    run (checkpoints every 20) whose disk fills once step S is trained, or as checkpoint NAME is
    saved; `refusal`: fill_disk's code and words; `training`: other training_config values."""

    def run(
        after_step: int | None = None, before_save: str | None = None, refusal: tuple = (), **more
    ) -> tuple[int, str]:
        training = {"max_steps": 40, "warmup_steps": 0, "sample_tokens": 0, **more}
        cfg = micro_config(shakespeare_dir, tmp_path / "run", training_config=training)
        save_config(cfg, tmp_path / "run.yaml")
        real_step, real_save = loop.Trainer.step, loop.Trainer.save

        def step_then_fill(self):
            result = real_step(self)
            if self.state.step + 1 == after_step:
                fill_disk(monkeypatch, tmp_path / "run", *refusal)
            return result

        def fill_then_save(self, name, *args, **kwargs):
            if name == before_save:
                fill_disk(monkeypatch, tmp_path / "run", *refusal)
            return real_save(self, name, *args, **kwargs)

        monkeypatch.setattr(loop.Trainer, "step", step_then_fill)
        monkeypatch.setattr(loop.Trainer, "save", fill_then_save)
        status = cli.main(["train", "--config", str(tmp_path / "run.yaml"), "--no-progress"])
        monkeypatch.undo()  # room again
        return status, capsys.readouterr().err

    return run


def test_a_full_disk_ends_the_run_in_one_line_with_the_checkpoint_it_kept(run_filling, tmp_path, capsys):
    status, err = run_filling(after_step=23)
    run = tmp_path / "run"
    assert status == 2
    assert err == (
        f"error: the disk is full at step 24: could not write {run / 'metrics.jsonl'} (No space left on "
        f"device); free disk space, then continue from checkpoints/step_000020 (step 20, kept whole) with: "
        f"trickster train --config {run / 'config.yaml'} --resume\n"
    )
    heartbeat = json.loads((run / "status.json").read_text())
    assert (heartbeat["state"], heartbeat["reason"], heartbeat["step"]) == ("stopped", "disk-full", 24)
    assert heartbeat["error"] == err.removeprefix("error: ")[:300]  # the line, as far as status.json keeps
    assert run_checkpoints.latest(run) == run / "checkpoints" / "step_000020"
    assert cli.main(["runs", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[1].endswith("stopped (disk-full)"), table  # not "(process died)"
    assert cli.main(["train", "--config", str(run / "config.yaml"), "--resume", "--no-progress"]) == 0
    assert run_checkpoints.checkpoint_step(run_checkpoints.latest(run)) == 40


def test_a_full_disk_while_a_checkpoint_is_written_keeps_the_one_before(run_filling, tmp_path, capsys):
    """Full as `final` is written: the line names it and the checkpoint of step 20, which stays
    whole; the half-written `final` is gone, and the run resumes from step 20 to its end."""
    status, err = run_filling(before_save="final")
    run = tmp_path / "run"
    assert status == 2
    assert err == (
        f"error: the disk is full at step 40: could not write checkpoint {run / 'checkpoints' / 'final'} (No "
        f"space left on device); free disk space, then continue from checkpoints/step_000020 (step 20, kept "
        f"whole) with: trickster train --config {run / 'config.yaml'} --resume\n"
    )
    assert json.loads((run / "status.json").read_text())["reason"] == "disk-full"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best", "step_000020"]
    assert cli.main(["train", "--config", str(run / "config.yaml"), "--resume", "--no-progress"]) == 0
    assert run_checkpoints.checkpoint_step(run / "checkpoints" / "final") == 40


def test_a_full_disk_before_the_first_checkpoint_names_best_as_none_to_continue_from(run_filling, tmp_path):
    """Full at step 14, `best` saved at step 10 (evaluations every 10), no numbered checkpoint yet:
    the line said 'no checkpoint was saved yet' beside a complete best, which a run never
    continues from."""
    status, err = run_filling(after_step=14, eval_every=10)
    run = tmp_path / "run"
    assert status == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best"]
    assert err == (
        f"error: the disk is full at step 14: could not write {run / 'metrics.jsonl'} (No space left on "
        "device); no checkpoint to continue from was saved yet (checkpoints/best holds the best weights "
        "so far, for generate): free disk space, then run the command again with "
        "training_config.resume=auto (it starts afresh in the same run folder)\n"
    )


@pytest.mark.parametrize("words", ["Disk quota exceeded", "Se ha excedido la cuota de disco"])
def test_a_used_up_quota_is_told_by_its_errno(run_filling, tmp_path, words):
    """The line says a quota was used up by the errno (EDQUOT), not by 'quota' in the system's
    words: in another language (LC_MESSAGES; glibc's Spanish here) it said the disk was full."""
    status, err = run_filling(after_step=3, refusal=(errno.EDQUOT, words))
    metrics = tmp_path / "run" / "metrics.jsonl"
    assert status == 2
    assert err.startswith(
        f"error: the disk quota is used up at step 4: could not write {metrics} ({words}); "
    )
