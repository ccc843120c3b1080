"""Runs that survive anything: SIGKILL at chosen moments, rotation, disk errors, non-finite steps.

The kill tests run the real command in a child process (tests/crash_child.py injects the fault),
then resume in this process and compare with one uninterrupted run of the same config: the
train losses, validation losses and final weights must be identical, bit for bit.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trickster import cli, run_checkpoints
from trickster.config import save_config
from trickster.errors import UserError, write_fix
from trickster.model.transformer import Transformer
from trickster.observe import plots
from trickster.observe.events import read_metrics
from trickster.observe.runs import read_run
from trickster.train import checkpoint_load, memory, resume, signals
from trickster.train import loop as train_module
from trickster.train.device import settings_restored
from trickster.train.dist import Dist
from trickster.train.loop import Trainer, train

from . import children
from .conftest import QUIET, events, micro_config, text_reads

try:
    import resource
except ImportError:  # native Windows
    resource = None

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# 12 steps of 2 micro-batches with dropout: evaluations at 0, 3, 6, 9, 12; numbered
# checkpoints at 4 and 8; `best` at each evaluation that improves; `final` at 12.
CRASH_RUN = {
    "model_config": {"dropout": 0.1},
    "training_config": {
        "max_steps": 12,
        "warmup_steps": 2,
        "gradient_accumulation_steps": 2,
        "log_every": 1,
        "eval_every": 3,
        "save_every": 4,
        "eval_batches": 2,
        "sample_tokens": 8,
    },
}


def curve(history):
    """Everything that must not change when a run is interrupted and resumed."""
    train_losses = [(r["step"], r["train_loss"]) for r in events(history, "train")]
    val_losses = [(r["step"], r["val_loss"], r.get("sample")) for r in events(history, "eval")]
    return train_losses, val_losses


def weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / run_checkpoints.WEIGHTS)


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        assert torch.equal(wa[name], wb[name]), name


@pytest.fixture(scope="module")
def reference(shakespeare_dir, tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = train(micro_config(shakespeare_dir, run_dir, **CRASH_RUN), **QUIET)
    assert [r["step"] for r in events(result.history, "eval")] == [0, 3, 6, 9, 12]
    return result


# the same run with Muon on the block matrices: its momentum buffers must come back exactly too
MUON_RUN = {**CRASH_RUN, "training_config": {**CRASH_RUN["training_config"], "optimizer": "muon"}}


@pytest.fixture(scope="module")
def muon_reference(shakespeare_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("muon-reference") / "run"
    return train(micro_config(shakespeare_dir, run_dir, **MUON_RUN), **QUIET)


def crash(
    shakespeare_dir: Path, run_dir: Path, moment: str, n: int, *flags: str, run: dict = CRASH_RUN
) -> subprocess.CompletedProcess:
    config = run_dir.parent / "run.yaml"
    save_config(micro_config(shakespeare_dir, run_dir, **run), config)
    result = children.run("tests.crash_child", moment, str(n), "train", "--config", str(config), *flags)
    assert result.returncode == -9, f"expected SIGKILL, got {result.returncode}: {result.stderr[-2000:]}"
    return result


KILLS = [
    # (moment, n, numbered checkpoint to resume from, what the kill leaves behind)
    pytest.param("before-batch", 13, "step_000004", None, id="end-of-step-6-before-its-update"),
    pytest.param("before-batch", 14, "step_000004", None, id="inside-step-7-between-micro-batches"),
    pytest.param("during-eval", 3, "step_000004", None, id="during-the-evaluation-at-step-6"),
    pytest.param("during-trainer-write", 4, "step_000004", ".step_000008.tmp-", id="writing-step-8"),
    pytest.param("during-best-replace", 1, "step_000004", ".best.old-", id="replacing-best-at-step-6"),
]


@pytest.mark.parametrize(("moment", "n", "resume_point", "leftover"), KILLS)
def test_sigkill_then_resume_matches_the_uninterrupted_run(
    moment, n, resume_point, leftover, reference, shakespeare_dir, tmp_path
):
    run_dir = tmp_path / "run"
    crash(shakespeare_dir, run_dir, moment, n)

    # what the kill left: the newest complete checkpoint is intact and loadable
    found = run_checkpoints.latest(run_dir)
    assert found is not None and found.name == resume_point
    assert checkpoint_load.load_checkpoint(found).info["step"] == 4
    hidden = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]
    if leftover:
        assert any(name.startswith(leftover) for name in hidden), hidden
    if moment == "during-best-replace":
        assert not (run_dir / "checkpoints" / "best").exists()  # only under its hidden old name

    resumed = train(micro_config(shakespeare_dir, run_dir, **CRASH_RUN), resume=True, **QUIET)

    assert curve(resumed.history) == curve(reference.history)
    assert_same_weights(run_dir / "checkpoints" / "final", reference.run_dir / "checkpoints" / "final")
    assert_same_weights(run_dir / "checkpoints" / "best", reference.run_dir / "checkpoints" / "best")
    resumes = events(resumed.history, "resume")
    assert [(r["step"], r["checkpoint"]) for r in resumes] == [(4, resume_point)]
    if leftover:
        assert resumes[0]["repairs"], "the leftover of the killed write was not reported"
    assert not [p for p in (run_dir / "checkpoints").iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_sigkill_then_resume_with_muon_matches_the_uninterrupted_run(
    muon_reference, reference, shakespeare_dir, tmp_path
):
    run_dir = tmp_path / "run"
    crash(shakespeare_dir, run_dir, "before-batch", 14, run=MUON_RUN)  # inside step 7
    resumed = train(micro_config(shakespeare_dir, run_dir, **MUON_RUN), resume=True, **QUIET)

    assert curve(resumed.history) == curve(muon_reference.history)
    assert curve(muon_reference.history) != curve(reference.history)  # Muon did train the matrices
    assert_same_weights(run_dir / "checkpoints" / "final", muon_reference.run_dir / "checkpoints" / "final")
    trainer = torch.load(run_dir / "checkpoints" / "final" / "trainer.pt", weights_only=True)
    momentum = trainer["optimizer"]["state"]["layers.0.attention.wq.weight"]
    assert set(momentum) == {"momentum_buffer"}  # keyed by name, Muon's state beside AdamW's


def test_kill_before_the_first_checkpoint_resume_auto_starts_afresh(reference, shakespeare_dir, tmp_path):
    run_dir = tmp_path / "run"
    crash(shakespeare_dir, run_dir, "before-batch", 5)  # end of step 2: nothing saved yet
    assert run_checkpoints.latest(run_dir) is None and (run_dir / "metrics.jsonl").exists()
    cfg = micro_config(shakespeare_dir, run_dir, **CRASH_RUN)

    with pytest.raises(UserError, match="nothing to resume .* training_config.resume=auto"):
        train(cfg, resume=True, **QUIET)
    cfg.training.resume = "auto"
    again = train(cfg, **QUIET)
    assert curve(again.history) == curve(reference.history)
    assert not events(again.history, "resume")
    assert_same_weights(run_dir / "checkpoints" / "final", reference.run_dir / "checkpoints" / "final")


def test_resume_auto_from_the_cli_continues_a_killed_run(reference, shakespeare_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    crash(shakespeare_dir, run_dir, "before-batch", 19)  # end of step 9, before its update
    config = tmp_path / "run.yaml"
    code = cli.main(["train", "--config", str(config), "--no-progress", "training_config.resume=auto"])
    assert code == 0
    assert "resuming from" in capsys.readouterr().out
    history = read_metrics(run_dir / "metrics.jsonl")
    assert curve(history) == curve(reference.history)


def test_allowed_changes_on_resume_are_recorded(micro, capsys):
    cfg = micro(training_config={"max_steps": 6, "warmup_steps": 1, "eval_every": 3, "save_every": 3})
    first = []
    train(cfg, echo=first.append)
    assert f"Training from scratch -> {cfg.logging.output_dir}" in first
    longer = cfg.model_copy(deep=True)
    longer.training.max_steps, longer.training.learning_rate, longer.training.log_every = 9, 1e-3, 3
    longer.training.keep_last = 2
    lines = []
    result = train(longer, resume=True, echo=lines.append)
    (resume,) = events(result.history, "resume")
    assert resume["checkpoint"] == "final" and resume["step"] == 6
    assert resume["changed"] == {
        "training_config.max_steps": [6, 9],
        "training_config.learning_rate": [3e-3, 1e-3],
        "training_config.log_every": [2, 3],
        "training_config.keep_last": [None, 2],
    }
    assert "changed on resume: training_config.max_steps 6 -> 9" in lines
    assert "changed on resume: training_config.keep_last null -> 2" in lines  # as YAML spells it
    assert f"Resuming -> {cfg.logging.output_dir}" in lines  # the header no longer says "from scratch"
    assert not any(line.startswith("Training from scratch") for line in lines)
    assert run_checkpoints.checkpoint_step(result.run_dir / "checkpoints" / "final") == 9
    # done: --resume says so and changes nothing; so does resume: auto (a requeue loop), which ends
    # with the run's result
    files = written(result.run_dir)
    with pytest.raises(UserError, match="has done its steps: .* step 9 and training_config.max_steps is 9"):
        train(longer, resume=True, **QUIET)
    assert written(result.run_dir) == files
    longer.training.resume = "auto"
    again = train(longer, **QUIET)
    assert written(result.run_dir) == files
    assert again.finished_before and again.state.step == 9
    assert again.state.best_loss_seen == result.state.best_loss_seen


def test_a_resume_on_another_validation_set_measures_best_on_it(micro, tmp_path):
    """A resume with a shorter seq_len draws other validation windows: best's loss on the old ones
    does not compare with the evaluations to come (kept, it could outlast every better model, or
    give way to a worse one). It is measured again on the new set: what a run started from best's
    weights (init_from) evaluates at its step 0 on that set (3.66 there). The line gives best's own
    loss on the old windows, its step's eval event (3.69), not the best the resumed checkpoint held:
    saved before step 4's evaluation, that is step 2's (3.80)."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    evaluated = {e["step"]: e["val_loss"] for e in events(train(cfg, **QUIET), "eval")}
    shorter = cfg.model_copy(deep=True)
    shorter.training.max_steps, shorter.training.seq_len = 6, 16
    lines = []
    with settings_restored():
        trainer = Trainer(shorter, resume=True, echo=lambda *a, **k: lines.append(" ".join(map(str, a))))
    best = tmp_path / "run" / "checkpoints" / "best"
    started = shorter.model_copy(deep=True)
    started.logging.output_dir, started.training.init_from = str(tmp_path / "from-best"), str(best)
    started.training.max_steps = 1
    (on_the_new_set, *_) = events(train(started, **QUIET).history, "eval")
    assert trainer.state.best_val_loss == pytest.approx(on_the_new_set["val_loss"], rel=1e-5)
    best_step = run_checkpoints.checkpoint_step(best)
    said = [line for line in lines if line.startswith(f"best (step {best_step}) evaluated again")]
    assert said and "training_config.seq_len" in said[0], lines
    assert f"({evaluated[best_step]:.4f} on the old ones)" in said[0], lines


