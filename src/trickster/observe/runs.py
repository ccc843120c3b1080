"""Read a run folder after the fact: its config, metrics.jsonl, manifest and checkpoints, and the
figures `trickster runs` and `trickster report` show (steps, best validation loss, wall time...).

Nothing here runs a model; a run that is still training can be read at any time.
"""

from __future__ import annotations

import functools
import json
import os
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trickster import run_checkpoints
from trickster.config import Config, load_config
from trickster.config_saved import read_saved
from trickster.errors import UserError
from trickster.observe.curves import Curves
from trickster.observe.events import iter_metrics
from trickster.observe.status import liveness, read_status, silent_for
from trickster.observe.stops import Stops
from trickster.presets import preset_names
from trickster.units import format_duration

# evaluations the report's sample table keeps at most (evenly spaced; the first and last stay)
SAMPLE_ROWS = 200


@dataclass
class Metrics:
    """What `trickster runs` and `trickster report` read from metrics.jsonl, gathered in one pass,
    one event at a time (`add`): a few events whole (the first start, the last event, the
    untrained, best and last trained evaluations), running figures, and the report's sample rows,
    thinned to a bound. For the report (`for_report`), also the figures' curves, thinned to a bound,
    and every train event's tokens/s and ms/step for their exact medians: 16 bytes per train event,
    the one thing that grows with the run."""

    events: int = 0
    start: dict = field(default_factory=dict)  # the first start event
    last: dict | None = None  # the last event, whatever it is
    step: int = 0  # the highest step of any event
    tokens_seen: int = 0  # of the last event that carries it
    untrained_eval: dict | None = None  # the first evaluation at step 0
    best_eval: dict | None = None  # the first evaluation after step 0 with the lowest val_loss
    last_trained_eval: dict | None = None  # the last evaluation after step 0
    evals: int = 0  # eval events seen
    last_hellaswag: dict | None = None  # the last HellaSwag scoring (training_config.hellaswag_every)
    # (number, step, tokens_seen, val_loss, sample) of evaluations 0, rows_every, 2 x rows_every, ...
    # and of the last one
    sample_rows: list[tuple] = field(default_factory=list)
    rows_every: int = 1
    tokens_per_sec: array | None = None  # of every train event, for the report
    ms_per_step: array | None = None
    ended_segments: float = 0.0  # seconds of the segments before the last resume, summed
    _segment: tuple[float, float] | None = None  # (first, last) time of the current segment
    curves: Curves | None = None  # the figures' points, for the report
    stops: Stops = field(default_factory=Stops)  # when the run stopped and was resumed

    @classmethod
    def from_records(cls, records: Iterable[dict], for_report: bool = False) -> Metrics:
        m = cls()
        if for_report:
            m.curves, m.tokens_per_sec, m.ms_per_step = Curves(), array("d"), array("d")
        for r in records:
            m.add(r)
        return m

    def add(self, r: dict) -> None:
        self.events += 1
        self.last, self.step = r, max(self.step, r["step"])
        if "tokens_seen" in r:
            self.tokens_seen = r["tokens_seen"]
        if r["event"] == "start" and not self.start:
            self.start = r
        elif r["event"] == "train" and self.tokens_per_sec is not None:  # NaN: not logged
            self.tokens_per_sec.append(_number(r.get("tokens_per_sec")))
            self.ms_per_step.append(_number(r.get("ms_per_step")))
        elif r["event"] == "eval":
            self._add_eval(r)
        elif r["event"] == "hellaswag":
            self.last_hellaswag = r
        self._add_time(r)
        self.stops.add(r)
        if self.curves is not None:
            self.curves.add(r)

    def _add_eval(self, r: dict) -> None:
        if r["step"] == 0 and self.untrained_eval is None:
            self.untrained_eval = r
        if r["step"] > 0:
            self.last_trained_eval = r
            best = self.best_eval
            if r.get("val_loss") is not None and (best is None or r["val_loss"] < best["val_loss"]):
                self.best_eval = r  # strictly lower: the first of equal losses, as min() picks
        number, self.evals = self.evals, self.evals + 1
        if self.sample_rows and self.sample_rows[-1][0] % self.rows_every:
            self.sample_rows.pop()  # kept only as the last one
        self.sample_rows.append((number, r["step"], r.get("tokens_seen"), r.get("val_loss"), r.get("sample")))
        if len(self.sample_rows) > SAMPLE_ROWS:
            self.rows_every *= 2
            last = self.sample_rows[-1]
            kept = (row for row in self.sample_rows if row[0] % self.rows_every == 0 or row is last)
            self.sample_rows = list(kept)

    def _add_time(self, r: dict) -> None:
        if r["event"] == "resume" and self._segment is not None:
            self.ended_segments += self._segment[1] - self._segment[0]
            self._segment = None
        self._segment = (self._segment[0] if self._segment else r["time"], r["time"])

    @property
    def wall_seconds(self) -> float:
        """Time from the first to the last event, summed over the segments a resume separates."""
        return self.ended_segments + (self._segment[1] - self._segment[0] if self._segment else 0.0)

    @staticmethod
    def steady_median(values: array | None) -> float | None:
        """The median of a train event's figure. The first interval includes warm-up (and the
        first evaluation): it is left out when there are others. NaN: not logged, left out."""
        if values is None:
            raise ValueError("the medians are gathered by read_run(..., for_report=True)")
        logged = np.frombuffer(values, dtype=np.float64)
        logged = logged[1:] if len(logged) > 1 else logged
        logged = logged[~np.isnan(logged)]  # a copy, which the median may reorder
        # numpy's median of float64 is statistics.median's: the middle value, or the mean of two
        return float(np.median(logged, overwrite_input=True)) if len(logged) else None


