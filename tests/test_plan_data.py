"""`trickster plan --data DIR` (plan_data.py): the vocabulary and the tokens of a prepared folder,
counted as a run on it gets them; a folder not prepared refused as training refuses it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from trickster.cli import main
from trickster.config import config_from_dict, save_config
from trickster.data import sources
from trickster.data.prepare import prepare
from trickster.model.transformer import Transformer
from trickster.train.loop import train

from .conftest import EXCERPT, QUIET, micro_config


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory) -> Path:
    """The excerpt with a bpe tokenizer of 1,100 ids: a vocabulary the plan cannot guess, which
    training pads (1,100 is no multiple of 64)."""
    out = tmp_path_factory.mktemp("bpe") / "excerpt-bpe"
    prepare(sources.text_files([str(EXCERPT)]), "bpe", out, vocab_size=1100, **QUIET)
    return out


def train_tokens(folder: Path) -> int:
    """The tokens of the training split, counted from its shard files' sizes."""
    itemsize = np.dtype(json.loads((folder / "meta.json").read_text())["dtype"]).itemsize
    return sum(f.stat().st_size for f in (folder / "train").glob("*.bin")) // itemsize


def planned(capsys, *argv: str) -> str:
    capsys.readouterr()
    assert main(["plan", *argv, "--device", "cpu", "--no-bench"]) == 0
    return capsys.readouterr().out


def test_plan_data_counts_the_vocabulary_and_the_tokens_a_run_on_it_gets(bpe_dir, tmp_path, capsys):
    # the config names other data (the char excerpt): --data wins, as `train --data` does
    config = tmp_path / "micro.yaml"
    save_config(micro_config(EXCERPT.parent, tmp_path / "unused"), config)
    out = planned(capsys, "--config", str(config), "--data", str(bpe_dir))
    # a real run on the folder: the vocabulary training gave its model
    steps = {"max_steps": 1, "warmup_steps": 0, "eval_batches": 1, "sample_tokens": 0}
    run = train(micro_config(bpe_dir, tmp_path / "run", training_config=steps), **QUIET).run_dir
    trained = config_from_dict(yaml.safe_load((Path(run) / "config.yaml").read_text()))
    params = sum(p.numel() for p in Transformer(trained.model).parameters())
    assert re.search(rf"^model: .*, vocab {trained.model.vocab_size}$", out, re.M), out
    assert trained.model.vocab_size != 1100  # padded: the plan did not take the tokenizer's count as it is
    assert f"parameters: {params:,}\n" in out
    assert "counted here as 256" not in out
    tokens = train_tokens(bpe_dir)
    assert f"data: {bpe_dir} (--data): {tokens:,} training tokens; bpe tokenizer of 1,100 ids" in out
    run_tokens = 40 * 8 * 64  # micro: max_steps x batch_size x seq_len
    epochs = f"{run_tokens / tokens:.2f} epochs"
    assert re.search(rf"this config \(40 steps x 512\) +20,480  \(.*, {epochs}\)", out), out
    assert re.search(rf"one epoch of the data \(--data\) +{tokens:,}  \(.*1 epoch\)", out), out


def test_the_config_s_prepared_folder_gives_the_vocabulary_without_data(trained_run, tmp_path, capsys):
    """data_config.path naming a prepared folder is read as --data is: the model's vocabulary is
    the one the run trained on that folder got, not the 256 assumed without data."""
    saved = config_from_dict(yaml.safe_load((trained_run / "config.yaml").read_text()))
    cfg = micro_config(Path(saved.data.path), tmp_path / "run")  # vocab_size: auto
    config = tmp_path / "micro.yaml"
    save_config(cfg, config)
    out = planned(capsys, "--config", str(config))
    assert f"data: {saved.data.path} (data_config.path): " in out
    assert re.search(rf"^model: .*, vocab {saved.model.vocab_size}$", out, re.M), out


def test_a_preset_whose_folder_is_not_prepared_here_is_planned_as_before(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # no data/shakespeare-char here
    out = planned(capsys, "--preset", "tiny")
    assert "counted here as 256" in out and "data:" not in out and "epoch" not in out


@pytest.mark.parametrize("given", ["missing", "corpus"])
def test_plan_data_not_prepared_is_refused_in_training_s_line(given, tmp_path, capsys):
    folder = tmp_path / "missing" if given == "missing" else EXCERPT
    config = tmp_path / "micro.yaml"
    save_config(micro_config(EXCERPT.parent, tmp_path / "run"), config)
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--data", str(folder)]) == 2
    refused = capsys.readouterr().err
    assert main(["plan", "--config", str(config), "--no-bench", "--data", str(folder)]) == 2
    assert capsys.readouterr().err == refused and refused.count("\n") == 1
    assert not (tmp_path / "run").exists()
