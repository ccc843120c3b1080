"""`trickster compare`: a fine-tune beside the model it started from, any run beside another
checkpoint of it (--base) or beside random weights."""

from __future__ import annotations

import re
import shutil

import pytest

from trickster import cli, run_checkpoints
from trickster.config import config_from_dict
from trickster.train import checkpoint_load
from trickster.train.loop import train

from .conftest import QUIET, events, finetune_config

LORA = {"rank": 2, "alpha": 4, "targets": ["wq", "w2"]}


def _first_val_loss(run) -> float:
    """The fine-tune's step-0 evaluation: the base model on the run's own validation windows."""
    first = events(run, "eval")[0]
    assert first["step"] == 0
    return first["val_loss"]


def _headers(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("--- ")]


@pytest.mark.parametrize("lora", [None, LORA], ids=["full", "lora"])
def test_a_fine_tune_is_compared_with_the_model_it_started_from(
    trained_run, chat_data, tmp_path, capsys, monkeypatch, lora
):
    """compare set a fine-tune beside random weights, which says nothing of what the fine-tune
    changed; the base's loss is the one the fine-tune measured at its step 0 (counted by the run)."""
    cfg = finetune_config(trained_run, chat_data[0], tmp_path / "ft", max_steps=4, eval_every=2, lora=lora)
    result = train(cfg, **QUIET)
    monkeypatch.chdir(tmp_path)  # the base is shown as recorded, an absolute path, not below here
    assert cli.main(["compare", str(result.run_dir), "--max-new-tokens", "3", "--seed", "0"]) == 0
    base, tuned = _headers(capsys.readouterr().out)
    best = (trained_run / "checkpoints" / "best").resolve()
    step = run_checkpoints.read_info(best)["step"]
    loss = _first_val_loss(result.run_dir)
    assert base == f"--- base ({best}, step {step}; fine-tuned from it): val loss {loss:.4f} ---"
    assert tuned.startswith("--- fine-tuned (") and "untrained" not in base


def test_a_fine_tune_with_a_longer_context_than_its_base_scores_the_base_on_its_windows(
    trained_run, chat_data, tmp_path, capsys
):
    """max_seq_len may differ from the base's: its windows are longer than the base's own context."""
    cfg = finetune_config(trained_run, chat_data[0], tmp_path / "ft", max_steps=2, eval_every=2)
    raw = cfg.to_dict()
    raw["model_config"]["max_seq_len"] = raw["training_config"]["seq_len"] = 96  # the base's is 64
    result = train(config_from_dict(raw), **QUIET)
    assert cli.main(["compare", str(result.run_dir), "--max-new-tokens", "3", "--seed", "0"]) == 0
    base = _headers(capsys.readouterr().out)[0]
    assert base.endswith(f"val loss {_first_val_loss(result.run_dir):.4f} ---"), base


