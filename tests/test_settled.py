"""`trickster generate`, and a fine-tune's init_from, on a run that is still training: a new `best`
saved while the command reads the old one is read again, whole (train/settled.py), not refused as
damaged."""

from __future__ import annotations

import functools
import json
import shutil
import time
import types
from pathlib import Path

import pytest
import torch

from trickster import atomic, cli
from trickster.data.loader import load_data
from trickster.errors import UserError
from trickster.train import checkpoint_load, checkpoint_path, settled
from trickster.train.loop import train
from trickster.train.validate import evaluate, validation_batches

from .conftest import QUIET, events, finetune_config

GREEDY = ["--prompt", "ROMEO:", "--max-new-tokens", "8", "--temperature", "0"]


@pytest.mark.parametrize("read_seconds", [0.0, 3.0])
def test_a_best_replaced_while_generate_reads_it_is_read_again_whole(
    trained_run, tmp_path, monkeypatch, capsys, read_seconds
):
    """However long the read takes: a large model read from a slow disk (3 s of the clock settled
    reads, passed without sleeping) meets a save as readily as a small one. It was refused when
    the read outlasted a 2 s limit that started before it."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    best, newer = run / "checkpoints" / "best", run / "checkpoints" / "step_000006"
    sums = [json.loads((p / "info.json").read_text())["sha256"]["model.safetensors"] for p in (best, newer)]
    assert sums[0] != sums[1]  # else the two checkpoints could not be told apart
    newer_step = json.loads((newer / "info.json").read_text())["step"]
    assert cli.main(["generate", str(newer), *GREEDY]) == 0
    expected = capsys.readouterr().out
    real, saves = checkpoint_load.files_at, []
    clock = [time.monotonic()]
    monkeypatch.setattr(settled, "time", types.SimpleNamespace(monotonic=lambda: clock[0], sleep=time.sleep))

    def read_then_a_save(path):
        """config, tokenizer and info.json read; then the run saves a new best, as replace_dir does"""
        files = real(path)
        clock[0] += read_seconds
        if not saves:
            _save_as_best(newer, best, saves)
        return files

    monkeypatch.setattr(checkpoint_load, "files_at", read_then_a_save)
    code = cli.main(["generate", str(run), *GREEDY])
    out, err = capsys.readouterr()
    # no line that model.safetensors no longer matched its checksum: only the checkpoint read, the new best
    assert code == 0 and len(err.splitlines()) == 1, err
    assert err.startswith(f"checkpoint: {best} (step {newer_step}, "), err
    assert saves == [best]
    assert out == expected  # the new best's text: its weights with its own files


@pytest.mark.parametrize("moment", ["files_at", "with_weights"])
def test_a_best_replaced_while_a_fine_tune_reads_its_init_from_is_read_again_whole(
    trained_run, chat_data, tmp_path, monkeypatch, moment
):
    """A fine-tune whose init_from is a run still training reads that run's `best` files when it
    starts (to check the data's tokenizer) and its weights later, once the model is built. A new
    `best` saved right after the files were read, or right before the weights are, was refused:
    'model.safetensors no longer matches its checksum'. It starts from the new best, whole."""
    run = tmp_path / "base"
    shutil.copytree(trained_run, run)
    best, newer = run / "checkpoints" / "best", run / "checkpoints" / "step_000006"
    newer_info = json.loads((newer / "info.json").read_text())
    assert json.loads((best / "info.json").read_text())["step"] != newer_info["step"]
    real, saves = getattr(checkpoint_load, moment), []

    def a_save_then(path_or_files, *args, **kwargs):
        """the base run saves a new best (replace_dir): after the files' read, or before the weights'"""
        if moment == "with_weights" and not saves:
            _save_as_best(newer, best, saves)
        loaded = real(path_or_files, *args, **kwargs)
        if moment == "files_at" and not saves:
            _save_as_best(newer, best, saves)
        return loaded

    monkeypatch.setattr(checkpoint_load, moment, a_save_then)
    cfg = finetune_config(run, chat_data[0], tmp_path / "ft", max_steps=2, eval_every=2, save_every=2)
    result = train(cfg, **QUIET)  # it raised a UserError: model.safetensors no longer matched its checksum
    assert saves == [best]
    started = events(result, "start")[0]["init_from"]
    assert (started["step"], started["saved"]) == (newer_info["step"], newer_info["saved"])
    monkeypatch.undo()
    data = load_data(chat_data[0])
    newer_loss = evaluate(
        checkpoint_load.load_checkpoint(newer).model,
        validation_batches(data, cfg),
        torch.device("cpu"),
        "float32",
    )
    first_eval = events(result, "eval")[0]
    assert first_eval["step"] == 0 and first_eval["val_loss"] == pytest.approx(newer_loss, rel=1e-6)


def _save_as_best(checkpoint, best, saves) -> None:
    staging = atomic.staging_dir(best)
    for file in checkpoint.iterdir():
        shutil.copy(file, staging / file.name)
    atomic.replace_dir(staging, best)
    saves.append(best)


def test_a_checkpoint_replaced_while_serve_loads_it_slowly_is_loaded_again_whole(
    trained_run, tmp_path, monkeypatch
):
    """`trickster serve` loads `final` as the run saves a new one (replace_dir) while the load is
    under way, and the load takes 3 s (of the server's clock, passed without sleeping: a large model
    from a slow disk). Its files were the old final's, its weights the new one's: the request got a
    500, 'model.safetensors no longer matches the checksum saved with it', as the server gave up
    reading again 2 s after the load began. It is answered from the new final, whole."""
    httpx = pytest.importorskip("httpx")
    from trickster.serve import models

    from .live_server import live_server

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    final, newer = run / "checkpoints" / "final", run / "checkpoints" / "step_000006"
    greedy = {"prompt": "ROMEO:", "max_tokens": 8, "temperature": 0}
    real, saves, late = checkpoint_load.files_at, [], [0.0]
    clock = types.SimpleNamespace(
        monotonic=lambda: time.monotonic() + late[0], sleep=time.sleep, time_ns=time.time_ns
    )
    monkeypatch.setattr(models, "time", clock)
    monkeypatch.setattr(settled, "time", clock)

    def read_then_a_save(path):
        files = real(path)
        if Path(path) == final and not saves:
            _save_as_best(newer, final, saves)
            late[0] += 3.0
        return files

    with live_server(run, max_loaded=2) as live:
        post = functools.partial(httpx.post, live.url + "/v1/completions", timeout=30)
        expected = post(json={"model": "step_000006", **greedy}).json()["choices"][0]["text"]
        monkeypatch.setattr(checkpoint_load, "files_at", read_then_a_save)
        answer = post(json={"model": "final", **greedy})
        assert answer.status_code == 200, answer.text
        assert saves == [final]
        assert answer.json()["choices"][0]["text"] == expected


def test_a_checkpoint_replaced_as_it_is_resolved_is_read_again(trained_run, tmp_path, monkeypatch, capsys):
    """`generate runs/x/checkpoints/best` looks for the folder between a save's two renames (a
    moment: both are done by the time the failure is looked at): it is read again, from the new best,
    as serve's own loop read it before it read through settled.read_settled."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    best, newer = run / "checkpoints" / "best", run / "checkpoints" / "step_000006"
    assert cli.main(["generate", str(newer), *GREEDY]) == 0
    expected = capsys.readouterr().out
    real, saves = checkpoint_path.resolve, []

    def found_between_the_renames(path):
        if Path(path) == best and not saves:
            _save_as_best(newer, best, saves)
            raise UserError(f"{path} not found; pass a run folder (runs/NAME) or a checkpoint folder")
        return real(path)

    monkeypatch.setattr(checkpoint_path, "resolve", found_between_the_renames)
    code = cli.main(["generate", str(best), *GREEDY])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")
    assert saves == [best] and out == expected


def test_each_read_resolves_the_path_it_was_given_once(trained_run, chat_data, tmp_path, monkeypatch):
    """A path a user gives (a run folder: its `best`) is resolved once per read: generate's load
    once; a fine-tune's init_from once for its files when the run starts and once for its weights
    once the model is built (a new best may be saved between the two). Each read resolved again
    the folder it had just been given, resolved: twice for a load, three times for a fine-tune."""
    cfg = finetune_config(trained_run, chat_data[0], tmp_path / "ft", max_steps=2, eval_every=2, save_every=2)
    resolved, real = [], checkpoint_path.resolve
    monkeypatch.setattr(checkpoint_path, "resolve", lambda path: resolved.append(Path(path)) or real(path))
    checkpoint_load.load_checkpoint(trained_run)
    assert resolved == [trained_run]
    resolved.clear()
    train(cfg, **QUIET)
    assert resolved == [trained_run, trained_run]
