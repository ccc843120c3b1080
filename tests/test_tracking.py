"""What a short real run writes besides metrics.jsonl: metrics.csv, loss.png, TensorBoard event
files and an offline Weights & Biases run, each checked against the run's own metrics.jsonl."""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import math
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trickster.errors import UserError
from trickster.observe import plots
from trickster.observe.curves import Curves
from trickster.observe.events import read_metrics
from trickster.observe.sinks import CSV_FIELDS, MetricSinks, csv_rows
from trickster.train.loop import train

from .conftest import QUIET, count_reads, events, micro_config

HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None
HAS_WANDB = importlib.util.find_spec("wandb") is not None
SHORT = {"max_steps": 12, "warmup_steps": 2, "log_every": 2, "eval_every": 6, "save_every": 6}


def read_csv(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def as_csv_strings(rows: list[dict]) -> list[dict]:
    return [{k: "" if row[k] == "" else str(row[k]) for k in CSV_FIELDS} for row in rows]


def colour_pixels(path: Path, rgb: tuple[int, int, int], tolerance: int = 40) -> int:
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
    return int((np.abs(pixels - np.array(rgb)).max(axis=-1) <= tolerance).sum())


@dataclass
class Tracked:
    run: Path
    plot_calls: list[int]  # for each loss.png redraw: the evaluations logged by then


@pytest.fixture(scope="module")
def tracked(shakespeare_dir, tmp_path_factory) -> Tracked:
    """One 12-step micro run with every sink on (W&B offline): evaluations at steps 0, 6 and 12."""
    tmp = tmp_path_factory.mktemp("tracked")
    calls: list[int] = []
    real = plots.write_loss_plot

    def spy(run_dir, *curves):
        calls.append(len(events(Path(run_dir), "eval")))
        return real(run_dir, *curves)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "write_loss_plot", spy)
        for name, value in {
            "WANDB_MODE": "offline",  # nothing is sent
            "WANDB_DIR": tmp / "wandb-dir",
            "WANDB_CONFIG_DIR": tmp / "wandb-config",
            "WANDB_CACHE_DIR": tmp / "wandb-cache",
            "WANDB_DATA_DIR": tmp / "wandb-data",
            "WANDB_SILENT": "true",
        }.items():
            mp.setenv(name, str(value))
        logging = {"loss_plot": True, "tensorboard": HAS_TENSORBOARD, "use_wandb": HAS_WANDB}
        cfg = micro_config(shakespeare_dir, tmp / "run", training_config=SHORT, logging_config=logging)
        train(cfg, **QUIET)
    return Tracked(tmp / "run", calls)


def test_csv_mirrors_metrics_jsonl_and_loss_png_is_redrawn_at_each_eval(tracked):
    run = tracked.run
    assert tracked.plot_calls == [1, 2, 3]  # after the evaluations at steps 0, 6 and 12, each logged

    records = read_metrics(run / "metrics.jsonl")
    rows = read_csv(run / "metrics.csv")
    assert list(rows[0]) == list(CSV_FIELDS)
    assert [(r["event"], int(r["step"])) for r in rows] == [
        (r["event"], r["step"]) for r in records if r["event"] in ("train", "eval")
    ]
    tokens_per_step = records[0]["tokens_per_step"]
    for row, record in zip(rows, [r for r in records if r["event"] in ("train", "eval")], strict=True):
        if record["event"] == "train":
            assert float(row["train_loss"]) == record["train_loss"] and row["val_loss"] == ""
            assert float(row["lr"]) == record["lr"] and int(row["tokens_seen"]) == record["tokens_seen"]
        else:
            assert float(row["val_loss"]) == record["val_loss"] and row["train_loss"] == ""
            assert int(row["tokens_seen"]) == record["step"] * tokens_per_step

    png = run / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(png).size == (1100, 420)
    assert colour_pixels(png, (31, 119, 180)) > 200  # the train curve (tab:blue)
    assert colour_pixels(png, (255, 127, 14)) > 100  # the validation curve and markers (tab:orange)
    assert not list(run.glob(".loss.png*"))


def test_loss_and_token_axes_are_logarithmic_only_when_the_values_span_a_wide_range():
    def records(losses, steps):
        start = {"event": "start", "step": 0, "tokens_per_step": 100}
        evals = [
            {"event": "eval", "step": s, "val_loss": v, "tokens_seen": 100 * s}
            for s, v in zip(steps, losses, strict=True)
        ]
        trains = [
            {"event": "train", "step": s + 1, "train_loss": v, "tokens_seen": 100 * (s + 1)}
            for s, v in zip(steps, losses, strict=True)
        ]
        return [start, *evals, *trains]

    wide = plots.loss_figure(Curves.from_records(records([4.2, 2.5, 1.8, 1.5], [0, 10, 100, 1000])))
    narrow = plots.loss_figure(Curves.from_records(records([1.6, 1.55, 1.5, 1.45], [10, 20, 30, 40])))
    assert [ax.get_yscale() for ax in wide.axes] == ["log", "log"]
    assert wide.axes[1].get_xscale() == "log"  # tokens from 100 to 100,100
    assert [ax.get_yscale() for ax in narrow.axes] == ["linear", "linear"]
    assert narrow.axes[1].get_xscale() == "linear"  # tokens from 1,000 to 4,100
    start_only = Curves.from_records([{"event": "start", "step": 0, "tokens_per_step": 1}])
    assert plots.loss_figure(start_only) is None


