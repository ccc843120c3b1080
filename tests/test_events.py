"""metrics.jsonl: the events a run writes, and the one parser every reader uses."""

from __future__ import annotations

import csv
import errno
import json
import os

import pytest

from trickster.errors import UserError
from trickster.observe.curves import Curves
from trickster.observe.events import MetricsLog, read_metrics
from trickster.observe.runs import read_run
from trickster.observe.sinks import csv_rows
from trickster.units import format_duration

from .conftest import events


def test_every_event_has_its_kind_step_and_time(trained_run):
    records = read_metrics(trained_run / "metrics.jsonl")
    assert [r["event"] for r in records][:2] == ["start", "eval"] and records[-1]["event"] == "end"
    assert all({"event", "step", "time"} <= r.keys() for r in records)
    times = [r["time"] for r in records]
    assert times == sorted(times)


def test_tokens_seen_is_stored_on_train_and_eval_events_and_read_from_there(trained_run):
    start = events(trained_run, "start")[0]
    measured = events(trained_run, "train") + events(trained_run, "eval")
    assert measured and all(r["tokens_seen"] == r["step"] * start["tokens_per_step"] for r in measured)
    assert read_run(trained_run).tokens_seen == 12 * start["tokens_per_step"]
    records = read_metrics(trained_run / "metrics.jsonl")
    rows = csv_rows(records)
    assert [int(row["tokens_seen"]) for row in rows] == [
        r["tokens_seen"] for r in records if "tokens_seen" in r
    ]
    curves = Curves.from_records(records)
    assert curves.val_tokens == [r["tokens_seen"] for r in events(trained_run, "eval")]
    with open(trained_run / "metrics.csv", encoding="utf-8", newline="") as f:
        assert [int(row["tokens_seen"]) for row in csv.DictReader(f)] == [
            int(row["tokens_seen"]) for row in rows
        ]


def test_a_sample_with_unicode_line_separators_reads_back_and_survives_a_resume(tmp_path):
    """A byte-level model can sample U+2028, U+2029 or NEL, which JSON leaves unescaped: the events
    around them must read back whole (they were 'damaged' lines), also after a resume rewrites the
    file."""
    from trickster.train.resume import metrics_cut_back

    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    sample = "to be\u2028or not\u2029to be\x85that is\rthe question"
    for step in range(3):
        log.write("eval", step, val_loss=1.0, sample=sample)
    assert [r["sample"] for r in read_metrics(path)] == [sample] * 3
    with metrics_cut_back(path, 1, False, {"event": "resume", "step": 1, "time": 0.0}):
        pass
    assert [(r["step"], r.get("sample")) for r in read_metrics(path)] == [(0, sample), (1, sample), (1, None)]


def test_a_cut_last_line_is_skipped_and_said_and_a_damaged_one_is_an_error(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(3):
        log.write("train", step, train_loss=1.0)
    path = log.path
    whole = path.read_text()
    path.write_text(whole + '{"event": "train", "st')  # killed while writing the fourth line
    problems: list[str] = []
    assert [r["step"] for r in read_metrics(path, problems)] == [0, 1, 2]
    assert problems == ["the last line of metrics.jsonl is cut short (line 4); skipped"]
    assert [r["step"] for r in read_metrics(path)] == [0, 1, 2]  # the same rule without the note

    lines = whole.splitlines()
    path.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(UserError, match=r"metrics.jsonl line 2 is damaged; delete that line and run again"):
        read_metrics(path)
    path.write_text("\n".join([lines[0], json.dumps({"step": 1}), *lines[1:]]) + "\n")
    with pytest.raises(UserError, match=r"line 2 is not a metrics event"):
        read_metrics(path)
    assert read_metrics(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "?"),
        (7.4, "7s"),
        (91, "1m 31s"),
        (7300, "2h 01m"),
        (47.5 * 3600, "47h 30m"),
        (3.1 * 86400, "3.1 days"),
        (301 * 365 * 86400, "301 years"),
    ],
)
def test_one_duration_format_for_runs_reports_and_plans(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize(
    ("code", "fix"),
    [(errno.EROFS, "make the folder writable"), (errno.ENOSPC, "free disk space")],
)
def test_a_refused_metrics_write_names_its_own_cause(tmp_path, monkeypatch, code, fix):
    """A run folder that became read-only was told to free disk space (one fix for every cause)."""
    from trickster.observe import events as events_module

    def refused(file, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(file))

    log = MetricsLog(tmp_path / "metrics.jsonl")
    monkeypatch.setattr(events_module, "open", refused, raising=False)
    with pytest.raises(UserError) as raised:
        log.write("train", 1, loss=2.0)
    reason = os.strerror(code)
    assert str(raised.value) == (
        f"could not write {tmp_path / 'metrics.jsonl'} ({reason}); {fix}, then continue with --resume"
    )
