"""Settings a run fits to itself when the user left them to a preset (train/fitted.py): a warmup
longer than a short run. The sample prompt of a fine-tune on prompt/response records is in
test_finetune.py."""

from __future__ import annotations

import json
from pathlib import Path

from trickster import cli
from trickster.config import load_config

from .conftest import events

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
