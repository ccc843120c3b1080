"""logging_config.profile_steps on real micro runs: the trace holds the steps asked and no others,
the table lists the operators, and a profiled run (fresh or resumed) trains exactly as the same run
without the profiler (conftest's trained_run, read back from its own config.yaml)."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch

from trickster import run_checkpoints
from trickster.config import load_config, save_config
from trickster.observe.events import read_metrics
from trickster.train import loop, optim
from trickster.train.loop import train

from . import children
from .conftest import micro_config
from .dist_child import spiking_schedule
from .test_long_runs import SPIKE
from .test_resume import assert_same_weights, curve

STEP_MARK = re.compile(r"ProfilerStep#(\d+)")
Spans = dict[int, tuple[float, float]]  # {step: (start, end)}


def profiled(run: Path, out: Path, window: list[int]):
    """The trained run's own config, into `out`, with profile_steps, and its sample prompt given as
    the run's was: a prompt that a run's saved config.yaml holds is fitted anew (train/fitted.py),
    and the excerpt holds no 'ROMEO:'."""
    prompt = load_config(run / "config.yaml").training.sample_prompt
    overrides = [
        f"logging_config.output_dir={out}",
        f"logging_config.profile_steps={window}",
        f"training_config.sample_prompt={prompt}",
    ]
    return load_config(run / "config.yaml", overrides=overrides)


def read_trace(run: Path, rank: int = 0, part: str = "") -> dict:
    with gzip.open(run / "profile" / f"rank{rank}{part}.pt.trace.json.gz", "rt") as f:
        return json.load(f)


def profiled_steps(events: list[dict]) -> Spans:
    """{step: (start, end)} of each ProfilerStep#N annotation, in the trace's microseconds."""
    spans = {}
    for event in events:
        if event.get("ph") == "X" and (mark := STEP_MARK.fullmatch(event.get("name", ""))):
            assert int(mark[1]) not in spans, f"{event['name']} twice"
            spans[int(mark[1])] = (event["ts"], event["ts"] + event["dur"])
    return spans


def ops_per_step(events: list[dict], spans: Spans, name: str) -> dict[int | None, int]:
    """How many `name` operators ran inside each step's span (None: outside every span)."""
    counts: dict[int | None, int] = {}
    for event in events:
        if event.get("name") == name and event.get("ph") == "X":
            inside = [step for step, (start, end) in spans.items() if start <= event["ts"] < end]
            key = inside[0] if inside else None
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_the_trace_holds_the_steps_asked_and_the_run_trains_as_without_it(trained_run, tmp_path):
    lines = []
    result = train(profiled(trained_run, tmp_path / "run", [3, 4]), echo=lines.append)

    assert curve(result.history) == curve(read_metrics(trained_run / "metrics.jsonl"))
    assert_same_weights(tmp_path / "run" / "checkpoints" / "final", trained_run / "checkpoints" / "final")
    events = read_trace(tmp_path / "run")["traceEvents"]
    spans = profiled_steps(events)
    assert sorted(spans) == [3, 4]
    # each step's matrix products, forward and backward, and none outside the two steps
    matmuls = ops_per_step(events, spans, "aten::mm")
    assert set(matmuls) == {3, 4} and matmuls[3] == matmuls[4] > 0
    table = (tmp_path / "run" / "profile" / "rank0_top_ops.txt").read_text()
    assert "Steps 3 to 4" in table and re.search(r"^\s*aten::mm\s", table, re.MULTILINE)
    said = [line for line in lines if "rank0.pt.trace.json.gz" in line]
    trace = tmp_path / "run" / "profile" / "rank0.pt.trace.json.gz"
    assert said[0] == f"writing the profile of steps 3 to 4 to {trace} (a large model's can take a minute)"
    assert len(said) == 2 and "ui.perfetto.dev" in said[1] and "rank0_top_ops.txt" in said[1]