def test_loss_png_is_redrawn_without_reading_metrics_jsonl_again(micro, tmp_path, monkeypatch):
    """metrics.jsonl is read once, when the run starts; each evaluation's loss.png is drawn from the
    curves kept since (through a rollback), so it costs the same at step 10 and at step 10 million,
    and shows what a drawing from the whole file shows."""
    reads = count_reads(monkeypatch)
    run = tmp_path / "run"
    sink = MetricSinks(run, micro(logging_config={"loss_plot": True}))

    def steps(first: int, last: int) -> None:
        for step in range(first, last + 1):
            sink.write("train", step, train_loss=4 / step**0.3, lr=1e-3, tokens_seen=8 * step)
            if step % 5 == 0:
                sink.write("eval", step, val_loss=4.2 / step**0.3, tokens_seen=8 * step)

    sink.write("start", 0, tokens_per_step=8)
    steps(1, 15)
    sink.write("rollback", 10, first_step=13, last_step=15, checkpoint="step_000010", peak_loss=9.0, median=3)
    steps(11, 20)
    sink.close()
    assert reads == [1]  # the start event, when the run started: no evaluation read the file again
    drawn = (run / "loss.png").read_bytes()
    plots.write_loss_plot(run, Curves.from_records(read_metrics(run / "metrics.jsonl")))  # the whole file
    assert (run / "loss.png").read_bytes() == drawn


def test_resume_rewinds_the_csv_and_the_tensorboard_events(micro, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = micro(training_config=SHORT, logging_config={"tensorboard": True})
    full = train(cfg, **QUIET).run_dir
    partial = tmp_path / "partial"
    (partial / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_000006", partial / "checkpoints" / "step_000006")
    shutil.copytree(full / "tensorboard", partial / "tensorboard")  # events up to step 12
    shutil.copy(full / "metrics.csv", partial / "metrics.csv")  # rows up to step 12
    lines = (full / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line)["step"] <= 6]
    kept += [line for line in lines if json.loads(line)["step"] > 6][:2]  # as if killed after 8
    (partial / "metrics.jsonl").write_text("\n".join(kept) + "\n")
    resumed_cfg = cfg.model_copy(deep=True)
    resumed_cfg.logging.output_dir = str(partial)
    train(resumed_cfg, resume=True, **QUIET)

    records = read_metrics(partial / "metrics.jsonl")
    assert read_csv(partial / "metrics.csv") == as_csv_strings(csv_rows(records))
    steps = [int(r["step"]) for r in read_csv(partial / "metrics.csv") if r["event"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 12

    acc = EventAccumulator(str(partial / "tensorboard")).Reload()
    logged = [(e.step, e.value) for e in acc.Scalars("loss/train")]
    expected = [(r["step"], r["train_loss"]) for r in records if r["event"] == "train"]
    assert [s for s, _ in logged] == [s for s, _ in expected]  # nothing after step 6 twice
    assert all(math.isclose(a, b, rel_tol=1e-6) for (_, a), (_, b) in zip(logged, expected, strict=True))


@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard is not installed")
def test_tensorboard_holds_losses_lr_grad_norm_throughput_and_samples(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tracked.run
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    trains, evals = events(run, "train"), events(run, "eval")
    for tag, key, records in (
        ("loss/train", "train_loss", trains),
        ("optim/lr", "lr", trains),
        ("optim/grad_norm", "grad_norm", trains),
        ("speed/tokens_per_sec", "tokens_per_sec", trains),
        ("loss/val", "val_loss", evals),
        ("val/perplexity", "val_perplexity", evals),
    ):
        logged = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in logged] == [r["step"] for r in records], tag
        assert all(math.isclose(v, r[key], rel_tol=1e-6) for (_, v), r in zip(logged, records, strict=True))
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in acc.Tensors("samples/text_summary")}
    assert sorted(texts) == [r["step"] for r in evals]
    for r in evals:
        assert texts[r["step"]].splitlines()[0] == "    " + r["sample"].splitlines()[0]


def wandb_records(path: Path):
    """Read a W&B offline run file (.wandb): LevelDB-log framing of protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += room
            continue
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed")
def test_wandb_offline_run_records_the_metrics(tracked):
    run = tracked.run
    files = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    assert len(files) == 1, files
    history, config = {}, {}
    for record in wandb_records(Path(files[0])):
        if record.HasField("history"):
            items = {
                i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json)
                for i in record.history.item
            }
            history.setdefault(items["_step"], {}).update(items)
        elif record.HasField("run") or record.HasField("config"):
            updates = record.run.config.update if record.HasField("run") else record.config.update
            config.update({u.key: json.loads(u.value_json) for u in updates})
    assert config["training_config"]["max_steps"] == 12
    for r in events(run, "train"):
        assert math.isclose(history[r["step"]]["loss/train"], r["train_loss"], rel_tol=1e-9)
        assert math.isclose(history[r["step"]]["optim/lr"], r["lr"], rel_tol=1e-9)
    for r in events(run, "eval"):
        assert math.isclose(history[r["step"]]["loss/val"], r["val_loss"], rel_tol=1e-9)
        assert "samples" in history[r["step"]]


@pytest.mark.parametrize(("key", "module"), [("tensorboard", "tensorboard"), ("use_wandb", "wandb")])
def test_a_missing_tracking_package_is_refused_before_the_run_folder_exists(micro, monkeypatch, key, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    cfg = micro(training_config=SHORT, logging_config={key: True})
    with pytest.raises(UserError, match=r"pip install nano-trickster\[tracking\]"):
        train(cfg, **QUIET)
    assert not Path(cfg.logging.output_dir).exists()
