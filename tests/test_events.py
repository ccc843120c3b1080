"""metrics.jsonl: the events a run writes, and the one parser every reader uses."""

from __future__ import annotations

import collections
import csv
import errno
import json
import os

import pytest

from trickster.errors import UserError
from trickster.observe.curves import Curves
from trickster.observe.events import MetricsLog, iter_metrics, last_event, read_metrics
from trickster.observe.runs import read_run
from trickster.observe.sinks import csv_rows
from trickster.units import format_duration

from .conftest import events

try:
    import resource
except ImportError:  # native Windows
    resource = None


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


def test_a_cut_last_line_and_a_damaged_one_are_skipped_and_said(tmp_path):
    """A last line cut short is what a kill leaves; a damaged line elsewhere (not JSON, or JSON that
    is no event) means the file was changed since: both are skipped, each said in its own words."""
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
    for damaged in ("{oops", json.dumps({"step": 1}), "[1, 2]"):
        path.write_text("\n".join([lines[0], damaged, *lines[1:]]) + '\n{"event": "tr')
        problems = []
        assert [r["step"] for r in read_metrics(path, problems)] == [0, 1, 2]
        assert problems == [
            "metrics.jsonl line 2 is damaged (not an event) and was skipped; delete it to stop this note",
            "the last line of metrics.jsonl is cut short (line 5); skipped",
        ]
    path.write_text("\n".join(["{oops"] * 3 + lines) + "\n")
    problems = []
    assert [r["step"] for r in read_metrics(path, problems)] == [0, 1, 2]
    assert problems == [
        "metrics.jsonl lines 1, 2 and 3 are damaged (not events) and were skipped; delete them to stop "
        "this note"
    ]
    path.write_text("\n".join(["{oops"] * 5 + lines) + "\n")  # said once, whatever their number
    problems = []
    assert [r["step"] for r in read_metrics(path, problems)] == [0, 1, 2]
    assert problems == [
        "metrics.jsonl lines 1, 2, 3 and 2 more are damaged (not events) and were skipped; delete them "
        "to stop this note"
    ]
    assert read_metrics(tmp_path / "missing.jsonl") == []


def _event(event: str, step: int, **values) -> str:
    return json.dumps({"event": event, "step": step, "time": 1.0, **values}, ensure_ascii=False)


_BODY = _event("start", 0) + "\n" + _event("eval", 4, sample="to be\u2028or not\x85to be") + "\n"
_LONG = "x" * 300_000  # longer than the first block read from the end (64 KiB), and than the next two
_END = _event("end", 4)
_SHAPES = {
    "ends-with-a-line-end": _BODY + _END + "\n",
    "no-line-end-after-the-last": _BODY + _END,
    "last-line-cut-short": _BODY + _END + "\n" + '{"event": "train", "st',
    "blank-lines-after": _BODY + _END + "\n\n  \n",
    "a-long-last-line": _BODY + _event("eval", 4, sample=_LONG) + "\n",
    "a-long-line-then-one-cut-short": _event("eval", 4, sample=_LONG) + "\n" + _END[:-3],
    "one-long-line-cut-short": _event("eval", 4, sample=_LONG)[:-2],
    "carriage-returns": (_BODY + _END + "\n").replace("\n", "\r\n"),
    "empty": "",
    "a-line-end-alone": "\n",
    "not-utf8": _BODY + '{"event": "end", "step": 4, "time": 1.0, "note": "\udcff"}\n',
}
_DAMAGED = {
    "not-an-event-last": _BODY + '["end", 4]\n',
    "an-object-without-an-event-last": _BODY + '{"step": 4, "time": 1.0}\n',
    "damaged-before-a-line-cut-short": _BODY + '{"event": "end", oops}\n{"event": "tr',
    "not-an-event-before-blank-lines": _BODY + "[1]\n\n",
    "damaged-before-a-blank-last-line": _BODY + '{"event": "end", oops\n\n',
}


def _last_read_whole(path):
    last = collections.deque(iter_metrics(path), maxlen=1)
    return last[0] if last else None


@pytest.mark.parametrize("name", list(_SHAPES))
def test_the_last_event_read_from_the_end_is_the_one_read_from_the_start(tmp_path, name):
    """last_event reads a metrics.jsonl from its end (the finished-run check of a long run): it
    must find what iter_metrics, reading every line, finds last, whatever the file's end looks like."""
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_SHAPES[name].encode("utf-8", errors="surrogateescape"))  # \udcff: the byte 0xff
    assert last_event(path) == _last_read_whole(path)
    assert (last_event(path) is None) == (name in ("empty", "a-line-end-alone", "one-long-line-cut-short"))


