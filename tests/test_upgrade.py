"""Folders written by older versions, read by this one. Each test gives a folder made by this
version the shape an older one wrote (a key it did not write removed, a value it wrote its own
way), as the git history records it, and checks what this version does with it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from trickster import cli
from trickster.data.loader import load_data
from trickster.observe.events import read_metrics
from trickster.observe.plots import Curves

from .conftest import events


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
