"""The commands a person types, run in-process on small data."""

import json
import re

import pytest
import torch

from trickster.cli import main

from .conftest import EXCERPT


@pytest.mark.slow
def test_quickstart_prepares_trains_and_compares(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["quickstart", "--path", str(EXCERPT), "--steps", "30", "--out", "runs/qs"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1/3 preparing data" in out and "2/3 training" in out and "3/3" in out
    untrained, trained = re.findall(r"--- (untrained|trained).*?val loss (\d+\.\d+) ---", out)
    assert float(trained[1]) < float(untrained[1])
    assert (tmp_path / "runs/qs/checkpoints/final/COMPLETE").is_file()

    assert main(args[:-3] + ["2", "--out", "runs/qs"]) == 0  # a second run gets a new folder
    assert (tmp_path / "runs/qs-2/checkpoints/final/COMPLETE").is_file()


def test_quickstart_falls_back_to_the_stdlib_when_offline(tmp_path, monkeypatch, capsys):
    from trickster import commands
    from trickster.errors import UserError

    def offline(path):
        raise UserError("could not download it (offline)")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(commands.sources, "shakespeare", offline)
    monkeypatch.setattr(commands, "train_command", lambda *a, **k: 1)  # stop after the data step
    assert main(["quickstart", "--steps", "5"]) == 1
    out = capsys.readouterr().out
    assert "falling back to the Python standard library" in out
    assert (tmp_path / "data/python-stdlib-char/meta.json").is_file()


def test_generate_streams_a_continuation_of_the_prompt(tmp_path, shakespeare_dir, capsys):
    run = tmp_path / "run"
    train = "train --preset tiny --no-progress model_config.num_layers=1 training_config.max_steps=4"
    train += " training_config.warmup_steps=1 training_config.eval_every=2"
    assert main([*train.split(), "--data", str(shakespeare_dir), "--out", str(run)]) == 0
    capsys.readouterr()

    def generate(*flags: str) -> str:
        assert main(["generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "25", *flags]) == 0
        return capsys.readouterr().out

    first = generate("--seed", "1")
    assert first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 25 + 1  # one char per token
    assert generate("--seed", "1", "--no-cache") == first
    untrained = generate("--seed", "1", "--untrained")
    assert untrained != first and generate("--seed", "1", "--untrained") == untrained
    main(["info", "--checkpoint", str(run)])
    shown = capsys.readouterr().out
    assert "tied to the embedding" in shown
    info = json.loads((run / "checkpoints" / "best" / "info.json").read_text())
    assert f"tokenizer sha256 {info['tokenizer_fingerprint']}" in shown
    assert f"data sha256 {info['data_fingerprint']}" in shown
    assert f"torch {torch.__version__}" in shown and f"git: {info['manifest']['git_sha']}" in shown
    assert "  training_config:" in shown and "    max_steps: 4" in shown