def test_a_last_line_written_whole_but_not_an_event_is_damaged_not_cut_short(tmp_path):
    """An event is written with its line end at once, so a kill leaves a last line without one; a
    last line that has it and is no event was changed since. It is said as damaged, and a resume
    keeps it on the side of the event before it: among the kept events, or left out with those
    after the checkpoint."""
    from trickster.train.resume import metrics_cut_back

    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    for step in range(3):
        log.write("train", step, train_loss=1.0)
    whole = path.read_text()
    path.write_text(whole + "{oops\n")
    problems: list[str] = []
    assert [r["step"] for r in read_metrics(path, problems)] == [0, 1, 2]
    assert problems == [
        "metrics.jsonl line 4 is damaged (not an event) and was skipped; delete it to stop this note"
    ]
    resume = {"event": "resume", "step": 2, "time": 0.0}
    with metrics_cut_back(path, 2, False, resume) as notes:
        pass
    assert path.read_text().splitlines()[3:] == ["{oops", json.dumps(resume)]
    assert notes == [
        "metrics.jsonl line 4 is damaged (not an event) and was kept as found; report and runs skip it "
        "(delete it to stop their notes)"
    ]
    path.write_text(whole + "{oops\n")
    with metrics_cut_back(path, 1, False, {**resume, "step": 1}) as notes:
        pass
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [0, 1, 1]
    assert notes == [
        "metrics.jsonl line 4 is damaged (not an event) and was left out; it lay among the events after "
        "the checkpoint"
    ]


@pytest.mark.parametrize("name", list(_DAMAGED))
def test_a_damaged_line_after_the_last_event_is_passed_over_from_the_end_too(tmp_path, name):
    """last_event skips what iter_metrics skips, and finds the same last event (line 2's eval)."""
    path = tmp_path / "metrics.jsonl"
    path.write_text(_DAMAGED[name], encoding="utf-8")
    problems: list[str] = []
    assert last_event(path) == collections.deque(iter_metrics(path, problems), maxlen=1)[0]
    assert last_event(path)["event"] == "eval" and problems[0].startswith("metrics.jsonl line 3 is damaged")
    assert last_event(tmp_path / "missing.jsonl") is None


def _bytes_read() -> int:
    """What this process has read so far, by read() calls of any file (Linux: /proc/self/io)."""
    with open("/proc/self/io", encoding="ascii") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


@pytest.mark.skipif(not os.path.isfile("/proc/self/io"), reason="counts bytes read in /proc/self/io (Linux)")
def test_a_last_line_cut_short_is_passed_over_without_reading_the_whole_file(tmp_path):
    """A run killed while it wrote a line leaves it cut short at the end of a file of hundreds of MB:
    the event before it is still found from the end (10 MB of events here, a small part read)."""
    path = tmp_path / "metrics.jsonl"
    train_line = _event("train", 1, loss=2.5) + "\n"
    with open(path, "w", encoding="utf-8") as f:
        f.writelines([_event("start", 0) + "\n", *[train_line] * (10_000_000 // len(train_line))])
        f.write(_END + "\n" + '{"event": "train", "st')
    before = _bytes_read()
    assert last_event(path)["event"] == "end"
    assert _bytes_read() - before < path.stat().st_size / 10


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
    """A run folder that became read-only was told to free disk space (one fix for every cause).
    The folder holds no checkpoint: the run goes on with resume=auto (--resume would find nothing)."""
    from trickster.observe import events as events_module

    def refused(file, *args, **kwargs):
        raise OSError(code, os.strerror(code), str(file))

    log = MetricsLog(tmp_path / "metrics.jsonl")
    monkeypatch.setattr(events_module, "open", refused, raising=False)
    with pytest.raises(UserError) as raised:
        log.write("train", 1, loss=2.0)
    reason = os.strerror(code)
    assert str(raised.value) == (
        f"could not write {tmp_path / 'metrics.jsonl'} ({reason}); {fix}, then run the command again with "
        "training_config.resume=auto (it starts afresh in the same run folder)"
    )


@pytest.mark.skipif(resource is None, reason="needs RLIMIT_FSIZE")
def test_a_metrics_write_refused_before_the_first_checkpoint_names_the_command_that_trains(
    micro, tmp_path, capsys
):
    """metrics.jsonl outgrows a real file size limit (EFBIG) before the run's first checkpoint. The
    line said 'continue with --resume', which there answers 'nothing to resume'; it names
    training_config.resume=auto, and that command, once the limit is lifted, trains the run."""
    from trickster import cli
    from trickster.config import save_config

    settings = {"max_steps": 30, "warmup_steps": 1, "log_every": 1, "eval_every": 100, "save_every": 100}
    cfg = micro(training_config={**settings, "sample_tokens": 0})
    run_dir, config = tmp_path / "run", tmp_path / "run.yaml"
    save_config(cfg, config)
    argv = ["train", "--config", str(config), "--no-progress"]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, hard))
    try:
        code = cli.main(argv)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert code == 2
    assert not (run_dir / "checkpoints").exists()
    assert capsys.readouterr().err.splitlines()[-1] == (
        f"error: could not write {run_dir / 'metrics.jsonl'} (File too large); lift the file size limit "
        "(ulimit -f), then run the command again with training_config.resume=auto (it starts afresh in "
        "the same run folder)"
    )
    assert cli.main([*argv, "--resume"]) == 2  # what the line said before
    assert "nothing to resume" in capsys.readouterr().err
    assert cli.main([*argv, "training_config.resume=auto"]) == 0
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["event"] for r in records].count("start") == 1
    assert records[-1]["event"] == "end" and records[-1]["step"] == 30
    assert (run_dir / "checkpoints" / "final").is_dir()