def test_a_fine_tune_whose_base_is_gone_is_compared_with_random_weights_and_says_so(
    trained_run, chat_data, tmp_path, capsys
):
    source = tmp_path / "base"
    shutil.copytree(trained_run, source)
    cfg = finetune_config(source, chat_data[0], tmp_path / "ft", max_steps=2, eval_every=2)
    result = train(cfg, **QUIET)
    shutil.rmtree(source)
    assert cli.main(["compare", str(result.run_dir), "--max-new-tokens", "3", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    note = out.splitlines()[0]
    best = source.resolve() / "checkpoints" / "best"
    assert note == (
        f"note: {best}, the base this run was fine-tuned from, is gone (moved or deleted): comparing "
        "with random weights; --base DIR names the base where it is now"
    )
    assert _headers(out)[0].startswith("--- untrained (random weights): val loss ")
    # named where it is now, it is the base again
    assert (
        cli.main(["compare", str(result.run_dir), "--base", str(trained_run), "--max-new-tokens", "3"]) == 0
    )
    base = _headers(capsys.readouterr().out)[0]
    assert base.startswith("--- base (") and base.endswith(
        f"val loss {_first_val_loss(result.run_dir):.4f} ---"
    )


def test_untrained_and_base_choose_what_a_run_is_compared_with(
    trained_run, chat_data, tmp_path, capsys, monkeypatch
):
    cfg = finetune_config(trained_run, chat_data[0], tmp_path / "ft", max_steps=2, eval_every=2)
    result = train(cfg, **QUIET)
    assert cli.main(["compare", str(result.run_dir), "--untrained", "--max-new-tokens", "3"]) == 0
    untrained = _headers(capsys.readouterr().out)[0]
    assert untrained.startswith("--- untrained (random weights): val loss ")
    # a run trained from scratch beside an earlier checkpoint of its own
    monkeypatch.chdir(tmp_path)
    early = trained_run / "checkpoints" / "step_000006"
    assert cli.main(["compare", str(trained_run), "--base", str(early), "--max-new-tokens", "3"]) == 0
    earlier, later = _headers(capsys.readouterr().out)
    six = next(e for e in events(trained_run, "eval") if e["step"] == 6)["val_loss"]
    assert earlier == f"--- base ({early}, step 6): val loss {six:.4f} ---", earlier
    assert later.startswith("--- trained (best, step 12)"), later


def test_a_fine_tune_is_compared_on_the_prompt_its_samples_continued(
    trained_run, chat_data, tmp_path, capsys
):
    """Without --prompt both models continued a line break, which shows nothing of what a fine-tune
    on records learned; they continue the prompt its samples did (on records, one of theirs unless
    set: train/fitted.py; set here, to a validation record's)."""
    prompt = chat_data[1][-1]["prompt"]
    cfg = finetune_config(
        trained_run, chat_data[0], tmp_path / "ft", max_steps=2, eval_every=2, sample_prompt=prompt
    )
    result = train(cfg, **QUIET)
    assert (
        checkpoint_load.read_config(result.run_dir / "checkpoints" / "final").training.sample_prompt == prompt
    )
    assert cli.main(["compare", str(result.run_dir), "--max-new-tokens", "3", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    samples = out.split("--- ")[1:]
    assert len(samples) == 2 and all(sample.split("---\n", 1)[1].startswith(prompt) for sample in samples), (
        out
    )
    assert cli.main(["compare", str(trained_run), "--max-new-tokens", "3", "--seed", "0"]) == 0
    samples = capsys.readouterr().out.split("--- ")[1:]  # a run from scratch: a line break, as before
    assert all(sample.split("---\n", 1)[1].startswith("\n") for sample in samples)


def test_a_slow_validation_loss_says_how_far_it_got_on_stderr(trained_run, capsys, monkeypatch):
    """compare scores each model on the run's validation windows before it prints anything: a
    large model on a CPU took minutes in silence. A fast one says nothing; a slow one, once."""
    from trickster.train.console import SlowPass

    command = ["compare", str(trained_run), "--max-new-tokens", "3", "--seed", "0"]
    assert cli.main(command) == 0
    quick = capsys.readouterr()
    assert quick.err == ""
    monkeypatch.setattr(SlowPass, "AFTER_SECONDS", 0.0)
    assert cli.main(command) == 0
    slow = capsys.readouterr()
    assert slow.out == quick.out  # stdout holds the comparison alone
    micro_batches = 4  # the trained run's eval_batches (micro_config), one batch_size-wide draw each
    shown = rf"val loss of the untrained model: 1 of {micro_batches} batches in \d+ s, about \d+ s to go\n"
    assert re.fullmatch(shown, slow.err), slow.err


def test_an_imported_run_says_where_it_came_from_and_how_to_get_its_val_loss(
    trained_run, shakespeare_dir, tmp_path, capsys
):
    """A run of `import hf` (one checkpoint, `final`, at step 0, no data) was called "trained
    (final, step 0)" with "val loss n/a (no data)" and no word of how to get one."""
    hf, run = tmp_path / "hf", tmp_path / "imported"
    assert cli.main(["export", str(trained_run), "--out", str(hf)]) == 0
    assert cli.main(["import", "hf", str(hf), "--out", str(run)]) == 0
    capsys.readouterr()
    assert cli.main(["compare", str(run), "--max-new-tokens", "3", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert _headers(out) == [
        "--- untrained (random weights): val loss n/a (no data) ---",
        f"--- imported (final, from {hf.resolve()}): val loss n/a (no data) ---",
    ]
    final = run / "checkpoints" / "final"
    assert out.splitlines()[0] == (
        "no validation losses: an imported model has no data of its own; pass --data DIR (a folder "
        f"prepared with its tokenizer: trickster data prepare ... --tokenizer-from {final}), or score "
        f"a text file: trickster eval {run} --text FILE"
    )
    # both ways it names give a loss: the data the exported run trained on, and a text file, which
    # scores the same as the run the model came from
    assert cli.main(["compare", str(run), "--data", str(shakespeare_dir), "--max-new-tokens", "3"]) == 0
    assert all(re.search(r": val loss \d+\.\d{4} ---$", h) for h in _headers(capsys.readouterr().out))
    text = tmp_path / "lines.txt"
    text.write_text("ROMEO:\nWhat light through yonder window breaks?\n" * 4, encoding="utf-8")
    losses = []
    for scored in (run, trained_run / "checkpoints" / "best"):
        assert cli.main(["eval", str(scored), "--text", str(text)]) == 0
        losses.append(re.search(r"loss (\d+\.\d{4})", capsys.readouterr().out).group(1))
    assert losses[0] == losses[1], losses
