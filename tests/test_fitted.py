"""Settings a run fits to itself when the user left them to a preset (train/fitted.py): a warmup
longer than a short run. The sample prompt of a fine-tune on prompt/response records is in
test_finetune.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from trickster import cli
from trickster.config import load_config

from .conftest import events, stopped_at

# the tiny preset (learning_rate 0.002, warmup_steps 100) cut down to seconds on a CPU
SHORT = [
    "training_config.batch_size=2",
    "training_config.seq_len=32",
    "training_config.log_every=1",
    "training_config.eval_every=10",
    "training_config.eval_batches=1",
    "training_config.sample_tokens=0",
]


def test_a_short_run_of_a_preset_fits_its_warmup_and_a_resume_keeps_it(shakespeare_dir, tmp_path, capsys):
    """`trickster train --preset tiny training_config.max_steps=20` was refused (the preset's warmup
    of 100 steps). It now warms up for 2 steps, says so in one line and records it: the rate logged
    after the first update is half the peak, after the second the peak, and it never rises again.
    Resumed by the
    same command with more steps (the preset's 100 again, which now fits), it keeps its 2 steps:
    the rate goes on down from where it was, instead of back into a warmup, and nothing is said to
    have changed but max_steps."""
    run = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--data", str(shakespeare_dir), "--out", str(run), "--no-progress"]
    argv += SHORT

    assert cli.main([*argv, "training_config.max_steps=20"]) == 0
    out = capsys.readouterr().out
    note = "warmup_steps 100 does not fit in 20 steps: warming up for 2 steps, a tenth of them"
    assert sum(note in line for line in out.splitlines()) == 1
    assert "warmup 2 -> cosine" in out  # the header's schedule
    assert load_config(run / "config.yaml").training.warmup_steps == 2
    rates = {e["step"]: e["lr"] for e in events(run, "train")}
    peak = load_config(preset="tiny").training.learning_rate
    assert rates[1] == peak / 2 and rates[2] == peak and rates[20] < peak
    assert all(rates[s + 1] <= rates[s] for s in range(2, 20))  # no more warmup after 2 steps

    assert cli.main([*argv, "training_config.max_steps=24", "--resume"]) == 0
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "changed on resume" in line] == [
        "changed on resume: training_config.max_steps 20 -> 24"
    ]
    assert note not in out and "warmup 2 -> cosine" in out
    assert load_config(run / "config.yaml").training.warmup_steps == 2
    resumed = {e["step"]: e["lr"] for e in events(run, "train") if e["step"] > 20}
    assert sorted(resumed) == [21, 22, 23, 24]
    assert resumed[21] < peak / 2 and all(resumed[s + 1] <= resumed[s] for s in range(21, 24))


def test_a_warmup_the_user_gives_is_kept_or_refused(shakespeare_dir, tmp_path, capsys):
    """A warmup given on the command line is the user's: kept when it fits (no note), refused in one
    line when it does not, before anything is written. Left to the preset, 4 steps get none."""
    run = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--data", str(shakespeare_dir), "--out", str(run), "--no-progress"]
    argv += [*SHORT, "training_config.max_steps=4"]

    assert cli.main([*argv, "training_config.warmup_steps=4"]) == 2
    err = capsys.readouterr().err
    assert "training_config.warmup_steps must be < training_config.max_steps (got 4 >= 4)" in err
    assert not run.exists()
    assert cli.main([*argv, "training_config.warmup_steps=3"]) == 0
    assert "does not fit" not in capsys.readouterr().out
    assert load_config(run / "config.yaml").training.warmup_steps == 3

    # left to the preset in a run under 10 steps: a tenth of them is no step at all
    assert cli.main([*argv, "--out", str(tmp_path / "unset")]) == 0
    assert "warmup_steps 100 does not fit in 4 steps: no warmup (set " in capsys.readouterr().out
    assert load_config(tmp_path / "unset" / "config.yaml").training.warmup_steps == 0


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_resume_with_fewer_steps_than_its_warmup_fits_it_again_and_the_rate_decays(
    shakespeare_dir, tmp_path, monkeypatch, capsys
):
    """A 200-step run of tiny (its warmup of 100 kept: it fits) stopped at step 4, resumed with
    max_steps=12: the kept warmup went on rising to the end (a sixth of the peak at step 12) and
    never decayed. Now the warmup, which the user left to the preset, is fitted again (1 step), one
    line says what became of the schedule, and the rate falls from step 5 to the floor at step 12.
    A warmup given on the command line that does not fit is refused, nothing changed. One the run
    was started with that still fits (6) is kept, and the line says so."""
    argv = ["train", "--preset", "tiny", "--data", str(shakespeare_dir), "--no-progress", *SHORT]
    tiny = load_config(preset="tiny").training
    for run, given in ((tmp_path / "preset", []), (tmp_path / "given", ["training_config.warmup_steps=6"])):
        stopped_at(4, monkeypatch)
        assert cli.main([*argv, "--out", str(run), "training_config.max_steps=200", *given]) == 130
        monkeypatch.undo()
    capsys.readouterr()

    run = tmp_path / "preset"
    files = {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()}
    again = [*argv, "--out", str(run), "--resume", "training_config.max_steps=12"]
    assert cli.main([*again, "training_config.warmup_steps=50"]) == 2
    assert capsys.readouterr().err == (
        "error: command line: training_config.warmup_steps must be < training_config.max_steps (got 50 >= "
        "12); set training_config.warmup_steps=1, a tenth of the steps\n"
    )
    assert {path: path.read_bytes() for path in sorted(run.rglob("*")) if path.is_file()} == files

    assert cli.main(again) == 0
    out = capsys.readouterr().out.splitlines()
    assert (
        "max_steps 200 -> 12: the cosine decay now ends at step 12; warmup_steps 100 does not fit in 12 "
        "steps: warming up for 1 step, a tenth of them (set training_config.warmup_steps to choose)"
    ) in out
    assert "changed on resume: training_config.warmup_steps 100 -> 1" in out
    rates = {e["step"]: e["lr"] for e in events(run, "train")}
    assert rates[4] < rates[3] * 2 < tiny.learning_rate  # it was warming up, on its way to 100
    assert all(rates[s + 1] < rates[s] for s in range(5, 12))  # down from the first step resumed
    near_the_floor = tiny.min_lr + (tiny.learning_rate - tiny.min_lr) / 20
    assert rates[12] < near_the_floor  # down to the floor by its last step
    assert load_config(run / "config.yaml").training.warmup_steps == 1
    assert '"training_config.warmup_steps": [100, 1]' in (run / "config.yaml").read_text()  # the fit

    run = tmp_path / "given"
    assert cli.main([*argv, "--out", str(run), "--resume", "training_config.max_steps=12"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "max_steps 200 -> 12: the cosine decay now ends at step 12; warmup 6 kept" in out
    rates = {e["step"]: e["lr"] for e in events(run, "train")}
    assert all(rates[s + 1] > rates[s] for s in range(1, 6))  # the warmup goes on to its 6th step
    assert all(rates[s + 1] < rates[s] for s in range(7, 12))  # then a cosine of 6 steps


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_a_resume_with_fewer_steps_fits_its_intervals_again(shakespeare_dir, tmp_path, monkeypatch, capsys):
    """tiny's 1,000 steps stopped at step 4 and resumed with max_steps=50 kept eval_every 250 and
    save_every 500: no evaluation and no checkpoint until its last step. Left to the preset, both are
    now fitted as a new 50-step run fits them (every 10 steps), said in the schedule's line and
    recorded. A 300-step run's save_every fitted to 60 was kept by a resume to 100 steps (one
    checkpoint, at 60): now 20. An interval given on the command line is kept, and when no step left
    reaches it before the last one line says so."""
    argv = ["train", "--preset", "tiny", "--data", str(shakespeare_dir), "--no-progress", *UNFITTED]
    argv += ["model_config.hidden_dim=32", "model_config.num_layers=1", "model_config.mlp_dim=96"]  # seconds
    for run, steps in ((tmp_path / "long", 1000), (tmp_path / "fitted", 300)):
        stopped_at(4, monkeypatch)
        assert cli.main([*argv, "--out", str(run), f"training_config.max_steps={steps}"]) == 130
        monkeypatch.undo()
    capsys.readouterr()

    run = tmp_path / "long"
    assert cli.main([*argv, "--out", str(run), "--resume", "training_config.max_steps=50"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "changed on resume: training_config.eval_every 250 -> 10" in out
    assert "changed on resume: training_config.save_every 500 -> 10" in out
    assert (
        "max_steps 1,000 -> 50: the cosine decay now ends at step 50; warmup_steps 100 does not fit in 50 "
        "steps: warming up for 5 steps, a tenth of them (set training_config.warmup_steps to choose); "
        "eval_every 250 -> 10 and save_every 500 -> 10 fitted again, as a new run of 50 steps fits them "
        "(set training_config.eval_every or save_every to choose)"
    ) in out
    assert _evaluated_at(run) == [0, 10, 20, 30, 40, 50]
    assert _saved_at(run) == [4, 10, 20, 30, 40]  # 4: the stop's
    record = (run / "config.yaml").read_text().splitlines()[1]
    assert json.loads(record[record.index("{") :]) == {
        "training_config.sample_prompt": ["ROMEO:", ""],  # the excerpt never holds it
        "training_config.warmup_steps": [100, 5],
        "training_config.eval_every": [250, 10],
        "training_config.save_every": [500, 10],
    }

    run = tmp_path / "fitted"
    given = ["--resume", "training_config.max_steps=100", "training_config.eval_every=150"]
    assert cli.main([*argv, "--out", str(run), *given]) == 0
    out = capsys.readouterr().out.splitlines()
    unreached = "eval_every 150 as given: none of the 96 steps left (to step 100) evaluates before the last"
    assert "changed on resume: training_config.save_every 60 -> 20" in out
    assert out[out.index(unreached) - 1].endswith(
        "; save_every 60 -> 20 fitted again, as a new run of 100 steps fits it (set "
        "training_config.save_every to choose)"
    )
    assert [line for line in out if "as given" in line] == [unreached]
    assert _evaluated_at(run) == [0, 100]
    assert _saved_at(run) == [4, 20, 40, 60, 80]


@pytest.mark.slow
def test_a_resume_with_more_steps_fits_its_intervals_again(shakespeare_dir, tmp_path, capsys):
    """A 50-step run of tiny fits save_every (500) to 10 steps; resumed with max_steps=100 it kept
    10, where a new run of 100 steps saves every 20 (the 12 of a 60-step run kept over 2,000 steps
    meant 160 evaluations). Now it is fitted again, said in one line and recorded; eval_every, given
    on the first run's command line, was the user's and stays 10."""
    run = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--data", str(shakespeare_dir), "--out", str(run), "--no-progress"]
    argv += [*UNFITTED, "model_config.hidden_dim=32", "model_config.num_layers=1", "model_config.mlp_dim=96"]
    assert cli.main([*argv, "training_config.max_steps=50", "training_config.eval_every=10"]) == 0
    assert _saved_at(run) == [10, 20, 30, 40]
    capsys.readouterr()

    assert cli.main([*argv, "--resume", "training_config.max_steps=100"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "changed on resume: training_config.save_every 10 -> 20" in out
    assert (
        "max_steps 50 -> 100: save_every 10 -> 20 fitted again, as a new run of 100 steps fits it "
        "(set training_config.save_every to choose)"
    ) in out
    assert not any("eval_every" in line for line in out)
    assert _saved_at(run) == [10, 20, 30, 40, 60, 80]
    assert _evaluated_at(run)[-6:] == [50, 60, 70, 80, 90, 100]
    record = (run / "config.yaml").read_text().splitlines()[1]
    assert json.loads(record[record.index("{") :])["training_config.save_every"] == [500, 20]


def _prepared_stories(tmp_path, stories: list[str], *flags: str) -> Path:
    """`stories` as JSON Lines of {"text": ...} records, prepared (with the char tokenizer unless
    `flags` give another) into tmp_path/data."""
    (tmp_path / "s.jsonl").write_text("".join(json.dumps({"text": s}) + "\n" for s in stories))
    data = tmp_path / "data"
    prepare = ["data", "prepare", "jsonl", str(tmp_path / "s.jsonl"), "--text-field", "text", *flags]
    assert cli.main([*prepare, "--out", str(data), "--no-progress", "--workers", "1"]) == 0
    return data


def _train_tiny(capsys, data: Path, run: Path, *overrides: str) -> list[str]:
    """Two steps of the tiny preset on `data` into `run`, sampling 8 tokens: the lines it printed."""
    capsys.readouterr()
    argv = ["train", "--preset", "tiny", "--data", str(data), "--out", str(run), "--no-progress", *SHORT]
    steps = ["training_config.max_steps=2", "training_config.sample_tokens=8"]
    assert cli.main([*argv, *steps, *overrides]) == 0
    return capsys.readouterr().out.splitlines()


def test_a_preset_prompt_the_tokenizer_cannot_encode_starts_a_document_and_next_works(tmp_path, capsys):
    """Stories in JSON Lines hold no 'R', ':' or line break, so a char tokenizer of them cannot
    encode tiny's sample prompt "ROMEO:". The samples dropped it without a word, and the run ended
    with `next: trickster generate RUN --prompt ROMEO:`, which was refused ("character 'R' is not in
    this model's character vocabulary"); so was `trickster generate RUN` with no prompt (its
    default, a line break). Now the run says in one line that its samples start a new document, its
    next line works as printed, and so does generate without --prompt."""
    stories = [f"once upon a time a cat named tom {i} found a ball and played all day." for i in range(60)]
    data, run = _prepared_stories(tmp_path, stories), tmp_path / "run"
    out = _train_tiny(capsys, data, run)
    note = "sample_prompt 'ROMEO:' holds characters the char vocabulary lacks ('R', 'O', 'M', 'E', ':')"
    assert sum(line.startswith(note) for line in out) == 1, out
    assert out[-1] == f"next: trickster generate {run}", out
    assert load_config(run / "config.yaml").training.sample_prompt == ""

    for prompt in ([], ["--prompt", "once"]):
        assert cli.main(["generate", str(run), "--max-new-tokens", "8", "--seed", "1", *prompt]) == 0
        printed = capsys.readouterr().out
        assert printed.startswith("".join(prompt[1:])) and len(printed) > len("".join(prompt[1:])), printed

    # given by the user: kept (its samples start a new document), and next: was
    # `trickster generate RUN --prompt ROMEO:`, which generate refused
    given = tmp_path / "given"
    out = _train_tiny(capsys, data, given, "training_config.sample_prompt=ROMEO:")
    assert load_config(given / "config.yaml").training.sample_prompt == "ROMEO:"
    assert out[-1] == f"next: trickster generate {given}", out


def test_a_preset_prompt_the_training_text_never_holds_gives_way_to_a_new_document(tmp_path, capsys):
    """Stories prepared with the byte tokenizer encode "ROMEO:", but never hold it: a model of them
    answered tiny's prompt with '.' and the end of the text, so every sample at every evaluation
    (the log, the report page) read "ROMEO:." and showed nothing of what it learned. Now the samples
    start a new document, said in one line. A prompt the text holds is kept (test_train: ROMEO: in
    Shakespeare's)."""
    stories = [f"Once upon a time a cat named Tom {i} found a ball.\nThe end." for i in range(60)]
    data, run = _prepared_stories(tmp_path, stories, "--tokenizer", "byte"), tmp_path / "run"
    out = _train_tiny(capsys, data, run)
    note = "sample_prompt 'ROMEO:' occurs nowhere in the training text: samples start a new document instead"
    assert sum(line.startswith(note) for line in out) == 1, out
    assert out[-1] == f"next: trickster generate {run}", out
    assert not any("ROMEO" in e["sample"] for e in events(run, "eval"))

    kept = tmp_path / "kept"  # given by the user: theirs, held or not
    out = _train_tiny(capsys, data, kept, "training_config.sample_prompt=ROMEO:")
    assert not any(line.startswith("sample_prompt") for line in out), out
    assert all(e["sample"].startswith("ROMEO:") for e in events(kept, "eval"))


def test_samples_without_a_prompt_print_the_text_generate_prints(tmp_path, capsys):
    """One text without a line break: its char vocabulary has neither a line break nor an
    end-of-text token, so a new document starts from its first symbol (' '). generate printed that
    symbol before its continuation; the run's samples left it out ('hdnb...' for ' hdnb...'). Both
    start a new document by one rule now: the last sample is what generate prints from the final
    checkpoint with the run's seed and as many tokens."""
    words = "the cat sat on a mat and ran to see the dog by the old tree".split()
    (tmp_path / "one.txt").write_text(" ".join(words[(i * 7) % len(words)] for i in range(3000)))
    data, run = tmp_path / "data", tmp_path / "run"
    prepare = ["data", "prepare", "text", str(tmp_path / "one.txt"), "--out", str(data), "--no-progress"]
    assert cli.main(prepare) == 0
    _train_tiny(capsys, data, run)
    sample = events(run, "eval")[-1]["sample"]
    seed = str(load_config(run / "config.yaml").training.seed)
    argv = ["generate", str(run / "checkpoints" / "final"), "--seed", seed, "--max-new-tokens", "8"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed == sample + "\n" and sample.startswith(" "), (printed, sample)


def test_a_short_run_of_a_preset_fits_its_eval_and_save_intervals(shakespeare_dir, tmp_path, capsys):
    """tiny's eval_every 250 and save_every 500 in a 50-step fine-tune-sized run: it was evaluated
    at its start and end only, with no checkpoint before its end. Left to the preset, both become
    10 steps, said in one line and recorded (an interval the user gives is kept: Config.gave, as
    for warmup)."""
    run = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--data", str(shakespeare_dir), "--out", str(run), "--no-progress"]
    argv += [*[o for o in SHORT if "eval_every" not in o], "training_config.max_steps=50"]

    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    note = "eval_every 250, save_every 500 past 50 steps: every 10 steps instead, a fifth of them"
    assert sum(note in line for line in out.splitlines()) == 1
    assert [e["step"] for e in events(run, "eval")] == [0, 10, 20, 30, 40, 50]
    numbered = sorted(p.name for p in (run / "checkpoints").glob("step_*"))
    assert numbered == ["step_000010", "step_000020", "step_000030", "step_000040"]
    saved = load_config(run / "config.yaml").training
    assert (saved.eval_every, saved.save_every) == (10, 10)


# A run started from the config.yaml of a run that fitted its settings to itself (config_fitted):
# the 12 that tiny's eval_every and save_every became in a 60-step run fitted 300 steps as well, so
# a 300-step fine-tune from that file (docs/finetune-export.md) was evaluated and saved every 12
# steps; a 20-step try's warmup of 2 held for 10,000.
UNFITTED = [o for o in SHORT if "eval_every" not in o]  # the preset's 250 and 500 left to fit


def _evaluated_at(run: Path) -> list[int]:
    """The steps of the run's evaluations, counted in its metrics.jsonl line by line."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [record["step"] for record in map(json.loads, lines) if record["event"] == "eval"]


def _saved_at(run: Path) -> list[int]:
    """The steps of the run's numbered checkpoints, as their folders on disk name them."""
    return sorted(int(p.name.removeprefix("step_")) for p in (run / "checkpoints").glob("step_*"))


def _peak_lr_at(run: Path) -> int:
    """The step whose logged learning rate is the highest (log_every 1): where the warmup ends."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    rates = {r["step"]: r["lr"] for r in map(json.loads, lines) if r["event"] == "train"}
    return max(rates, key=lambda step: (rates[step], -step))


@pytest.fixture(scope="module")
def fitted_run(shakespeare_dir, tmp_path_factory) -> Path:
    """50 steps of the tiny preset, its warmup (100) and intervals (250, 500) left to it: fitted to
    5 and 10 steps, as its config.yaml records (and its ROMEO:, which the excerpt never holds, to "")."""
    run = tmp_path_factory.mktemp("fitted") / "short"
    argv = ["train", "--preset", "tiny", "--data", str(shakespeare_dir), "--out", str(run), "--no-progress"]
    assert cli.main([*argv, *UNFITTED, "training_config.max_steps=50"]) == 0
    assert _evaluated_at(run) == [0, 10, 20, 30, 40, 50] and _peak_lr_at(run) == 5
    saved = yaml.safe_load((run / "config.yaml").read_text())["training_config"]
    assert (saved["eval_every"], saved["save_every"], saved["warmup_steps"]) == (10, 10, 5)
    return run


def _from_config(fitted_run: Path, out: Path, *overrides: str) -> None:
    """`trickster train --config` the fitted run's config.yaml into `out`, cut down as SHORT is."""
    argv = ["train", "--config", str(fitted_run / "config.yaml"), "--out", str(out), "--no-progress"]
    assert cli.main([*argv, *UNFITTED, *overrides]) == 0


@pytest.mark.slow
def test_a_run_from_a_fitted_runs_config_yaml_fits_its_settings_afresh(fitted_run, tmp_path, capsys):
    """300 steps from the 50-step run's config.yaml were evaluated and saved every 10 steps (31
    evaluations, 29 checkpoints) and warmed up for 5. Now they take the preset's values again and
    fit them as a run of the preset does: an evaluation at 250 (it fits), a checkpoint every fifth
    of the run (500 does not), a warmup of 100 steps. The new run records its own fitting. The
    warmup and eval_every taken back and not fitted again are said in a line too: the file holds
    5 and 10, and nothing else said why the run warmed up for 100 steps and was evaluated at 250."""
    run = tmp_path / "longer"
    _from_config(fitted_run, run, "training_config.max_steps=300")
    out = capsys.readouterr().out
    assert "save_every 500 past 300 steps: every 60 steps instead, a fifth of them" in out
    restored = [line for line in out.splitlines() if "fitted to the run that saved" in line]
    assert restored == [
        "warmup_steps 5, eval_every 10 were fitted to the run that saved the config file: 100, 250 "
        "instead, their values before (set training_config.warmup_steps or eval_every to choose)"
    ]
    assert _evaluated_at(run) == [0, 250, 300]
    assert _saved_at(run) == [60, 120, 180, 240]
    assert _peak_lr_at(run) == 100
    text = (run / "config.yaml").read_text()
    assert yaml.safe_load(text)["training_config"]["save_every"] == 60
    record = text.splitlines()[1]  # the excerpt never holds ROMEO: (test_train's holds it)
    assert json.loads(record[record.index("{") :]) == {
        "training_config.sample_prompt": ["ROMEO:", ""],
        "training_config.save_every": [500, 60],
    }


@pytest.mark.slow
def test_a_setting_the_user_gives_a_run_from_a_config_yaml_is_kept(fitted_run, tmp_path):
    """An interval given on the command line is the user's, whatever the config.yaml's record says
    of it: kept, and recorded as nobody's fitting. The other, left to the file, is fitted afresh: the
    preset's 500 to a fifth of 100 steps (it was the 10 of the fitted run)."""
    run = tmp_path / "given"
    _from_config(fitted_run, run, "training_config.max_steps=100", "training_config.eval_every=10")
    assert _evaluated_at(run) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert _saved_at(run) == [20, 40, 60, 80]
    assert "eval_every" not in (run / "config.yaml").read_text().splitlines()[1]


@pytest.mark.slow
def test_a_resume_of_a_run_from_a_config_yaml_fits_its_intervals_to_the_new_length(
    fitted_run, tmp_path, capsys
):
    """A run from the fitted run's config.yaml fits its intervals to its 100 steps (20). Resumed by
    the same command with 140, it fits them as a new run of 140 steps from that file does (28, a
    fifth of 140, from the preset's 250 and 500 its config.yaml records; not the file's 10), and
    its config.yaml records their values before as it did."""
    run = tmp_path / "resumed"
    _from_config(fitted_run, run, "training_config.max_steps=100")
    record = _fitted_record(run)
    assert _evaluated_at(run) == [0, 20, 40, 60, 80, 100]
    _from_config(fitted_run, run, "training_config.max_steps=140", "--resume")
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "changed on resume" in line] == [
        "changed on resume: training_config.max_steps 100 -> 140",
        "changed on resume: training_config.eval_every 20 -> 28",
        "changed on resume: training_config.save_every 20 -> 28",
    ]
    assert _evaluated_at(run) == [0, 20, 40, 60, 80, 100, 112, 140]
    assert _saved_at(run) == [20, 40, 60, 80, 112]  # 100 was the end's: final
    record["training_config.eval_every"] = [250, 28]
    record["training_config.save_every"] = [500, 28]
    assert _fitted_record(run) == record


def _fitted_record(run: Path) -> dict:
    """The record of what the run fitted, [before, fitted], under its config.yaml's first line."""
    line = (run / "config.yaml").read_text().splitlines()[1]
    return json.loads(line[line.index("{") :])


@pytest.mark.slow
def test_a_prompt_fitted_to_a_text_gives_way_to_the_presets_in_a_run_from_its_config(tmp_path, capsys):
    """A run of stories whose char vocabulary lacks 'R' and ':' fits tiny's ROMEO: to a new document
    (""). A run from its config.yaml on a play that holds ROMEO: took that "" as its prompt: its
    samples started a new document. Now they continue the preset's ROMEO: again."""
    stories = [f"once upon a time a cat named tom {i} found a ball and played all day." for i in range(60)]
    _train_tiny(capsys, _prepared_stories(tmp_path, stories), tmp_path / "stories")
    lines = ["ROMEO:", "But soft, what light through yonder window breaks?", "JULIET:", "Ay me."]
    (tmp_path / "play.txt").write_text("\n".join(lines * 300) + "\n")
    play, run = tmp_path / "play", tmp_path / "from-stories"
    prepare = ["data", "prepare", "text", str(tmp_path / "play.txt"), "--out", str(play), "--no-progress"]
    assert cli.main(prepare) == 0
    argv = ["train", "--config", str(tmp_path / "stories" / "config.yaml"), "--data", str(play)]
    argv += ["--out", str(run), "--no-progress", *SHORT, "model_config.vocab_size=auto"]
    assert cli.main([*argv, "training_config.max_steps=2", "training_config.sample_tokens=8"]) == 0
    samples = [e["sample"] for e in events(run, "eval")]
    assert len(samples) == 2 and all(sample.startswith("ROMEO:") for sample in samples), samples


@pytest.mark.slow
def test_a_record_the_file_no_longer_matches_is_set_aside(fitted_run, tmp_path):
    """The record is a comment: YAML, and so a reader of an earlier version, reads the file as if it
    were not there. A setting edited by hand since its run fitted it is the file's (its entry is set
    aside), and a damaged record is no record: the file loads, every setting as written."""
    text = (fitted_run / "config.yaml").read_text()
    mark, record, *rest = text.splitlines(keepends=True)
    assert record.startswith("# fitted to this run, [before, fitted]"), record
    assert yaml.safe_load(text) == yaml.safe_load(mark + "".join(rest))
    before = {"training_config.sample_prompt": "ROMEO:", "training_config.warmup_steps": 100}
    before["training_config.eval_every"] = 250
    assert load_config(fitted_run / "config.yaml").fitted_from == {
        **before,
        "training_config.save_every": 500,
    }

    edited = tmp_path / "edited" / "config.yaml"
    edited.parent.mkdir()
    edited.write_text(text.replace("save_every: 10\n", "save_every: 30\n"))
    assert load_config(edited).fitted_from == before
    assert load_config(edited).training.save_every == 30
    edited.write_text(mark + record.replace("[100, 5]", "[100, 5") + "".join(rest))
    assert load_config(edited).fitted_from == {}