# JSON objects with an event, a step and a time that no reader can use: each was a traceback in
# `runs`, `report` and a resume (which read the events back into metrics.csv and the curves)
_UNUSABLE = {
    "a-step-as-text": _event("train", "12", train_loss=1.0, tokens_seen=8),
    "a-time-as-text": json.dumps({"event": "eval", "step": 2, "time": "now", "val_loss": 1.0}),
    "a-loss-as-text": _event("eval", 2, val_loss="1.5", val_perplexity=4.5, tokens_seen=16),
    "a-hellaswag-event-without-its-accuracy": _event("hellaswag", 2, tokens_seen=16),
    "tokens-as-a-number-with-a-point": _event("train", 2, train_loss=1.0, tokens_seen=16.0),
    "a-step-of-true": _event("train", True, train_loss=1.0, tokens_seen=16),
    "nested-too-deeply": "[" * 100_000 + "]" * 100_000,
}


def test_events_of_fields_no_reader_can_use_are_damaged_and_runs_report_and_a_resume_go_on(
    micro, tmp_path, capsys
):
    from trickster import cli
    from trickster.config import save_config

    cfg = micro(training_config={"max_steps": 2, "warmup_steps": 1, "eval_every": 2, "save_every": 2})
    run_dir, config = cfg.logging.output_dir, tmp_path / "run.yaml"
    save_config(cfg, config)
    argv = ["train", "--config", str(config), "--no-progress", "training_config.resume=auto"]
    assert cli.main(argv) == 0
    metrics = tmp_path / "run" / "metrics.jsonl"
    lines = metrics.read_text(encoding="utf-8").splitlines(keepends=True)
    for name, unusable in _UNUSABLE.items():  # each alone: skipped and said
        metrics.write_text("".join([lines[0], unusable + "\n", *lines[1:]]), encoding="utf-8")
        problems: list[str] = []
        assert [r["event"] for r in read_metrics(metrics, problems)] == [
            json.loads(x)["event"] for x in lines
        ], name
        assert problems == [
            "metrics.jsonl line 2 is damaged (not an event) and was skipped; delete it to stop this note"
        ]
    unusable = "".join(line + "\n" for line in _UNUSABLE.values())
    metrics.write_text("".join([lines[0], unusable, *lines[1:]]), encoding="utf-8")
    note = (
        "metrics.jsonl lines 2, 3, 4 and 4 more are damaged (not events) and were skipped; delete them "
        "to stop this note"
    )
    capsys.readouterr()

    assert cli.main(["runs", str(run_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"note: run: {note}"
    assert cli.main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.splitlines()[1] == f"note: {note}"
    assert cli.main([*argv, "training_config.max_steps=4"]) == 0
    assert "metrics.jsonl lines 2, 3, 4 and 4 more are damaged (not events) and were kept as found" in (
        capsys.readouterr().out
    )
    assert [r["step"] for r in read_metrics(metrics) if r["event"] == "train"] == [2, 4]