@pytest.mark.parametrize(
    ("window", "traced"),
    [
        pytest.param([8, 9], [8, 9], id="after-the-checkpoint"),
        pytest.param([5, 7], [7], id="across-the-checkpoint"),
        pytest.param([2, 4], None, id="before-the-checkpoint"),
    ],
)
def test_a_resumed_run_profiles_only_its_own_steps_of_the_window(window, traced, trained_run, tmp_path):
    """Resumed from step 6 of trained_run: steps before it are not taken again, so not profiled;
    the losses and weights are still those of the run that never stopped."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "checkpoints" / "final")
    assert run_checkpoints.latest(run).name == "step_000006"
    lines = []
    result = train(profiled(trained_run, run, window), resume=True, echo=lines.append)

    assert curve(result.history) == curve(read_metrics(trained_run / "metrics.jsonl"))
    assert_same_weights(run / "checkpoints" / "final", trained_run / "checkpoints" / "final")
    if traced is None:
        assert not (run / "profile").exists()
        assert not [line for line in lines if line.startswith("profil")]
        return
    # the rest of a window begun before the checkpoint is named by its steps (see the next test)
    events = read_trace(run, part="" if window[0] > 6 else f"_steps{traced[0]}-{traced[-1]}")["traceEvents"]
    spans = profiled_steps(events)
    assert sorted(spans) == traced
    assert set(ops_per_step(events, spans, "aten::mm")) == set(traced)


def test_a_run_resumed_inside_the_window_keeps_the_profile_of_its_start(trained_run, tmp_path):
    """Stopped inside the window (a signal, max_time) the run wrote the profile of the window's
    steps it took; resumed, it profiles the rest beside that one. It replaced it with the rest."""
    first = tmp_path / "first"
    train(profiled(trained_run, first, [5, 7]), echo=lambda line: None)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "checkpoints" / "final")
    shutil.copytree(first / "profile", run / "profile")  # what the session that took step 5 wrote
    before = {path.name: path.read_bytes() for path in (run / "profile").iterdir()}
    lines = []
    train(profiled(trained_run, run, [5, 7]), resume=True, echo=lines.append)

    assert {name: (run / "profile" / name).read_bytes() for name in before} == before
    rest = profiled_steps(read_trace(run, part="_steps7-7")["traceEvents"])
    assert sorted(rest) == [7]
    assert "Steps 7 to 7" in (run / "profile" / "rank0_steps7-7_top_ops.txt").read_text()
    said = [line for line in lines if line.startswith("profile of steps 7 to 7")]
    assert len(said) == 1 and "rank0_steps7-7.pt.trace.json.gz" in said[0]


def test_a_profile_that_cannot_be_written_is_one_line_and_the_run_goes_on(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "checkpoints" / "final")
    (run / "profile").write_text("a file where the profile folder goes")
    lines = []
    result = train(profiled(trained_run, run, [8, 9]), resume=True, echo=lines.append)

    assert curve(result.history) == curve(read_metrics(trained_run / "metrics.jsonl"))
    said = [line for line in lines if line.startswith("could not write the profile")]
    why = f"({run / 'profile'}: File exists)"
    assert said == [f"could not write the profile of steps 8 to 9 {why}; training goes on without it"]
    assert (run / "profile").read_text() == "a file where the profile folder goes"


def stopped_in_the_window(shakespeare_dir, tmp_path) -> tuple[children.Child, Path, list[str]]:
    """A micro run profiling steps 2 to 6 (tests/signal_child.py's profile mode: step 3 and the trace
    export long), its temporary folder TMP, Ctrl-C in step 3; returns the child, at its export, with
    the lines it printed until then."""
    training = {"max_steps": 8, "save_every": 100, "eval_every": 100, "sample_tokens": 0, "log_every": 1}
    cfg = micro_config(
        shakespeare_dir, tmp_path / "run", training_config=training, logging_config={"profile_steps": [2, 6]}
    )
    save_config(cfg, tmp_path / "run.yaml")
    (tmp_path / "tmp").mkdir()
    argv = ["train", "--config", str(tmp_path / "run.yaml"), "--no-progress"]
    child = children.Child("tests.signal_child", "profile", "3", *argv, env={"TMPDIR": str(tmp_path / "tmp")})
    while (line := child.stdout.readline()) and line.strip() != "busy":  # the header, then step 3
        pass
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    while (line := child.stderr.readline()) and line.startswith("USDT:"):  # Kineto's own, on stderr
        pass
    assert line.startswith("SIGINT received: stopping after this step and saving"), line
    lines = []
    while (line := child.stdout.readline()) and line.strip() != "busy":  # step 3's end, then the export
        lines.append(line.rstrip("\n"))
    return child, tmp_path / "run" / "profile", lines


@pytest.mark.slow
def test_a_run_stopped_in_the_window_says_it_writes_the_trace_before_it_does(shakespeare_dir, tmp_path):
    """The stop line came first, then nothing while the trace was written (on a big model, a minute):
    a user took it for a hang. The line that says to wait comes before torch's export."""
    child, profile, lines = stopped_in_the_window(shakespeare_dir, tmp_path)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 130, err
    trace = profile / "rank0.pt.trace.json.gz"
    writing = (
        f"writing the profile of steps 2 to 3 to {trace} (a large model's can take a minute); wait for "
        "it: a second SIGINT stops at once, without it"
    )
    stopped, said = [line for line in lines if not line.startswith("step ")]
    assert (
        stopped.startswith("stopped by SIGINT at step 3; saved checkpoints/step_000003") and said == writing
    )
    assert out.startswith("profile of steps 2 to 3: ")  # once the export is done
    assert sorted(profiled_steps(read_trace(profile.parent)["traceEvents"])) == [2, 3]


