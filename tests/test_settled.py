"""`trickster generate` on a run that is still training: a new `best` saved while the command reads
the old one is read again, whole (train/settled.py), not refused as damaged."""

from __future__ import annotations

import json
import shutil
import time
import types

import pytest

from trickster import atomic, cli
from trickster.train import checkpoint as ckpt
from trickster.train import settled

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
    assert cli.main(["generate", str(newer), *GREEDY]) == 0
    expected = capsys.readouterr().out
    real, saves = ckpt.read_files, []
    clock = [time.monotonic()]
    monkeypatch.setattr(settled, "time", types.SimpleNamespace(monotonic=lambda: clock[0], sleep=time.sleep))

    def read_then_a_save(path):
        """config, tokenizer and info.json read; then the run saves a new best, as replace_dir does"""
        files = real(path)
        clock[0] += read_seconds
        if not saves:
            staging = atomic.staging_dir(best)
            for file in newer.iterdir():
                shutil.copy(file, staging / file.name)
            atomic.replace_dir(staging, best)
            saves.append(path)
        return files

    monkeypatch.setattr(ckpt, "read_files", read_then_a_save)
    code = cli.main(["generate", str(run), *GREEDY])
    out, err = capsys.readouterr()
    assert (code, err) == (0, "")  # it said model.safetensors no longer matched its checksum
    assert saves == [best]
    assert out == expected  # the new best's text: its weights with its own files