def _brief(reason: str, most: int = 60) -> str:
    """A stop's reason for the table: a word (disk-full), or an error's line cut short."""
    return reason if len(reason) <= most else reason[: most - 3] + "..."


def _number(value) -> float:
    return float("nan") if value is None else value


@dataclass
class Run:
    path: Path
    cfg: Config | None  # None when config.yaml is missing or damaged
    metrics: Metrics = field(default_factory=Metrics)  # what metrics.jsonl says, in brief
    manifest: dict = field(default_factory=dict)
    # complete ones, each with its step and val loss (run_checkpoints.recorded_loss), oldest first
    checkpoints: list[tuple[Path, run_checkpoints.RecordedLoss]] = field(default_factory=list)
    problem: str | None = None  # why part of the folder could not be read
    heartbeat: dict | None = None  # status.json, written by the training process while it runs

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def start(self) -> dict:
        return self.metrics.start

    @property
    def step(self) -> int:
        return self.metrics.step

    @property
    def max_steps(self) -> int | None:
        return self.cfg.training.max_steps if self.cfg else None

    @property
    def status(self) -> str:
        last = self.metrics.last
        if last is None:
            return "unreadable" if self.problem else "empty"
        if last["event"] == "end":
            return "finished"
        if last["event"] == "stopped":
            return f"stopped ({last.get('signal') or last.get('reason', 'signal')})"
        live = liveness(self.heartbeat) if self.heartbeat else None
        if live in ("running", "running?"):
            quiet = silent_for(self.heartbeat, self.cfg.training.log_every if self.cfg else None)
            return live if quiet is None else f"{live} (no heartbeat for {format_duration(quiet)})"
        if live == "stopped" and self.heartbeat.get("state") == "stopped":  # its last word: why
            return f"stopped ({_brief(str(self.heartbeat.get('reason') or 'an error'))})"
        if live == "stopped":
            return "stopped (process died)"
        return "incomplete"  # killed without a chance to log it, by a version without status.json

    @property
    def params(self) -> int | None:
        return self.start.get("params")

    @property
    def tokens_per_step(self) -> int | None:
        return self.start.get("tokens_per_step")

    @property
    def tokens_seen(self) -> int:
        return self.metrics.tokens_seen

    @property
    def untrained_eval(self) -> dict | None:
        """The evaluation before the first update: the untrained model of the same shape and seed."""
        return self.metrics.untrained_eval

    @property
    def best_eval(self) -> dict | None:
        return self.metrics.best_eval

    @property
    def best_val_loss(self) -> float | None:
        best = self.best_eval
        return best["val_loss"] if best else None

    @property
    def no_best(self) -> str:
        """Why the run has no best validation loss: no evaluation after step 0 yet (a run stopped
        before its first: when that comes), or every one had non-finite weights."""
        if self.metrics.last_trained_eval is not None:
            return "not finite"
        if self.cfg is None:
            return "none yet"
        t = self.cfg.training
        return f"none yet (first at step {min(t.eval_every, t.max_steps):,})"

    @property
    def wall_seconds(self) -> float:
        """Time from the first to the last event, summed over the segments a resume separates."""
        return self.metrics.wall_seconds

    @property
    def median_tokens_per_sec(self) -> float | None:
        return self.metrics.steady_median(self.metrics.tokens_per_sec)

    @property
    def median_ms_per_step(self) -> float | None:
        return self.metrics.steady_median(self.metrics.ms_per_step)

    @property
    def preset(self) -> str:
        return guess_preset(self.cfg) if self.cfg else "?"