@pytest.mark.slow
def test_a_second_ctrl_c_while_the_trace_is_written_leaves_no_trace_to_mistake(shakespeare_dir, tmp_path):
    """Stopped at once in the export, the run leaves no trace or table under their names, nothing in
    the system's temporary folder (torch's uncompressed export stayed in /tmp), only hidden
    temporary files in RUN/profile, which the resumed run's profile deletes."""
    child, profile, lines = stopped_in_the_window(shakespeare_dir, tmp_path)
    assert lines[-1].startswith("writing the profile of steps 2 to 3 to ")
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 130 and "second SIGINT: stopped at once" in err, err
    assert not list((tmp_path / "tmp").iterdir())
    left = sorted(path.name for path in profile.iterdir())
    assert left and all(name.startswith(".") and ".tmp-" in name for name in left), left

    cfg = load_config(tmp_path / "run.yaml")
    train(cfg, resume=True, echo=lambda line: None)  # steps 4 to 8: the rest of the window
    assert sorted(path.name for path in profile.iterdir()) == [
        "rank0_steps4-6.pt.trace.json.gz",
        "rank0_steps4-6_top_ops.txt",
    ]


@pytest.mark.slow
@pytest.mark.parametrize("window", [[22, 24], [16, 22]], ids=["after-the-rollback", "across-the-rollback"])
def test_after_a_rollback_each_profiled_step_is_the_step_of_its_number(window, micro, monkeypatch):
    """A loss spike at steps 17 to 19 or so rolls the run back to step 15 (test_long_runs' run).
    The profiler counted on: it profiled the replayed steps 18 to 20 as ProfilerStep#22 to 24, and
    a window across the rollback held the spike's steps and the replayed ones, numbered 16 to 22.
    Now a window after the rollback is the steps asked; one across it ends there, with the steps
    as they ran. Each step runs here inside a mark of its own naming the run's step counter."""
    monkeypatch.setattr(optim, "lr_at", spiking_schedule(optim.lr_at))
    step = loop.Trainer.step

    def marked(self):
        with torch.profiler.record_function(f"console step {self.state.step + 1}"):
            return step(self)

    monkeypatch.setattr(loop.Trainer, "step", marked)
    lines = []
    result = train(micro(training_config=SPIKE, logging_config={"profile_steps": window}), echo=lines.append)

    (rollback,) = [record for record in result.history if record["event"] == "rollback"]
    assert rollback["step"] == 15 and rollback["last_step"] < 22
    traced = [22, 23, 24] if window == [22, 24] else list(range(16, rollback["last_step"] + 1))
    events = read_trace(Path(result.run_dir))["traceEvents"]
    spans = profiled_steps(events)
    assert sorted(spans) == traced
    marks = [e for e in events if e.get("ph") == "X" and e.get("name", "").startswith("console step ")]
    inside = {
        step: [m["name"] for m in marks if start <= m["ts"] < end] for step, (start, end) in spans.items()
    }
    assert inside == {step: [f"console step {step}"] for step in traced}
    table = (Path(result.run_dir) / "profile" / "rank0_top_ops.txt").read_text()
    assert f"Steps {traced[0]} to {traced[-1]} of process 0" in table
