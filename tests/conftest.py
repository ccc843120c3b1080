"""Shared fixtures and helpers: a Shakespeare excerpt shipped with the tests, prepared once; a micro
config; one trained micro run for every test that only reads one; QUIET and events(); the ids of
a dead and a live process, for what writers killed mid-write leave behind; the threads of process
groups still running in this process."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from trickster.config import Config, config_from_dict
from trickster.data import sources
from trickster.data.prepare import prepare
from trickster.observe.events import iter_metrics, read_metrics
from trickster.train.loop import train

EXCERPT = Path(__file__).parent / "data" / "shakespeare_excerpt.txt"

# Under pytest-xdist (scripts/test.sh) each core runs its own worker: one thread each, and one for
# the processes the tests start (OpenMP threads that wait for a busy core spin and burn its time).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
else:
    torch.set_num_threads(2)

QUIET = {"echo": lambda *args, **kwargs: None}  # train(cfg, **QUIET) prints nothing


def events(source, kind: str) -> list[dict]:
    """The `kind` events ("start", "train", "eval", ...) of a train() result, a list of records,
    or a run folder's metrics.jsonl."""
    if isinstance(source, (str, Path)):
        records = read_metrics(Path(source) / "metrics.jsonl")
    else:
        records = getattr(source, "history", source)
    return [r for r in records if r["event"] == kind]


def collective_threads() -> list[str]:
    """The threads gloo and the store run in this process, by name (pt_gloo_runloop, gloo_tcp_loop,
    pt_tcpstore_uv): those still running when the interpreter exits can abort it."""
    names = []
    for task in Path("/proc/self/task").glob("*"):
        with contextlib.suppress(OSError):  # the thread ended meanwhile
            names.append((task / "comm").read_text().strip())
    return sorted(name for name in names if "gloo" in name or name.startswith("pt_"))


@pytest.fixture
def dead_pid() -> int:
    """The id of a process that has ended and been reaped: no process has it (until the system
    hands it out again, far later)."""
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid():
    """The id of another process that runs (sleeps) until the test ends."""
    child = subprocess.Popen(["sleep", "300"])
    yield child.pid
    child.kill()
    child.wait()


def count_reads(monkeypatch) -> list[int]:
    """The events each read of a metrics.jsonl returned, by whichever trickster module read it
    (each imports iter_metrics by name; read_metrics lists what events.iter_metrics gives)."""
    counts, real = [], iter_metrics

    def counting(path, problems=None):
        read = 0
        for record in real(path, problems):
            read += 1
            yield record
        counts.append(read)

    for module in list(sys.modules.values()):
        if module.__name__.startswith("trickster") and getattr(module, "iter_metrics", None) is real:
            monkeypatch.setattr(module, "iter_metrics", counting)
    return counts


def text_reads(monkeypatch) -> list[Path]:
    """From now on, each file Path.read_text reads (a run's info.json, config.yaml), in order: one
    read twice is there twice."""
    reads, read_text = [], Path.read_text

    def counted(path, *args, **kwargs):
        reads.append(path)
        return read_text(path, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", counted)
    return reads


@pytest.fixture(scope="session")
def shakespeare_dir(tmp_path_factory) -> Path:
    """The excerpt prepared with the char tokenizer (read-only for tests: copy before changing)."""
    out = tmp_path_factory.mktemp("data") / "shakespeare-char"
    prepare(sources.shakespeare(EXCERPT), "char", out)
    return out


def counted_flops_per_token(model: torch.nn.Module, batch: int, seq_len: int) -> float:
    """torch's own count (torch.utils.flop_counter) of the matrix multiplies of one forward and
    backward pass of `model` on random tokens, per token. Attention runs the math kernel, plain
    matmuls the counter sees (the CPU's fused kernel is invisible to it)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    x, y = torch.randint(0, model.output.weight.shape[0], (2, batch, seq_len))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, y)[1].backward()
    return counter.get_total_flops() / (batch * seq_len)


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
def trained_run(shakespeare_dir, tmp_path_factory) -> Path:
    """A 12-step micro run for every test that only reads one (copy it to change it): train lines
    every 2 steps, an evaluation and a sample at steps 0, 6 and 12, checkpoints step_000006, best
    and final."""
    run = tmp_path_factory.mktemp("trained") / "micro-run"
    training = {"max_steps": 12, "warmup_steps": 2, "log_every": 2, "eval_every": 6, "save_every": 6}
    train(micro_config(shakespeare_dir, run, training_config=training), **QUIET)
    return run


def write_records(path: Path, count: int = 60) -> list[dict]:
    """Prompt: a line of the excerpt; response: the line after it (only the excerpt's characters)."""
    lines = [line for line in EXCERPT.read_text().splitlines() if line.strip()]
    records = [{"prompt": lines[i] + "\n", "response": lines[i + 1] + "\n"} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return records


@pytest.fixture(scope="session")
def chat_data(trained_run, tmp_path_factory) -> tuple[Path, list[dict]]:
    """Prompt/response records prepared with the trained run's tokenizer (to fine-tune it)."""
    from trickster import cli

    folder = tmp_path_factory.mktemp("chat")
    records = write_records(folder / "chat.jsonl")
    out = folder / "data"
    argv = ["data", "prepare", "jsonl", str(folder / "chat.jsonl"), "--format", "prompt-response"]
    assert cli.main([*argv, "--tokenizer-from", str(trained_run), "--out", str(out)]) == 0
    return out, records


def finetune_config(base_run: Path, data_dir: Path, run_dir: Path, **training) -> Config:
    """The base run's own config (same model), pointed at new data, a new folder and init_from."""
    from trickster.train import checkpoint_load, checkpoint_path

    cfg = checkpoint_load.read_config(checkpoint_path.resolve(base_run))
    cfg.data.path = str(data_dir)
    cfg.logging.output_dir = str(run_dir)
    values = {"max_steps": 10, "warmup_steps": 1, "eval_every": 10, "save_every": 5, "log_every": 1}
    values.update({"seq_len": 48, "sample_tokens": 0, "init_from": str(base_run), **training})
    return config_from_dict(
        {**cfg.to_dict(), "training_config": {**cfg.to_dict()["training_config"], **values}}
    )


def stopped_at(step: int, monkeypatch) -> None:
    """Ctrl-C in the update that makes `step` of the next run in this process (the learning rate
    is set at its start, for the steps done before it): a real SIGINT, which the run answers by
    stopping after that update with a checkpoint, as a person stops a long run."""
    from trickster.train import optim

    schedule, sent = optim.lr_at, []

    def lr_at(done, training):
        if done == step - 1 and not sent:
            sent.append(done)
            signal.raise_signal(signal.SIGINT)
        return schedule(done, training)

    monkeypatch.setattr(optim, "lr_at", lr_at)