def read_run(path: str | Path, for_report: bool = False) -> Run:
    """A run folder as written by `trickster train`; a clear error if it is not one. `for_report`:
    gather what only the report shows too (the figures' curves, the medians)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"run folder {path} not found; pass a folder written by `trickster train`")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a run folder; pass a folder written by `trickster train`")
    if not (path / "metrics.jsonl").is_file():
        raise UserError(f"{path} is not a run folder (no metrics.jsonl); {_what_to_pass(path)}")
    return _read(path, for_report)


def _what_to_pass(path: Path) -> str:
    """The run folder a user meant: `trickster report runs` is the folder of runs `trickster runs`
    takes, and a checkpoint folder lies inside its run."""
    runs = sorted(p.name for p in path.iterdir() if p.is_dir() and (p / "metrics.jsonl").is_file())
    if runs:
        shown = ", ".join(runs[:5]) + (f" and {len(runs) - 5} more" if len(runs) > 5 else "")
        return f"it holds runs ({shown}): pass one of them, such as {path / runs[0]}"
    for up in ("..", "../.."):  # a checkpoint folder, or checkpoints/
        parent = Path(os.path.normpath(path / up))
        if (parent / "metrics.jsonl").is_file():
            return f"it lies inside the run folder {parent}: pass that one"
    return "pass a folder written by `trickster train`"


def find_runs(root: str | Path) -> list[Run]:
    """Every run folder directly in `root` (or `root` itself if it is one), sorted by name."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"folder {root} not found; pass the folder that holds your runs (default runs/)")
    if not root.is_dir():
        raise UserError(f"{root} is a file; pass the folder that holds your runs (default runs/)")
    if (root / "metrics.jsonl").is_file():
        return [_read(root)]
    folders = sorted(p for p in root.iterdir() if p.is_dir() and (p / "metrics.jsonl").is_file())
    runs = []
    for folder in folders:
        try:
            runs.append(_read(folder))
        except UserError as err:  # one damaged run does not hide the others
            runs.append(Run(folder, None, problem=str(err)))
    return runs


@functools.cache
def _preset_models() -> dict[str, dict]:
    return {name: load_config(preset=name).model.model_dump() for name in preset_names()}


def guess_preset(cfg: Config) -> str:
    """The preset whose model_config the run's matches (vocab_size: auto matches any size)."""
    model = cfg.model.model_dump()
    for name, preset in _preset_models().items():
        if preset["vocab_size"] == "auto":
            preset = {**preset, "vocab_size": model["vocab_size"]}
        if preset == model:
            return name
    return "custom"


def _read(path: Path, for_report: bool = False) -> Run:
    problems: list[str] = []
    metrics = Metrics.from_records(iter_metrics(path / "metrics.jsonl", problems), for_report)
    cfg = None
    if (path / "config.yaml").is_file():
        try:  # as a checkpoint's: a training setting saved before a limit does not hide the run
            cfg = read_saved(path / "config.yaml", "restore it from one of its checkpoints")
        except UserError as err:
            problems.append(str(err))
    else:
        problems.append("config.yaml is missing")
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    problem = "; ".join(problems) or None
    every = cfg.training.eval_every if cfg else None
    return Run(path, cfg, metrics, manifest, _checkpoints(path, every), problem, read_status(path))


def _checkpoints(run_dir: Path, eval_every: int | None) -> list[tuple[Path, run_checkpoints.RecordedLoss]]:
    """The complete checkpoints with their steps and val losses, their info.json read once, oldest
    first. One that a live run deletes while they are read (keep_last rotation, a rollback) is left
    out. `eval_every`: the run's, for an older info.json that does not say when it measured its loss."""
    found = []
    for path in (run_dir / "checkpoints").glob("*"):
        try:
            if run_checkpoints.is_complete(path):
                [(_, info)] = run_checkpoints.with_info([path])
                found.append((path, run_checkpoints.recorded_loss(path, info, eval_every)))
        except UserError:
            if path.exists():  # damaged, not deleted
                raise
    return sorted(found, key=lambda entry: (entry[1].step, entry[0].name))  # by step, then name


def format_runs(runs: list[Run]) -> list[str]:
    """The lines of `trickster runs`: one row per run, numbers aligned on the right. A `hellaswag`
    column (the last acc_norm scored during training) is there when a run has one."""
    header = ("run", "preset", "parameters", "steps", "best val loss", "tokens seen", "wall time", "status")
    scored = any(run.metrics.last_hellaswag for run in runs)
    rows = []
    for run in runs:
        steps = f"{run.step:,}" + (f"/{run.max_steps:,}" if run.max_steps else "")
        best, last = run.best_val_loss, run.metrics.last_hellaswag
        rows.append(
            (
                run.name,
                run.preset,
                f"{run.params:,}" if run.params else "?",
                steps,
                f"{best:.4f}" if best is not None else run.no_best,
                *([f"{last['acc_norm']:.4f}" if last else "-"] if scored else []),
                f"{run.tokens_seen:,}",
                format_duration(run.wall_seconds),
                run.status,
            )
        )
    header = (*header[:5], "hellaswag", *header[5:]) if scored else header
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    right = set(range(2, len(header) - 1))  # numbers line up on the right
    lines = []
    for row in [header, *rows]:
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