@pytest.mark.parametrize("batch", [{"batch_size": 8}, {"batch_size": "auto", "global_batch": 8}])
def test_a_resume_reads_the_config_of_its_checkpoint_once(micro, monkeypatch, batch):
    """The checkpoint's config.yaml is read once per resume, however many parts of it compare with
    it: the resume's checks, best measured again on another validation set (this one's), the
    trainer state's fields (this version writes them all), batch_size: auto's numbers kept."""
    training = {"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2, **batch}
    cfg = micro(training_config=training)
    train(cfg, **QUIET)
    shorter = cfg.model_copy(deep=True)
    shorter.training.max_steps, shorter.training.seq_len = 6, 16
    reads = text_reads(monkeypatch)
    lines = []
    with settings_restored():
        trainer = Trainer(shorter, resume=True, echo=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert [line for line in lines if "evaluated again" in line], lines  # best was measured again
    assert reads.count(trainer.resumed_from / "config.yaml") == 1


def test_a_resume_reads_its_checkpoint_s_info_json_once(micro, monkeypatch):
    """The info.json of the checkpoint a run resumes from is read once, by the listing that finds it
    the newest, and handed on: to whether the run has done its steps, the tokenizer and data checks,
    the origin a fine-tune recorded, the sums its files are checked against. Each of them read it
    again: seven reads of it in a resume of a tidy run folder."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    train(cfg, **QUIET)
    longer = cfg.model_copy(deep=True)
    longer.training.max_steps = 6
    reads = text_reads(monkeypatch)
    with settings_restored():
        trainer = Trainer(longer, resume=True, **QUIET)
    assert trainer.resumed_from.name == "final"
    assert reads.count(trainer.resumed_from / "info.json") == 1


def test_a_resume_that_names_the_seq_len_it_had_keeps_best(micro):
    """training_config.seq_len null means model_config.max_seq_len: a resume that gives that number
    draws the same validation windows, so best keeps its loss: it is not evaluated again, nor said to
    be on new windows (the setting is still reported as changed)."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    cfg.training.seq_len = None
    train(cfg, **QUIET)
    named = cfg.model_copy(deep=True)
    named.training.max_steps, named.training.seq_len = 6, cfg.model.max_seq_len
    lines = []
    with settings_restored():
        Trainer(named, resume=True, echo=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert any("training_config.seq_len" in line for line in lines), lines
    assert not [line for line in lines if "evaluated again" in line], lines


def test_a_resumed_process_keeps_no_map_of_the_checkpoint_it_continued_from(micro, monkeypatch):
    """On the CPU the optimizer keeps the tensors it is handed as its state: had one process (or
    rank 0) mapped trainer.pt, the moments would be the file's pages for the rest of the run, and
    once keep_last removed that checkpoint its disk space would stay taken until the run ended.
    After the load, no mapping of this process names the file."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    train(cfg, **QUIET)
    load, mapped = train_module.Trainer.load, []

    def load_then_look(self, path):
        load(self, path)
        maps = Path("/proc/self/maps").read_text().splitlines()
        mapped.extend(line for line in maps if line.endswith(str(path / "trainer.pt")))

    monkeypatch.setattr(train_module.Trainer, "load", load_then_look)
    cfg.training.max_steps = 6
    result = train(cfg, resume=True, **QUIET)
    assert result.state.step == 6 and mapped == []


def test_a_setting_of_the_wrong_kind_in_the_checkpoint_is_reported_as_it_was_saved(micro):
    """A checkpoint's config.yaml edited by hand (`log_every: often`) still resumes (the setting is
    set aside for its default where the checkpoint is read); what changed on resume is told from
    what the file held, not from that default: it said `50 -> 3`, and nothing at all when the
    run's value was the default."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    run_dir = train(cfg, **QUIET).run_dir
    saved = run_dir / "checkpoints" / "final" / "config.yaml"
    text = saved.read_text(encoding="utf-8")
    assert "  log_every: 2\n" in text
    saved.write_text(text.replace("  log_every: 2\n", "  log_every: often\n"), encoding="utf-8")
    longer = cfg.model_copy(deep=True)
    longer.training.max_steps, longer.training.log_every = 6, 3
    lines = []
    result = train(longer, resume=True, echo=lines.append)
    assert "changed on resume: training_config.log_every often -> 3" in lines
    assert events(result.history, "resume")[0]["changed"]["training_config.log_every"] == ["often", 3]

    # the default (50) now: still a change from what was saved; bytes (YAML's !!binary), which
    # JSON has no kind for, are logged as their text
    again = longer.model_copy(deep=True)
    again.training.max_steps, again.training.log_every = 8, 50
    text = saved.read_text(encoding="utf-8")
    saved.write_text(text.replace("  log_every: 3\n", "  log_every: !!binary b2Z0ZW4=\n"), encoding="utf-8")
    lines = []
    result = train(again, resume=True, echo=lines.append)
    assert "changed on resume: training_config.log_every b'often' -> 50" in lines
    assert events(result.history, "resume")[-1]["changed"]["training_config.log_every"] == ["b'often'", 50]


def written(run_dir: Path) -> dict[Path, tuple[bytes, int]]:
    """Every file in the run folder with its bytes and modification time: a file rewritten with
    the same bytes (`best` saved again) counts as changed."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run_dir.rglob("*")) if p.is_file()}


def test_resume_auto_in_a_finished_run_says_so_and_changes_nothing(micro, tmp_path, capsys):
    """A requeue script reruns `trickster train ... training_config.resume=auto` until it exits 0.
    Once the run has ended, a rerun is one line and exit status 0: no evaluation, no `best` written
    again (a whole checkpoint for a large model), no event, no lock file left. A larger max_steps
    continues the run; the run then ends there and the rerun is a no-op again."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    run_dir, config = Path(cfg.logging.output_dir), tmp_path / "run.yaml"
    save_config(cfg, config)
    argv = ["train", "--config", str(config), "--no-progress", "training_config.resume=auto"]
    assert cli.main(argv) == 0  # nothing to resume: the run starts
    capsys.readouterr()
    files = written(run_dir)

    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert out == (
        f"{run_dir} already finished at step 4 (checkpoints/final); nothing to do. To train further, "
        "resume with a larger training_config.max_steps (e.g. training_config.max_steps=8), or start a "
        "new run with --out\n"
    )
    assert err == ""
    assert written(run_dir) == files

    assert cli.main([*argv, "training_config.max_steps=6"]) == 0  # not finished: it trains on
    assert "resuming from" in capsys.readouterr().out
    assert [(r["step"], r["checkpoint"]) for r in events(run_dir, "resume")] == [(4, "final")]
    assert events(run_dir, "end")[-1]["step"] == 6
    assert run_checkpoints.checkpoint_step(run_dir / "checkpoints" / "final") == 6
    files = written(run_dir)
    assert cli.main([*argv, "training_config.max_steps=6"]) == 0
    assert capsys.readouterr().out.startswith(f"{run_dir} already finished at step 6 (checkpoints/final)")
    assert written(run_dir) == files


def test_resume_auto_past_a_lowered_max_steps_is_refused_as_resume_is(micro, tmp_path, capsys):
    """A run stopped at step 8 (killed after step_000008), rerun with max_steps lowered to 6, has
    not ended and is past its steps: `resume: auto` refuses it in --resume's line, exit status 2,
    nothing changed. It trained nothing and ended the run without its last evaluation: a `final` at
    step 8 whose info.json gave an earlier evaluation's loss as its own, an `end` event, and `runs`
    showing 8/6 finished."""
    cfg = micro(training_config={"max_steps": 12, "warmup_steps": 1, "eval_every": 4, "save_every": 4})
    run_dir, config = Path(cfg.logging.output_dir), tmp_path / "run.yaml"
    save_config(cfg, config)
    train(cfg, **QUIET)
    shutil.rmtree(run_dir / "checkpoints" / "final")  # as a kill after step_000008 leaves the run
    metrics = run_dir / "metrics.jsonl"
    kept = [line for line in metrics.read_text().splitlines(keepends=True) if json.loads(line)["step"] < 8]
    metrics.write_text("".join(kept))
    files = written(run_dir)
    argv = ["train", "--config", str(config), "--no-progress", "training_config.resume=auto"]
    assert cli.main([*argv, "training_config.max_steps=6"]) == 2
    out, err = capsys.readouterr()
    assert err == (  # not 'has done its steps' (it was stopped at 8 of 12), nor 16 (twice 8) for 12
        f"error: cannot resume {run_dir} with training_config.max_steps=6: its newest checkpoint "
        "(step_000008) is at step 8 already, and a resume cannot go back; set training_config.max_steps "
        "above 8, e.g. training_config.max_steps=12 (as the run was started), or start a new run of 6 "
        "steps with another --out (nothing was changed)\n"
    )
    assert written(run_dir) == files


def test_can_continue_lists_the_checkpoints_once(micro, monkeypatch):
    """quickstart asks it of every folder it passes over: the newest checkpoint is found once (each
    search lists checkpoints/ and checks each folder's COMPLETE), for the answer and for whether the
    run has ended at it. A finished run is no run to continue; given more steps, it is."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    run_dir = train(cfg, **QUIET).run_dir
    listings = []
    numbered = run_checkpoints.numbered
    monkeypatch.setattr(
        run_checkpoints, "numbered", lambda folder: listings.append(folder) or numbered(folder)
    )
    assert resume.can_continue(run_dir) is None and len(listings) == 1
    config = run_dir / "config.yaml"
    config.write_text(config.read_text().replace("max_steps: 4\n", "max_steps: 6\n"))
    listings.clear()
    assert resume.can_continue(run_dir) == (run_dir / "checkpoints" / "final", 6) and len(listings) == 1


def _bytes_read() -> int:
    """What this process has read so far, by read() calls of any file (Linux: /proc/self/io)."""
    with open("/proc/self/io", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.skipif(not Path("/proc/self/io").is_file(), reason="counts bytes read in /proc/self/io (Linux)")
def test_the_finished_run_check_reads_the_end_of_metrics_jsonl_not_all_of_it(micro):
    """A long run's metrics.jsonl holds hundreds of MB; whether the run has ended is its last
    event. resume: auto and --resume in an ended run read the whole file (--resume twice): here 20
    MB of train events before the real ones, of which they now read a small part."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    run_dir = train(cfg, **QUIET).run_dir
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True)
    train_line = next(line for line in lines if '"event": "train"' in line)
    copies = 20_000_000 // len(train_line.encode())
    with open(metrics, "w", encoding="utf-8") as f:
        f.writelines([lines[0], *[train_line] * copies, *lines[1:]])
    size = metrics.stat().st_size
    files = written(run_dir)

    cfg.training.resume = "auto"
    before = _bytes_read()
    assert train(cfg, **QUIET).finished_before
    assert _bytes_read() - before < size / 10
    cfg.training.resume = False
    before = _bytes_read()
    with pytest.raises(UserError, match="has done its steps"):
        train(cfg, resume=True, **QUIET)
    assert _bytes_read() - before < size / 10
    assert written(run_dir) == files


def test_a_finished_run_whose_metrics_end_in_a_line_cut_short_is_still_finished(micro):
    """Killed while it wrote a line after its end event (a `trickster` of another version, a copy
    cut short): the last whole event decides, as every reader of metrics.jsonl reads it."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    run_dir = train(cfg, **QUIET).run_dir
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"event": "train", "st')
    files = written(run_dir)
    cfg.training.resume = "auto"
    assert train(cfg, **QUIET).finished_before
    with pytest.raises(UserError, match="has done its steps"):
        train(cfg, resume=True, **QUIET)
    assert written(run_dir) == files


def test_resume_removes_what_dead_writers_left_and_keeps_what_live_ones_write(micro, dead_pid, live_pid):
    """A SIGKILL mid-write leaves `.NAME.tmp-PID` for good: the run that continues in the folder
    removes those of dead processes (in the folder, in checkpoints/ and inside a checkpoint), and
    never one that a live process is still writing (`trickster report`, say)."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    run_dir = train(cfg, **QUIET).run_dir
    best = run_dir / "checkpoints" / "best"
    dead = [
        run_dir / f".status.json.tmp-{dead_pid}",
        run_dir / f".tokenizer.json.tmp-{dead_pid}",  # a name the resumed run never writes aside
        best / f".info.json.tmp-{dead_pid}",
        run_dir / "checkpoints" / f".step_000006.tmp-{dead_pid}",
    ]
    live = [
        run_dir / f".report.html.tmp-{live_pid}",
        run_dir / "checkpoints" / f".step_000099.tmp-{live_pid}",
    ]
    for path in dead + live:
        if path.name.startswith(".step_"):
            path.mkdir()
            (path / run_checkpoints.WEIGHTS).write_bytes(b"half")
        else:
            path.write_text("half", encoding="utf-8")

    longer = cfg.model_copy(deep=True)
    longer.training.max_steps = 6
    result = train(longer, resume=True, **QUIET)

    assert [p for p in dead if p.exists()] == []
    assert all(p.exists() for p in live)
    assert (live[1] / run_checkpoints.WEIGHTS).read_bytes() == b"half"
    (resume,) = events(result.history, "resume")
    repairs = " ".join(resume["repairs"])
    for path in dead:
        assert path.name in repairs, (path.name, resume["repairs"])
    assert str(live_pid) not in repairs


def test_keep_last_rotation_never_deletes_best(micro, monkeypatch):
    """Validation losses 5, 1, 2, 3, ...: `best` is step 2's, older than every kept checkpoint."""
    losses = iter([5.0, 1.0] + [2.0 + i for i in range(20)])
    monkeypatch.setattr(train_module, "evaluate", lambda *args: next(losses))
    cfg = micro(
        training_config={"max_steps": 12, "warmup_steps": 1, "eval_every": 2, "save_every": 2, "keep_last": 2}
    )
    result = train(cfg, **QUIET)
    folder = result.run_dir / "checkpoints"
    assert [p.name for p in run_checkpoints.numbered(result.run_dir)] == ["step_000008", "step_000010"]
    assert sorted(p.name for p in folder.iterdir()) == ["best", "final", "step_000008", "step_000010"]
    best = checkpoint_load.load_checkpoint(folder / "best")
    assert best.info["step"] == 2 and best.info["best_val_loss"] == 1.0


def test_a_kill_before_the_rotation_leaves_keep_last_checkpoints_once_resumed(shakespeare_dir, tmp_path):
    """Killed once step_000008 is in place, before keep_last deletes step_000004: the resumed run
    saves no numbered checkpoint after it (12 is `final`), and used to end with both (seen in a
    random-kill loop)."""
    run = {"training_config": {"max_steps": 12, "warmup_steps": 1, "eval_every": 100, "save_every": 4}}
    run["training_config"] |= {"keep_last": 1, "sample_tokens": 0}
    crash(shakespeare_dir, tmp_path / "run", "before-prune", 2, run=run)
    assert [p.name for p in run_checkpoints.numbered(tmp_path / "run")] == ["step_000004", "step_000008"]

    train(micro_config(shakespeare_dir, tmp_path / "run", **run), resume=True, **QUIET)
    assert [p.name for p in run_checkpoints.numbered(tmp_path / "run")] == ["step_000008"]


def test_best_at_the_step_just_saved_links_its_weights_instead_of_writing_them(micro, monkeypatch):
    """Evaluations at 0, 2, 4, 6, each the best so far: `best` at 4 and 6 comes right after
    step_000004 and `final` of its step, whose weights it links (the same file, no second write),
    with a trainer.pt and info.json of its own; at 2 nothing was saved before it."""
    losses = iter([5.0, 4.0, 3.0, 1.0])
    monkeypatch.setattr(train_module, "evaluate", lambda *args: next(losses))
    cfg = micro(training_config={"max_steps": 6, "warmup_steps": 1, "eval_every": 2, "save_every": 4})
    result = train(cfg, **QUIET)
    folder = result.run_dir / "checkpoints"

    def inode(name: str, file: str = run_checkpoints.WEIGHTS) -> int:
        return (folder / name / file).stat().st_ino

    assert inode("best") == inode("final") != inode("step_000004")
    assert inode("best", "trainer.pt") != inode("final", "trainer.pt")
    best = checkpoint_load.load_checkpoint(folder / "best")
    assert best.info["step"] == 6 and best.info["val_loss"] == best.info["best_val_loss"] == 1.0
    assert checkpoint_load.load_trainer_state(folder / "best")["train_state"]["best_val_loss"] == 1.0


def _nan_loss_at(monkeypatch, bad_calls) -> None:
    """Training forward passes numbered in `bad_calls` (from 1) return a NaN loss."""
    forward = Transformer.forward
    count = 0

    def patched(self, idx, targets=None, *args, **kwargs):
        nonlocal count
        logits, loss = forward(self, idx, targets, *args, **kwargs)
        if self.training and targets is not None:
            count += 1
            if bad_calls(count):
                loss = loss * math.nan
        return logits, loss

    monkeypatch.setattr(Transformer, "forward", patched)


def test_non_finite_steps_are_skipped_and_counted(micro, monkeypatch):
    _nan_loss_at(monkeypatch, lambda n: n in (5, 6))
    cfg = micro(
        training_config={"max_steps": 12, "warmup_steps": 1, "log_every": 1, "max_nonfinite_steps": 3}
    )
    result = train(cfg, **QUIET)
    train_events = {r["step"]: r for r in events(result.history, "train")}
    assert train_events[5]["train_loss"] is None and train_events[6]["train_loss"] is None
    assert math.isfinite(train_events[7]["train_loss"])
    assert train_events[12]["skipped_steps"] == 2
    assert events(result.history, "end")[0]["skipped_steps"] == 2
    final = result.run_dir / "checkpoints" / "final"
    assert all(torch.isfinite(t).all() for t in weights(final).values())
    # the optimizer took 10 updates in 12 steps
    trainer = checkpoint_load.load_trainer_state(final)
    assert {int(s["step"]) for s in trainer["optimizer"]["state"].values()} == {10}


def test_a_diverged_run_stops_naming_the_last_good_checkpoint(micro, monkeypatch):
    _nan_loss_at(monkeypatch, lambda n: n >= 5)
    cfg = micro(
        training_config={
            "max_steps": 20,
            "warmup_steps": 1,
            "save_every": 2,
            "eval_every": 2,
            "max_nonfinite_steps": 3,
        }
    )
    with pytest.raises(UserError) as caught:
        train(cfg, **QUIET)
    message = str(caught.value)
    assert "training stopped at step 7: 3 updates in a row had a non-finite loss" in message
    assert "checkpoints/step_000006" in message
    assert "training_config.learning_rate" in message and "bfloat16" in message
    stopped = [json.loads(line) for line in (Path(cfg.logging.output_dir) / "metrics.jsonl").open()][-1]
    assert stopped["event"] == "stopped" and stopped["reason"] == "non-finite"
    # step 7 lies after the last train line (step 6): `trickster runs` counts it from this event
    tokens = 7 * cfg.training.batch_size * cfg.model.max_seq_len
    assert stopped["tokens_seen"] == tokens and read_run(cfg.logging.output_dir).tokens_seen == tokens


def test_non_finite_weights_never_become_best(micro, monkeypatch):
    """An evaluation that reports a great loss for broken (NaN) weights must not save them."""
    evaluate = train_module.evaluate
    calls = 0

    def poisoned(model, *args):
        nonlocal calls
        calls += 1
        if calls == 2:  # the evaluation at step 2
            with torch.no_grad():
                model.norm.weight.fill_(math.nan)
            return 0.0
        return evaluate(model, *args)

    monkeypatch.setattr(train_module, "evaluate", poisoned)
    cfg = micro(
        training_config={"max_steps": 20, "warmup_steps": 1, "eval_every": 2, "max_nonfinite_steps": 2}
    )
    with pytest.raises(UserError, match="non-finite"):
        train(cfg, **QUIET)
    assert not (Path(cfg.logging.output_dir) / "checkpoints" / "best").exists()


@pytest.mark.parametrize(
    ("code", "reason", "fix"),
    [
        (errno.ENOSPC, "No space left on device", "free disk space"),
        (errno.EACCES, "Permission denied", "make the folder writable"),
        (errno.EROFS, "Read-only file system", "make the folder writable"),
    ],
)
def test_a_failed_checkpoint_write_leaves_earlier_checkpoints_intact(micro, monkeypatch, code, reason, fix):
    """One line with the cause's own fix (errors.write_fix): a read-only folder was told to free
    disk space too."""
    from trickster.train import tensor_files

    save_file = tensor_files.save_file
    calls = 0

    def failing(tensors, filename, *args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(code, __import__("os").strerror(code), str(filename))
        return save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(tensor_files, "save_file", failing)
    cfg = micro(training_config={"max_steps": 8, "warmup_steps": 1, "eval_every": 100, "save_every": 2})
    with pytest.raises(UserError, match=f"could not write checkpoint .*step_000004 \\({reason}") as caught:
        train(cfg, **QUIET)
    run_dir = Path(cfg.logging.output_dir)
    continues = (  # a full disk: the run's own line (train/disk_full.py), naming the checkpoint kept
        f"continue from checkpoints/step_000002 (step 2, kept whole) with: trickster train --config "
        f"{run_dir / 'config.yaml'} --resume"
        if code == errno.ENOSPC
        else "continue with --resume (earlier checkpoints are untouched)"
    )
    assert str(caught.value).endswith(f"({reason}); {fix}, then {continues}")
    run_dir = Path(cfg.logging.output_dir)
    assert run_checkpoints.latest(run_dir).name == "step_000002"
    assert checkpoint_load.load_checkpoint(run_dir / "checkpoints" / "step_000002").info["step"] == 2
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000002"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="no /proc on this system")
def test_a_user_refused_a_write_in_proc_is_not_told_to_make_it_writable(tmp_path):
    """In /proc a user other than root is refused with EACCES, as in a folder whose mode refuses it
    (root is told ENOENT, which test_cli_errors' /proc case sees): the file system's size (0
    blocks) tells the two apart, and only the folder is to be made writable."""
    fix = write_fix("choose another --out")
    in_proc = PermissionError(errno.EACCES, "Permission denied", "/proc/self/metrics.jsonl")
    in_folder = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "metrics.jsonl"))
    assert fix(in_proc) == "no file can be written there (as in /proc or /sys); choose another --out"
    assert fix(in_folder) == "make the folder writable, or choose another --out"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_for_the_metrics_is_one_clear_error(micro, tmp_path):
    """A real ENOSPC: metrics.jsonl points at /dev/full, which refuses every write."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    train(cfg, **QUIET)
    run_dir = Path(cfg.logging.output_dir)
    before = {p: p.read_bytes() for p in run_dir.rglob("*") if p.is_file() and p.name != "metrics.jsonl"}
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "metrics.jsonl").symlink_to("/dev/full")
    cfg.training.max_steps = 6
    resume_fix = r"free disk space, then continue with --resume$"  # the run has a checkpoint
    with pytest.raises(UserError, match=r"metrics.jsonl \(No space left on device\); " + resume_fix):
        train(cfg, resume=True, **QUIET)
    assert all(p.read_bytes() == content for p, content in before.items())


def test_a_crash_cut_metrics_line_is_dropped(micro):
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    train(cfg, **QUIET)
    metrics = Path(cfg.logging.output_dir) / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"event": "train", "st')
    cfg.training.max_steps = 6
    result = train(cfg, resume=True, **QUIET)
    assert [r["step"] for r in events(result.history, "train")] == [2, 4, 6]


def test_a_damaged_line_inside_the_metrics_is_kept_and_said_and_the_run_resumes(micro, tmp_path, capsys):
    """A line of metrics.jsonl damaged since it was written (not a last line cut short by a kill) is
    no reason to refuse a resume: the training state lies in the checkpoint. It stays as it was
    among the events kept around it and is said, as report and runs say it; a damaged line among
    the events after the checkpoint goes with them."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    run_dir, config = Path(cfg.logging.output_dir), tmp_path / "run.yaml"
    save_config(cfg, config)
    argv = ["train", "--config", str(config), "--no-progress", "training_config.resume=auto"]
    assert cli.main(argv) == 0
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if '"event": "eval", "step": 2' in line)
    damaged = lines[at][: len(lines[at]) // 2] + "\n"  # a disk fault: the eval at step 2 cut in half
    past = json.dumps({"event": "train", "step": 5, "time": 1.0}) + "\n"  # logged after the checkpoint
    metrics.write_text("".join([*lines[:at], damaged, *lines[at + 1 :], "#garbage\n", past]))
    capsys.readouterr()

    assert cli.main([*argv, "training_config.max_steps=6"]) == 0
    out = capsys.readouterr().out
    assert (
        f"metrics.jsonl line {at + 1} is damaged (not an event) and was kept as found; report and runs "
        "skip it (delete it to stop their notes)\n"
    ) in out
    assert (
        f"metrics.jsonl line {len(lines) + 1} is damaged (not an event) and was left out; it lay among "
        "the events after the checkpoint\n"
    ) in out
    resumed = metrics.read_text(encoding="utf-8").splitlines(keepends=True)
    assert resumed[at] == damaged and "#garbage\n" not in resumed
    problems: list[str] = []
    steps = [(r["event"], r["step"]) for r in read_metrics(metrics, problems) if r["event"] != "train"]
    assert steps == [("start", 0), ("eval", 0), ("resume", 4), ("eval", 4), ("eval", 6), ("end", 6)]
    assert problems == [
        f"metrics.jsonl line {at + 1} is damaged (not an event) and was skipped; delete it to stop this note"
    ]
    assert cli.main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"note: {problems[0]}"
    assert cli.main(["runs", str(run_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"note: {run_dir.name}: {problems[0]}"


def test_a_second_process_training_in_the_same_folder_is_refused(shakespeare_dir, tmp_path, capsys):
    """Two `trickster train` into one --out, with or without --resume: the second is one line, exit
    status 2, and writes nothing (before, both trained and appended to one metrics.jsonl); the
    resume is not told to choose another --out (it was), which holds none of the run's checkpoints.
    The claim dies with its process: after a SIGKILL the run resumes."""
    training = {
        "max_steps": 100000,
        "log_every": 1,
        "eval_every": 100000,
        "save_every": 2,
        "sample_tokens": 0,
    }
    run_dir = tmp_path / "run"
    cfg = micro_config(shakespeare_dir, run_dir, training_config=training)
    save_config(cfg, tmp_path / "run.yaml")
    child = children.Child("trickster", "train", "--config", str(tmp_path / "run.yaml"))
    try:
        deadline = time.monotonic() + 120
        while run_checkpoints.latest(run_dir) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        # a new run may go elsewhere; a resume continues this folder's checkpoints, so it waits
        fixes = {"": "or choose another --out", "--resume": f"or stop it with kill {child.pid} (it saves"}
        for flag, fix in fixes.items():
            assert cli.main(["train", "--config", str(tmp_path / "run.yaml"), *flag.split()]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: {run_dir} is in use: process {child.pid} is training there")
            assert "Traceback" not in err and len(err.splitlines()) == 1
            assert fix in err and (flag == "" or "--out" not in err), err
        assert child.poll() is None  # the first run trains on, alone
    finally:
        child.kill()
        child.wait(timeout=60)
    history = read_metrics(run_dir / "metrics.jsonl")
    assert [r["event"] for r in history].count("start") == 1 and not events(history, "resume")
    step = run_checkpoints.checkpoint_step(run_checkpoints.latest(run_dir))
    cfg.training.max_steps = step + 2
    resumed = train(cfg, resume=True, **QUIET)
    assert resumed.state.step == step + 2


def test_a_kill_while_resume_rewrites_the_metrics_loses_no_event(reference, shakespeare_dir, tmp_path):
    """On resume, metrics.jsonl is cut back to the checkpoint. A kill half-way through that rewrite
    used to leave half the file (the events of steps 5-8 gone for good); now the old file is
    replaced only once the new one is whole."""
    run_dir = tmp_path / "run"
    crash(shakespeare_dir, run_dir, "before-batch", 19)  # end of step 9: step_000008 to resume from
    before = read_metrics(run_dir / "metrics.jsonl")
    crash(shakespeare_dir, run_dir, "during-write-of-metrics.jsonl", 1, "--resume")

    assert read_metrics(run_dir / "metrics.jsonl") == before
    resumed = train(micro_config(shakespeare_dir, run_dir, **CRASH_RUN), resume=True, **QUIET)
    assert curve(resumed.history) == curve(reference.history)
    assert_same_weights(run_dir / "checkpoints" / "final", reference.run_dir / "checkpoints" / "final")


@pytest.mark.slow
def test_a_resume_killed_while_it_rewrites_the_run_files_leaves_each_whole(shakespeare_dir, tmp_path):
    """A resume writes config.yaml and manifest.json again and rebuilds metrics.csv: killed half-way
    through one, it used to leave half the file (a run that `trickster runs` could not read); now
    the old file is replaced only once the new one is whole."""
    run_dir = tmp_path / "run"
    crash(shakespeare_dir, run_dir, "before-batch", 19)
    for name in ("config.yaml", "manifest.json", "metrics.csv"):
        copy = tmp_path / name / "run"
        shutil.copytree(run_dir, copy)
        before = (copy / name).read_bytes()
        crash(shakespeare_dir, copy, f"during-write-of-{name}", 1, "--resume")
        assert (copy / name).read_bytes() == before, name


def test_a_full_disk_under_safetensors_is_one_clear_error(micro, monkeypatch):
    """safetensors reports a full disk as SafetensorError, not OSError (seen on a full tmpfs): it
    used to end the run with a traceback."""
    from safetensors import SafetensorError

    from trickster.train import tensor_files

    save_file, calls = tensor_files.save_file, []

    def full(tensors, filename, *args, **kwargs):
        calls.append(filename)
        if len(calls) == 2:  # the message of a real ENOSPC
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return save_file(tensors, filename, *args, **kwargs)

    monkeypatch.setattr(tensor_files, "save_file", full)
    cfg = _refused_at_the_second_checkpoint(micro)
    monkeypatch.setattr(tensor_files, "save_file", save_file)  # space freed
    assert train(cfg, resume=True, **QUIET).state.step == 8


def _refused_at_the_second_checkpoint(micro):
    """Trains with a checkpoint every 2 steps, whose second save meets the full disk: one line,
    and the first checkpoint is all there is. Returns the config (to resume)."""
    cfg = micro(training_config={"max_steps": 8, "warmup_steps": 1, "eval_every": 100, "save_every": 2})
    with pytest.raises(
        UserError, match=r"could not write checkpoint .*step_000004 \(No space left on device\)"
    ):
        train(cfg, **QUIET)
    run_dir = Path(cfg.logging.output_dir)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_000002"]
    return cfg


@pytest.mark.skipif(resource is None, reason="needs RLIMIT_FSIZE")
def test_a_write_refused_under_torch_save_is_one_clear_error(micro):
    """torch.save reports any refused write (a full disk, a quota, a file size limit) as
    RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), without
    an errno: a quota (EDQUOT, with space left on the disk) ended the run with that traceback. A
    real refusal here: a file size limit (EFBIG; Python ignores SIGXFSZ) that model.safetensors
    fits under and trainer.pt does not. The checkpoints of the run resumed stay as they were."""
    cfg = micro(training_config={"max_steps": 2, "warmup_steps": 1, "eval_every": 100, "save_every": 2})
    train(cfg, **QUIET)
    folder = Path(cfg.logging.output_dir) / "checkpoints"

    def files():
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    before = files()
    weights, trainer = len(before[f"final/{run_checkpoints.WEIGHTS}"]), len(before["final/trainer.pt"])
    limit = (weights + trainer) // 2
    assert weights < limit < trainer

    cfg.training.max_steps = 4
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        with pytest.raises(UserError, match=r"could not write checkpoint .* \(File too large\)") as caught:
            train(cfg, resume=True, **QUIET)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert "earlier checkpoints are untouched" in str(caught.value)
    assert files() == before  # no staging folder left either
    assert train(cfg, resume=True, **QUIET).state.step == 4  # the limit lifted


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("file", ["metrics.csv", "loss.png"])
def test_a_full_disk_for_the_csv_or_the_plot_is_one_clear_error(micro, monkeypatch, file):
    """A real ENOSPC from /dev/full under metrics.csv or the plot's staging file: one line naming
    the file (it was a traceback); the newest checkpoint is whole, and once the disk has room
    the run resumes."""
    cfg = micro(training_config={"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    cfg.logging.loss_plot = True
    train(cfg, **QUIET)
    run_dir = Path(cfg.logging.output_dir)
    if file == "metrics.csv":
        full = run_dir / file
        full.unlink()
        full.symlink_to("/dev/full")
    else:  # the staging file, linked once the plot is drawn: the resume first tidies such names away
        full, drawn = run_dir / f".loss.png.tmp-{os.getpid()}", plots.png_bytes

        def draw_then_fill(fig, *args, **kwargs):
            full.unlink(missing_ok=True)
            full.symlink_to("/dev/full")
            return drawn(fig, *args, **kwargs)

        monkeypatch.setattr(plots, "png_bytes", draw_then_fill)
    cfg.training.max_steps = 6
    with pytest.raises(
        UserError,
        # metrics.csv is written as the resume starts (its own line); loss.png as the run trains,
        # whose line names the checkpoint it kept (train/disk_full.py)
        match=rf"/{file} \(No space left on device\); free disk space, then continue "
        + ("with --resume$" if file == "metrics.csv" else "from checkpoints/"),
    ):
        train(cfg, resume=True, **QUIET)
    assert checkpoint_load.load_checkpoint(run_checkpoints.latest(run_dir)).info["step"] >= 4
    assert file == "metrics.csv" or not full.is_symlink()  # the plot removes its own staging file
    full.unlink(missing_ok=True)  # space freed
    monkeypatch.undo()
    assert train(cfg, resume=True, **QUIET).state.step == 6
    assert (run_dir / "loss.png").is_file() and not list(run_dir.glob(".loss.png.tmp-*"))


# evaluations at 0, 4, 8, 12, each just after a checkpoint (step_000004, step_000008, final)
EVAL_AT_SAVES = {**CRASH_RUN, "training_config": {**CRASH_RUN["training_config"], "eval_every": 4}}


@pytest.fixture(scope="module")
def eval_at_saves_reference(shakespeare_dir, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval-at-saves") / "run"
    return train(micro_config(shakespeare_dir, run_dir, **EVAL_AT_SAVES), **QUIET)


@pytest.mark.parametrize(
    ("moment", "n", "resume_point", "resume"),
    [
        pytest.param("during-eval", 3, "step_000008", True, id="during-the-evaluation-after-step-8"),
        pytest.param("during-best-replace", 2, "final", True, id="replacing-best-after-the-last-step"),
        pytest.param("during-eval", 4, "final", True, id="during-the-last-evaluation"),
        # `final` is at max_steps, but the run has not ended: auto is no no-op here
        pytest.param("during-eval", 4, "final", "auto", id="during-the-last-evaluation-resume-auto"),
    ],
)
def test_a_kill_after_a_checkpoint_before_its_evaluation_ends_is_resumed_exactly(
    moment, n, resume_point, resume, eval_at_saves_reference, shakespeare_dir, tmp_path
):
    """A checkpoint is saved before its step's evaluation. Killed before that evaluation (and the
    `best` it may save) ended, the resumed run used to skip it: an evaluation missing from the
    curve, or an older `best` (seen in a random-kill loop). It is done again on resume."""
    run_dir = tmp_path / "run"
    crash(shakespeare_dir, run_dir, moment, n, run=EVAL_AT_SAVES)
    assert run_checkpoints.latest(run_dir).name == resume_point

    resumed = train(micro_config(shakespeare_dir, run_dir, **EVAL_AT_SAVES), resume=resume, **QUIET)
    assert not resumed.finished_before

    reference = eval_at_saves_reference
    assert curve(resumed.history) == curve(reference.history)
    assert_same_weights(run_dir / "checkpoints" / "final", reference.run_dir / "checkpoints" / "final")
    assert_same_weights(run_dir / "checkpoints" / "best", reference.run_dir / "checkpoints" / "best")
    # what `info`, `runs` and `serve` show: the losses of every checkpoint's own step, as the
    # uninterrupted run recorded them (the resumed-from one got its evaluation's loss again)
    losses = ("step", "val_loss", "best_val_loss", "tokens_seen")
    for folder in run_checkpoints.numbered(run_dir) + [
        run_dir / "checkpoints" / n for n in ("best", "final")
    ]:
        info, twin = (
            run_checkpoints.read_info(folder),
            run_checkpoints.read_info(reference.run_dir / "checkpoints" / folder.name),
        )
        assert [info[k] for k in losses] == [twin[k] for k in losses], folder.name


def test_without_flock_training_is_refused_in_one_line_before_writing(micro, monkeypatch, capsys):
    """Native Windows has no fcntl: one line naming the systems that work, before any training."""
    from trickster.train import run_lock

    monkeypatch.setattr(run_lock, "fcntl", None)
    cfg = micro(training_config={"max_steps": 2, "warmup_steps": 1})
    config_path = Path(cfg.logging.output_dir).parent / "run.yaml"
    save_config(cfg, config_path)
    assert cli.main(["train", "--config", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: training needs a POSIX system") and "WSL2" in err
    assert len(err.splitlines()) == 1
    assert not (Path(cfg.logging.output_dir) / "metrics.jsonl").exists()


def test_a_run_with_only_its_best_says_best_is_no_checkpoint_to_continue_from(
    shakespeare_dir, tmp_path, capsys
):
    """A run killed after an evaluation wrote `best` but before its first numbered checkpoint
    (eval_every below save_every) was told 'no complete checkpoint' beside a complete best."""
    from trickster.train.signals import announce_signals

    run = tmp_path / "run"
    training = {"max_steps": 2, "warmup_steps": 0, "eval_every": 2, "sample_tokens": 0}
    cfg = micro_config(shakespeare_dir, run, training_config=training)
    train(cfg, **QUIET)
    shutil.rmtree(run / "checkpoints" / "final")  # as a kill before the end of the run leaves it
    assert run_checkpoints.latest(run) is None and run_checkpoints.is_complete(run / "checkpoints" / "best")

    only_best = r"nothing to resume .*: no checkpoint to continue from .*checkpoints/best"
    with pytest.raises(UserError, match=only_best):
        train(cfg, resume=True, **QUIET)
    capsys.readouterr()
    announce_signals(run)[1](signal.SIGTERM)
    assert "checkpoints/best holds the best weights so far" in capsys.readouterr().err
    # the lines of an out-of-memory error and of a signal before the first step said 'no checkpoint
    # was saved yet' beside it
    sized = cfg.model_copy(deep=True)
    sized.model.vocab_size = 65  # as the run resolved "auto" for the data's tokenizer
    out_of_memory = memory.out_of_memory(sized, torch.device("cpu"), Dist(), "a training step", 3, None)
    starting = signals.StoppedStarting(signal.SIGTERM, run)
    for line in (str(out_of_memory), str(starting)):
        assert "; no checkpoint to continue from was saved yet (checkpoints/best holds the best" in line
    shutil.rmtree(run / "checkpoints" / "best")
    with pytest.raises(UserError, match="nothing to resume .*: no complete checkpoint; "):
        train(cfg, resume=True, **QUIET)
