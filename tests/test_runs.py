"""What `trickster runs` and `trickster report` read from a run's metrics.jsonl: in one pass, the
same numbers as every event read back, in memory that does not grow with the run."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import pytest

from trickster.cli import main
from trickster.observe import curves as curves_module
from trickster.observe import runs as runs_module
from trickster.observe.curves import Curves
from trickster.observe.plots import loss_figure
from trickster.observe.report import build_report
from trickster.observe.runs import Metrics, read_run
from trickster.train.loop import train
from trickster.units import format_duration

from .conftest import QUIET, micro_config

EVERY_STEP = {  # every step logged and evaluated (on one batch), with a sample
    "max_steps": 6,
    "warmup_steps": 1,
    "log_every": 1,
    "eval_every": 1,
    "eval_batches": 1,
    "save_every": 100,
    "sample_tokens": 6,
}


def every_event(path: Path) -> list[dict]:
    """metrics.jsonl read here on its own: each line through json.loads; a last line cut short is
    left out."""
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except ValueError:
            assert number == len(lines), f"line {number} is damaged"  # a cut-short last line
    return records


def expected_numbers(records: list[dict]) -> dict:
    """What runs and report show, from every event: the rules of runs.py before it streamed."""
    evals = [r for r in records if r["event"] == "eval"]
    trained = [r for r in evals if r["step"] > 0 and r.get("val_loss") is not None]
    resumes = [i for i, r in enumerate(records) if r["event"] == "resume"]
    segments = [records[a:b] for a, b in zip([0, *resumes], [*resumes, len(records)], strict=True)]
    trains = [r for r in records if r["event"] == "train"]
    return {
        "step": max(r["step"] for r in records),
        "tokens_seen": [r["tokens_seen"] for r in records if "tokens_seen" in r][-1],
        "untrained": next(r for r in evals if r["step"] == 0),
        "best": min(trained, key=lambda r: r["val_loss"]),
        "last_trained": [r for r in evals if r["step"] > 0][-1],
        "wall": sum(s[-1]["time"] - s[0]["time"] for s in segments if s),
        "tokens_per_sec": statistics.median([r["tokens_per_sec"] for r in trains][1:]),
        "ms_per_step": statistics.median([r["ms_per_step"] for r in trains][1:]),
        "evals": evals,
    }


@pytest.fixture(scope="module")
def resumed_run(shakespeare_dir, tmp_path_factory) -> Path:
    """A micro run of 6 steps, then resumed to 14, every step logged and evaluated."""
    run = tmp_path_factory.mktemp("resumed") / "run"
    train(micro_config(shakespeare_dir, run, training_config=EVERY_STEP), **QUIET)
    longer = {**EVERY_STEP, "max_steps": 14}
    train(micro_config(shakespeare_dir, run, training_config=longer), resume=True, **QUIET)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("bounds", ["defaults", "tiny"])
def test_runs_and_report_show_the_numbers_of_every_event_of_a_resumed_run(
    resumed_run, tmp_path, monkeypatch, capsys, bounds
):
    """With bounds too small for the run (curves of 4 points, 3 sample rows) the figures and the
    sample table are thinned, and every number is still that of all the events."""
    if bounds == "tiny":
        monkeypatch.setattr(curves_module, "MAX_POINTS", 4)
        monkeypatch.setattr(runs_module, "SAMPLE_ROWS", 3)
    records = every_event(resumed_run / "metrics.jsonl")
    assert [r["event"] for r in records].count("resume") == 1 and records[-1]["event"] == "end"
    want = expected_numbers(records)
    assert len(want["evals"]) == 15 and want["step"] == 14

    run = read_run(resumed_run, for_report=True)
    assert (run.step, run.tokens_seen, run.status) == (want["step"], want["tokens_seen"], "finished")
    assert run.untrained_eval == want["untrained"] and run.best_eval == want["best"]
    assert run.metrics.last_trained_eval == want["last_trained"]
    assert run.wall_seconds == want["wall"] and run.start == records[0]
    assert (run.median_tokens_per_sec, run.median_ms_per_step) == (
        want["tokens_per_sec"],
        want["ms_per_step"],
    )

    page = build_report(resumed_run)
    best = want["best"]
    assert f"{best['val_loss']:.4f} (step {best['step']:,})" in page
    assert f'tokens seen</div><div class="v">{want["tokens_seen"]:,}</div>' in page
    assert f"{want['tokens_per_sec']:,.0f}" in page and f"{want['ms_per_step']:,.1f}" in page
    assert f"<b>{want['last_trained']['val_loss']:.4f}</b>" in page
    assert f"trained (step {want['last_trained']['step']:,})" in page
    table = page.split("<h2>Samples at every evaluation</h2>")[1].split("<h2>")[0]
    steps = [int(cell) for cell in _cells(table)]
    if bounds == "defaults":
        assert steps == [r["step"] for r in want["evals"]] and "evaluations, evenly spaced" not in table
    else:
        assert len(steps) <= 3 and steps[0] == 0 and steps[-1] == 14
        assert "of the 15 evaluations, evenly spaced, the last included" in table

    curves = run.metrics.curves
    assert len(curves.train_step) <= curves_module.MAX_POINTS
    assert curves.val_step[0] == 0 and curves.val_step[-1] == 14
    best_marked = loss_figure(curves).axes[0].texts[0].get_text()
    assert best_marked == f"best {best['val_loss']:.3f}"

    assert main(["runs", str(resumed_run)]) == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row[3:5] == ["14/14", f"{best['val_loss']:.4f}"] and row[5] == f"{want['tokens_seen']:,}"
    assert " ".join(row[6:-1]) == format_duration(want["wall"])


def _cells(table: str) -> list[str]:
    return [row.split("</td>")[0] for row in table.split("<tr><td class='n'>")[1:]]


@pytest.mark.slow
def test_a_run_killed_mid_line_reads_as_before(resumed_run, tmp_path):
    """The cut-short last line is left out and said, as before."""
    run = Path(shutil.copytree(resumed_run, tmp_path / "run"))
    text = (run / "metrics.jsonl").read_text()
    lines = text.split("\n")
    cut = "\n".join(lines[:-4]) + "\n" + lines[-4][:25]
    (run / "metrics.jsonl").write_text(cut)
    want = expected_numbers(every_event(run / "metrics.jsonl"))
    read = read_run(run)
    assert read.problem == f"the last line of metrics.jsonl is cut short (line {len(lines) - 3}); skipped"
    assert (read.step, read.tokens_seen, read.best_eval) == (want["step"], want["tokens_seen"], want["best"])
    assert read.status == "incomplete"


def held(obj) -> int:
    """The items a run's summary holds, however deep: each entry of a list, tuple or dict (the
    arrays of the two medians are counted apart)."""
    if isinstance(obj, (Metrics, Curves)):
        return sum(held(v) for k, v in vars(obj).items() if k not in ("tokens_per_sec", "ms_per_step"))
    if isinstance(obj, dict):
        return len(obj) + sum(held(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return len(obj) + sum(held(v) for v in obj)
    return 0


def synthetic_run(folder: Path, steps: int) -> Path:
    """A run folder whose metrics.jsonl logs `steps` train steps and evaluates every 10 (a sample
    each time): about 1.1 x `steps` lines."""
    folder.mkdir()

    def line(event: str, step: int, **values) -> str:
        return (
            json.dumps({"event": event, "step": step, "time": step, "tokens_seen": 8 * step, **values}) + "\n"
        )

    with open(folder / "metrics.jsonl", "w", encoding="utf-8") as f:
        f.write(line("start", 0, params=10, tokens_per_step=8))
        for step in range(steps + 1):
            loss = 4.0 / (1 + step) ** 0.1
            if step:
                speed = {"tokens_per_sec": 800.0 + step % 7, "ms_per_step": 10.0}
                f.write(line("train", step, train_loss=loss, lr=1e-3, **speed))
            if step % 10 == 0:
                f.write(line("eval", step, val_loss=loss, val_perplexity=1.0, sample="ROMEO: " * 9))
    return folder


def test_what_a_run_holds_does_not_grow_with_its_metrics(tmp_path, monkeypatch):
    """Read with small bounds (50 points, 10 sample rows), a 50,000-line metrics.jsonl and one twice
    as long leave the same few hundred items in memory. Only the report's medians grow: 8 bytes
    per train event for each, in an array; `trickster runs` does not gather them."""
    monkeypatch.setattr(curves_module, "MAX_POINTS", 50)
    monkeypatch.setattr(runs_module, "SAMPLE_ROWS", 10)
    bound = 6 * 50 + 4 * 50 + 6 * 10 + 200  # the curves, the rows, a few events
    for steps in (45_000, 90_000):
        run = synthetic_run(tmp_path / str(steps), steps)
        listed = read_run(run).metrics  # what `trickster runs` reads
        assert listed.curves is None and listed.tokens_per_sec is None and held(listed) <= 200
        metrics = read_run(run, for_report=True).metrics
        assert held(metrics) <= bound
        assert metrics.events == steps + steps // 10 + 2 and len(metrics.tokens_per_sec) == steps
        assert len(metrics.curves.train_step) <= 50 and len(metrics.curves.val_step) <= 50
        assert len(metrics.sample_rows) <= 10 and metrics.sample_rows[-1][1] == steps
        assert (listed.step, listed.best_eval, listed.sample_rows) == (
            steps,
            metrics.best_eval,
            metrics.sample_rows,
        )


def test_a_running_heartbeat_gone_quiet_says_for_how_long(resumed_run, tmp_path):
    """A process that still exists but no longer trains (stuck in a collective, a hung network file
    system) kept its run `running` in the table for good, however old its last heartbeat."""
    run = Path(shutil.copytree(resumed_run, tmp_path / "run"))
    lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    (run / "metrics.jsonl").write_text("".join(line for line in lines if '"event": "end"' not in line))
    beat = {"state": "running", "pid": 4242, "host": "another-machine", "step": 10, "max_steps": 14}
    for quiet, shown in [(5, "running?"), (3 * 3600 + 5, "running? (no heartbeat for 3h 00m)")]:
        heartbeat = {**beat, "eta_seconds": 4.0, "updated": time.time() - quiet}
        (run / "status.json").write_text(json.dumps(heartbeat))
        assert read_run(run).status == shown
