"""Folders written by older versions, read by this one. Each test gives a folder made by this
version the shape an older one wrote (a key it did not write removed, a value it wrote its own
way), as the git history records it, and checks what this version does with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from trickster import cli, run_checkpoints
from trickster.config import Config, TrainingConfig, config_from_dict, load_config
from trickster.config_yaml import SAVED_MARK
from trickster.data.loader import load_data
from trickster.errors import UserError
from trickster.observe.curves import Curves
from trickster.observe.events import read_metrics
from trickster.train import checkpoint_load, checksums
from trickster.train.device import settings_restored
from trickster.train.loop import Trainer, train
from trickster.train.resume import trainer_state

from .conftest import QUIET, events, finetune_config


def older(checkpoint: Path, edit, info_keys: tuple[str, ...] = ()) -> None:
    """`edit` the checkpoint's trainer.pt in place; drop `info_keys` from its info.json, and the
    checksums, which every version before 2026-11-30 lacked."""
    trainer = torch.load(checkpoint / "trainer.pt", weights_only=True)
    edit(trainer)
    torch.save(trainer, checkpoint / "trainer.pt")
    info_keys = (*info_keys, checksums.SUMS)
    info = json.loads((checkpoint / "info.json").read_text())
    (checkpoint / "info.json").write_text(json.dumps({k: v for k, v in info.items() if k not in info_keys}))


# Runs that have done their steps are resumed as a requeue loop does (`resume: auto`), after a kill
# once their last evaluation was logged, before their `end` event (`unended`): an explicit --resume of
# a run that has done its steps is refused in one line, and `auto` in one that ended changes nothing.
FINISHED = "auto"


def unended(run: Path) -> Path:
    """`run` as a kill after its last evaluation (while `best` was written) leaves it: without its
    `end` event, so a resume evaluates the last step again (tests/test_resume.py) and ends the run."""
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert json.loads(lines[-1])["event"] == "end"
    (run / "metrics.jsonl").write_text("".join(lines[:-1]))
    return run


def resumed(run: Path, **training) -> Config:
    """The run's own config, continuing in `run` with `training` changed."""
    raw = checkpoint_load.read_config(run / "checkpoints" / "final").to_dict()
    raw["training_config"].update(training)
    raw["logging_config"]["output_dir"] = str(run)
    return config_from_dict(raw, "resumed config")


def copy_run(trained_run: Path, tmp_path: Path, name: str = "run") -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / name))


# ------------------------------------------------------------------ metrics.jsonl before 2026-11-29


def test_a_run_whose_eval_events_lack_tokens_seen_has_its_report_and_loss_curves(
    trained_run, tmp_path, capsys
):
    """Eval events carry tokens_seen since 2026-11-29 04:14; before, only train events did. The
    report (and the loss plot a resumed run redraws) failed with KeyError: 'tokens_seen'."""
    run = copy_run(trained_run, tmp_path)
    records = read_metrics(run / "metrics.jsonl")
    for r in records:
        if r["event"] == "eval":
            del r["tokens_seen"]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))

    assert cli.main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()
    curves = Curves.from_records(records)
    train_tokens = {r["step"]: r["tokens_seen"] for r in events(trained_run, "train")}
    assert curves.val_step == [0, 6, 12]
    assert curves.val_tokens == [None, train_tokens[6], train_tokens[12]]  # step 0: no train event


# ------------------------------------------------------------------ prepared data, meta.json format 1


