"""Shared fixtures: a Shakespeare excerpt shipped with the tests, prepared once, and a micro config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trickster.config import Config, config_from_dict
from trickster.data import sources
from trickster.data.prepare import prepare

EXCERPT = Path(__file__).parent / "data" / "shakespeare_excerpt.txt"

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def shakespeare_dir(tmp_path_factory) -> Path:
    """The excerpt prepared with the char tokenizer (read-only for tests: copy before changing)."""
    out = tmp_path_factory.mktemp("data") / "shakespeare-char"
    prepare(sources.shakespeare(EXCERPT), "char", out)
    return out


def micro_config(data_dir: Path, run_dir: Path, **sections) -> Config:
    """A model small enough that 40 CPU steps take a couple of seconds."""
    raw = {
        "model_config": {
            "vocab_size": "auto",
            "hidden_dim": 64,
            "num_layers": 2,
            "num_heads": 4,
            "mlp_dim": 192,
            "max_seq_len": 64,
        },
        "data_config": {"path": str(data_dir)},
        "training_config": {
            "batch_size": 8,
            "max_steps": 40,
            "learning_rate": 3e-3,
            "min_lr": 3e-4,
            "warmup_steps": 5,
            "log_every": 2,
            "eval_every": 20,
            "eval_batches": 4,
            "save_every": 20,
            "sample_tokens": 40,
            "sample_prompt": "ROMEO:",
            "seed": 7,
        },
        "device_config": {"device": "cpu"},
        # loss.png costs ~0.3 s per evaluation on two busy cores; test_tracking.py turns it on
        "logging_config": {"output_dir": str(run_dir), "progress_bar": False, "loss_plot": False},
    }
    for section, values in sections.items():
        raw[section].update(values)
    return config_from_dict(raw, "test config")


@pytest.fixture
def micro(shakespeare_dir, tmp_path):
    """micro(**sections) -> a Config writing its run into a fresh temporary folder."""

    def make(**sections) -> Config:
        return micro_config(shakespeare_dir, tmp_path / "run", **sections)

    return make


@pytest.fixture(scope="session")
def served_run(shakespeare_dir, tmp_path_factory) -> Path:
    """A 4-step micro run with checkpoints step_000002, best and final (read-only)."""
    from trickster.train.loop import train

    run_dir = tmp_path_factory.mktemp("served") / "run"
    steps = {"max_steps": 4, "warmup_steps": 1, "eval_every": 2, "save_every": 2, "log_every": 1}
    train(micro_config(shakespeare_dir, run_dir, training_config=steps), echo=lambda *a, **k: None)
    return run_dir