def test_data_report_of_a_folder_written_before_shards(shakespeare_dir, tmp_path, capsys):
    """Format 1 (flat train.bin and val.bin, until 2026-11-22 08:24) loads and trains; its meta.json
    has no val_split, which `data report` read unguarded (KeyError)."""
    data = load_data(shakespeare_dir)
    old = tmp_path / "old"
    old.mkdir()
    shutil.copy(shakespeare_dir / "tokenizer.json", old)
    kept = ("source", "tokenizer", "tokenizer_fingerprint", "vocab_size", "eot_id", "dtype", "documents")
    meta = {k: data.meta[k] for k in kept} | {"format": 1, "tokens_sha256": data.meta["tokens_sha256"]}
    for split in ("train", "val"):
        np.asarray(getattr(data, split)).tofile(old / f"{split}.bin")
        meta |= {f"{split}_{k}": data.meta[f"{split}_{k}"] for k in ("tokens", "chars")}
    (old / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()

    assert cli.main(["data", "report", str(old)]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "validation: not recorded" in first and "format 1" in first


# ------------------------------------------------------------------ trainer.pt


def test_a_checkpoint_saved_before_its_evaluation_without_eval_due_evaluates_again(trained_run, tmp_path):
    """From 2026-11-29 05:24 (trainer.pt has `spikes`) to 13:03 (`eval_due`), the checkpoint of an
    evaluation's step was saved before that evaluation and did not say so: its best_val_loss misses
    that evaluation. Resumed, the run skipped it and ended (or went on) with a stale best."""
    evals = {r["step"]: r["val_loss"] for r in events(trained_run, "eval")}
    assert evals[12] < evals[6], "the test needs the last evaluation to be the best"
    run = unended(copy_run(trained_run, tmp_path))
    older(run / "checkpoints" / "final", lambda trainer: trainer.pop("eval_due"))

    result = train(resumed(run), resume=FINISHED, **QUIET)

    assert [r["step"] for r in events(result, "eval")] == [0, 6, 12]
    assert events(result, "eval")[-1]["val_loss"] == pytest.approx(evals[12], rel=1e-6)
    assert events(result, "end")[0]["best_val_loss"] == pytest.approx(evals[12], rel=1e-6)


def test_a_checkpoint_from_before_checkpoints_preceded_evaluations_is_not_evaluated_again(
    trained_run, tmp_path
):
    """Until 2026-11-29 05:24 (no `spikes`, no `eval_due`) checkpoints followed the evaluation."""
    run = unended(copy_run(trained_run, tmp_path))
    older(run / "checkpoints" / "final", lambda trainer: [trainer.pop(k) for k in ("eval_due", "spikes")])

    result = train(resumed(run), resume=FINISHED, **QUIET)

    assert events(result, "eval") == events(trained_run, "eval")  # the same events, none again


def test_an_older_checkpoint_keeps_its_validation_windows_under_another_batch_split(trained_run, tmp_path):
    """Checkpoints record val_draw_width since 2026-11-29 14:30. An older one's windows were
    drawn batch_size x processes wide as its own config and processes had them; falling back to
    the resumed run's batch_size evaluated another set (here 16 windows instead of 32), so the
    same weights got another loss and `best` compared losses of two sets."""
    evals = {r["step"]: r["val_loss"] for r in events(trained_run, "eval")}
    run = unended(copy_run(trained_run, tmp_path))
    older(run / "checkpoints" / "final", lambda trainer: trainer.pop("val_draw_width"), ("val_draw_width",))

    result = train(resumed(run, batch_size=4, gradient_accumulation_steps=2), resume=FINISHED, **QUIET)

    again = events(result, "eval")[-1]  # final was saved before its evaluation: done again
    assert again["step"] == 12 and again["val_loss"] == pytest.approx(evals[12], rel=1e-6)


def test_a_checkpoint_with_rng_per_rank_resumes_as_one_with_the_list(trained_run, tmp_path):
    """From 2026-11-22 07:16 to 08:08 trainer.pt held rank 0's RNG state in `rng` and the list of
    every process's in `rng_per_rank` (KeyError: 0 on resume)."""
    now, then = copy_run(trained_run, tmp_path, "now"), copy_run(trained_run, tmp_path, "then")

    def split_rng(trainer: dict) -> None:
        trainer["rng_per_rank"], trainer["rng"] = trainer["rng"], trainer["rng"][0]

    older(then / "checkpoints" / "final", split_rng)
    expected = train(resumed(now, max_steps=14), resume=True, **QUIET)
    result = train(resumed(then, max_steps=14), resume=True, **QUIET)
    losses = [[r["train_loss"] for r in events(run, "train")] for run in (result, expected)]
    assert losses[0] == losses[1]


def test_a_fine_tune_on_masked_data_measures_its_best_again(trained_run, chat_data, tmp_path):
    """Before 2026-11-29 14:30 a validation loss was the mean of per-batch means; on loss-masked
    data it differs from the pooled mean used since. A resumed fine-tune compared the two, and a
    worse checkpoint could replace `best`: `best` is now evaluated again on resume."""
    lora_cfg = {"rank": 2, "alpha": 4, "targets": ["wq", "w2"]}
    cfg = finetune_config(
        trained_run, chat_data[0], tmp_path / "ft", max_steps=4, eval_every=2, save_every=2, lora=lora_cfg
    )
    train(cfg, **QUIET)
    best = run_checkpoints.read_info(tmp_path / "ft" / "checkpoints" / "best")["best_val_loss"]

    def per_batch_measure(trainer: dict) -> None:
        trainer.pop("val_draw_width")
        trainer["train_state"]["best_val_loss"] = best + 0.5  # what the older measure read

    older(unended(tmp_path / "ft") / "checkpoints" / "final", per_batch_measure, ("val_draw_width",))
    lines = []
    with settings_restored():
        trainer = Trainer(cfg, resume=FINISHED, echo=lambda *a, **k: lines.append(" ".join(map(str, a))))
    assert trainer.state.best_val_loss == pytest.approx(best, rel=1e-6)
    assert any(line.startswith("best (step ") and "evaluated again" in line for line in lines)


def test_a_fine_tune_resumed_before_its_evaluation_names_best_own_older_loss(
    trained_run, chat_data, tmp_path
):
    """From 05:24 to 13:03 on 2026-11-29 the checkpoint of an evaluation's step was saved before that
    evaluation (`final` at the last step still is), so its best_val_loss is the best up to the
    evaluation before. Resumed from one, the line of `best` evaluated again gives best's own older
    loss (its step's eval event), not that."""
    lora_cfg = {"rank": 2, "alpha": 4, "targets": ["wq", "w2"]}
    cfg = finetune_config(
        trained_run, chat_data[0], tmp_path / "ft", max_steps=4, eval_every=2, save_every=2, lora=lora_cfg
    )
    evaluated = {e["step"]: e["val_loss"] for e in events(train(cfg, **QUIET), "eval")}
    checkpoints = tmp_path / "ft" / "checkpoints"
    assert run_checkpoints.checkpoint_step(checkpoints / "best") == 4 and evaluated[4] < evaluated[2]
    for name, keys in (("final", ("eval_due", "val_draw_width")), ("best", ("val_draw_width",))):
        older(
            checkpoints / name,
            lambda trainer, keys=keys: [trainer.pop(key) for key in keys],
            ("val_draw_width",),
        )
    lines = []
    cfg.training.max_steps = 6
    with settings_restored():
        Trainer(cfg, resume=True, echo=lambda *a, **k: lines.append(" ".join(map(str, a))))
    said = [line for line in lines if line.startswith("best (step 4) evaluated again")]
    assert said and f"({evaluated[4]:.4f} as older versions averaged the batches)" in said[0], lines


# ------------------------------------------------------------------ info.json before 2026-11-30


def test_checkpoints_saved_without_checksums_load_and_resume_as_they_did(trained_run, tmp_path, capsys):
    """Until 2026-11-30 a checkpoint's info.json recorded no checksums: its files are read
    unchecked, as that version read them, by every command and by a resume, which continues as
    from a checkpoint that has them."""
    now, then = copy_run(trained_run, tmp_path, "now"), copy_run(trained_run, tmp_path, "then")
    for checkpoint in (then / "checkpoints").iterdir():
        older(checkpoint, lambda trainer: None)  # drops the checksums
        assert checksums.SUMS not in run_checkpoints.read_info(checkpoint)
    capsys.readouterr()

    assert cli.main(["generate", str(then), "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert cli.main(["export", str(then), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    expected = train(resumed(now, max_steps=14), resume=True, **QUIET)
    result = train(resumed(then, max_steps=14), resume=True, **QUIET)
    losses = [[r["train_loss"] for r in events(run, "train")] for run in (result, expected)]
    assert losses[0] == losses[1]
    assert checksums.SUMS in run_checkpoints.read_info(
        then / "checkpoints" / "final"
    )  # saved by this version


# ------------------------------------------------------------- info.json and trainer.pt before 2026-12-02


def test_a_checkpoint_that_does_not_say_when_its_loss_was_measured_reads_as_its_version_saved_it(
    trained_run, tmp_path, capsys
):
    """info.json records val_loss_step, trainer.pt last_val_step, since 2026-12-02. An older
    checkpoint's loss is its own step's where that version evaluated there (best, final, a multiple
    of eval_every); any other's is an earlier evaluation's, of a step it does not say. Resumed, the
    run records the step of each loss it measures from then on."""
    evals = {r["step"]: r["val_loss"] for r in events(trained_run, "eval")}
    run = copy_run(trained_run, tmp_path)
    for checkpoint in (run / "checkpoints").iterdir():
        older(checkpoint, lambda trainer: trainer["train_state"].pop("last_val_step"), ("val_loss_step",))
    step_6 = run / "checkpoints" / "step_000006"
    info = run_checkpoints.read_info(step_6)
    assert "val_loss_step" not in info
    assert run_checkpoints.recorded_loss(step_6, info, eval_every=6).shown() == f"{evals[6]:.4f}"
    # the same info.json in a run evaluated every 4 steps: step 6 holds step 4's loss
    assert run_checkpoints.recorded_loss(step_6, info, eval_every=4).shown() == (
        f"{evals[6]:.4f} measured at an earlier step"
    )
    capsys.readouterr()
    assert cli.main(["info", "--checkpoint", str(run / "checkpoints" / "final")]) == 0
    assert f"(step 12, val loss {evals[12]:.4f}, best {evals[12]:.4f})" in capsys.readouterr().out
    assert trainer_state(run / "checkpoints" / "best")["train_state"]["last_val_step"] == 12

    train(resumed(run, max_steps=14, save_every=13), resume=True, **QUIET)  # final's evaluation again

    between = run_checkpoints.read_info(run / "checkpoints" / "step_000013")
    assert (between["val_loss"], between["val_loss_step"]) == (pytest.approx(evals[12], rel=1e-6), 12)


# ------------------------------------------------------------------ config.yaml before newer limits


def saved_with(run: Path, *edits: tuple[str, str]) -> None:
    """The run's config.yaml and its checkpoints' as a version without a limit saved them: each
    (as saved, as the older version could have saved it) replaced in every one."""
    for config in [run / "config.yaml", *run.glob("checkpoints/*/config.yaml")]:
        text = config.read_text()
        for now, then in edits:
            assert now in text
            text = text.replace(now, then)
        config.write_text(text)


# learning_rate at most 1 since 2026-11-29 22:13, sample_tokens at most 100,000 since 22:40
BEFORE_LIMITS = (
    ("learning_rate: 0.003", "learning_rate: 2.0"),
    ("sample_tokens: 40", "sample_tokens: 200000"),
)


def test_a_checkpoint_saved_before_a_training_limit_still_loads_for_inference(trained_run, tmp_path, capsys):
    """read_config validated in full, so a checkpoint whose config.yaml holds a training setting
    a later limit refuses no longer loaded for generate, serve, eval, info, export or `runs`,
    although those settings change nothing the weights compute. They are kept as saved."""
    run = copy_run(trained_run, tmp_path)
    saved_with(run, *BEFORE_LIMITS)
    capsys.readouterr()

    assert cli.main(["generate", str(run), "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert cli.main(["info", "--checkpoint", str(run)]) == 0
    shown = capsys.readouterr().out
    assert "learning_rate: 2.0" in shown and "sample_tokens: 200000" in shown
    text = tmp_path / "held-out.txt"
    text.write_text("ROMEO:\nBut soft, what light through yonder window breaks?\n" * 4)
    assert cli.main(["eval", str(run), "--text", str(text), "--device", "cpu"]) == 0
    assert cli.main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert cli.main(["runs", str(tmp_path)]) == 0
    assert "finished" in capsys.readouterr().out.splitlines()[-1]
    cfg = checkpoint_load.read_config(run / "checkpoints" / "final")
    assert (cfg.training.learning_rate, cfg.training.sample_tokens) == (2.0, 200000)


def test_a_checkpoint_whose_model_field_breaks_a_newer_limit_is_refused_in_one_line(trained_run, tmp_path):
    """What builds the model is still checked in full (norm_eps of 1 or more: the output no longer
    depends on the input); the line names the key and says what to do."""
    run = copy_run(trained_run, tmp_path)
    saved_with(run, ("norm_eps: 1.0e-05", "norm_eps: 1.0"))
    with pytest.raises(UserError) as raised:
        checkpoint_load.load_checkpoint(run)
    assert str(raised.value) == (
        f"{run / 'checkpoints' / 'best' / 'config.yaml'}: model_config.norm_eps: input should be less "
        "than 1 (got 1.0); use another checkpoint"
    )


def test_a_saved_config_with_sections_by_their_python_names_keeps_the_same_rules(trained_run, tmp_path):
    """A config.yaml edited by hand may name its sections as Python does (`training:`, `model:`),
    which a config takes too: a training setting past a limit was a KeyError traceback, and a model
    setting past one was waived as if it were a training setting, so the model was built with it."""
    run = copy_run(trained_run, tmp_path)
    saved = run / "checkpoints" / "best" / "config.yaml"
    text = saved.read_text().replace("training_config:", "training:").replace("model_config:", "model:")
    saved.write_text(text.replace("learning_rate: 0.003", "learning_rate: 2.0"))
    assert checkpoint_load.read_config(saved.parent).training.learning_rate == 2.0
    saved.write_text(text.replace("norm_eps: 1.0e-05", "norm_eps: 1.0"))
    with pytest.raises(UserError, match=r"model_config.norm_eps: input should be less than 1 \(got 1.0\)"):
        checkpoint_load.read_config(saved.parent)


def test_resuming_a_run_saved_before_a_training_limit_says_which_overrides_continue_it(
    trained_run, tmp_path, capsys
):
    """`trickster train --config RUN/config.yaml --resume` validates the config it trains with in
    full: one line names each key and the override that sets it within its limit. With them the
    run resumes (the checkpoint's own config is read as saved) and says what changed."""
    run = copy_run(trained_run, tmp_path)
    saved_with(run, *BEFORE_LIMITS)
    argv = ["train", "--config", str(run / "config.yaml"), "--out", str(run), "--resume", "--no-progress"]
    capsys.readouterr()

    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {run / 'config.yaml'}: training_config.learning_rate: input should be less than or "
        "equal to 1 (got 2.0); training_config.sample_tokens: input should be less than or equal to "
        "100000 (got 200000); to continue the run, set training_config.learning_rate, "
        "training_config.sample_tokens on the command line within the limits, e.g. "
        "training_config.learning_rate=1.0 training_config.sample_tokens=100000 (its config.yaml "
        "is then saved with them)\n"
    )
    overrides = ["training_config.learning_rate=0.003", "training_config.sample_tokens=0"]
    assert cli.main([*argv, *overrides, "training_config.max_steps=14"]) == 0, capsys.readouterr().err
    resume = events(run, "resume")[-1]
    assert resume["changed"]["training_config.learning_rate"] == [2.0, 0.003]
    assert resume["changed"]["training_config.sample_tokens"] == [200000, 0]
    assert "sample_tokens: 0" in (run / "config.yaml").read_text()
    assert events(run, "end")[-1]["step"] == 14


# ------------------------------------------------------------------ config.yaml edited by hand

WRONG_KIND = (("learning_rate: 0.003", "learning_rate: abc"), ("seed: 7", "seed: seven"))


def test_a_checkpoint_with_a_training_setting_of_the_wrong_kind_still_loads_for_inference(
    trained_run, tmp_path, capsys
):
    """`learning_rate: abc` or `seed: seven` in a checkpoint's config.yaml (a hand edit) made
    generate, compare, info, runs and export refuse it as damaged, although the model does not use
    those settings: they are set aside for their defaults (compare seeds its untrained model with
    `seed`). What builds the model is still checked in full."""
    run = copy_run(trained_run, tmp_path)
    saved_with(run, *WRONG_KIND)
    capsys.readouterr()

    assert cli.main(["generate", str(run), "--max-new-tokens", "3", "--device", "cpu"]) == 0
    assert cli.main(["compare", str(run), "--max-new-tokens", "2"]) == 0
    assert cli.main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert cli.main(["runs", str(tmp_path)]) == 0
    assert "finished" in capsys.readouterr().out.splitlines()[-1]
    cfg = checkpoint_load.read_config(run / "checkpoints" / "final")
    defaults = TrainingConfig()
    assert (cfg.training.learning_rate, cfg.training.seed) == (defaults.learning_rate, defaults.seed)

    saved_with(run, ("hidden_dim: 64", "hidden_dim: abc"))
    with pytest.raises(UserError, match=r"model_config.hidden_dim: .*\(got 'abc'\); use another checkpoint"):
        checkpoint_load.load_checkpoint(run)


@pytest.mark.parametrize("edits", [BEFORE_LIMITS, WRONG_KIND], ids=["past-a-limit", "wrong-kind"])
def test_info_describes_a_run_config_that_training_would_refuse(trained_run, tmp_path, capsys, edits):
    """`trickster info --config RUN/config.yaml` said how to continue the run (an error, status 2)
    where it should describe the model: it reads the config as the run's checkpoints are read, and
    notes what training with it would have to set."""
    run = copy_run(trained_run, tmp_path)
    saved_with(run, *edits)
    capsys.readouterr()
    assert cli.main(["info", "--config", str(run / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert out.startswith("model: hidden 64, 2 layers") and "total" in out
    keys = [f"training_config.{now.partition(':')[0]}" for now, _ in edits]
    note = out.splitlines()[-1]
    assert note.startswith(f"note: to train with {run / 'config.yaml'}, set these on the command line: ")
    assert all(f"{key}: input should be" in note for key in keys)


def test_a_run_config_without_the_saved_mark_is_still_known_by_where_it_lies(trained_run, tmp_path):
    """A run saved before config.yaml began with its mark: known as a run's by its place (beside
    manifest.json and checkpoints/, or in a checkpoint), its limits still named with the overrides
    that continue it. A config of one's own is not taken for a run's (one named config.yaml
    beside a checkpoints folder was), and a run's copied elsewhere still is."""
    run = copy_run(trained_run, tmp_path)
    saved_with(run, ("sample_tokens: 40", "sample_tokens: 200000"))
    hint = "to continue the run, set training_config.sample_tokens on the command line"
    for config in [run / "config.yaml", run / "checkpoints" / "final" / "config.yaml"]:
        assert config.read_text().startswith(SAVED_MARK)
        copied = tmp_path / "copied.yaml"
        shutil.copy(config, copied)
        config.write_text(config.read_text().removeprefix(SAVED_MARK))
        for path in (config, copied):
            with pytest.raises(UserError, match=hint):
                load_config(path)
    crlf = tmp_path / "crlf.yaml"  # saved again by an editor with Windows line endings
    crlf.write_bytes(copied.read_bytes().replace(b"\n", b"\r\n"))
    with pytest.raises(UserError, match=hint):
        load_config(crlf)
    own = tmp_path / "project" / "config.yaml"
    (own.parent / "checkpoints").mkdir(parents=True)
    own.write_text(copied.read_text().removeprefix(SAVED_MARK))
    with pytest.raises(UserError) as raised:
        load_config(own)
    assert "sample_tokens: input should be less than or equal to 100000" in str(raised.value)
    assert "to continue the run" not in str(raised.value)
