"""Read a run folder after the fact: its config, metrics.jsonl, manifest and checkpoints, and the
figures `trickster runs` and `trickster report` show (steps, best validation loss, wall time...).

Nothing here runs a model; a run that is still training can be read at any time.
"""

from __future__ import annotations

import functools
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from trickster.config import Config, load_config, preset_names
from trickster.errors import UserError
from trickster.observe.events import read_metrics
from trickster.observe.status import liveness, read_status
from trickster.train import checkpoint as ckpt
from trickster.units import format_duration


@dataclass
class Run:
    path: Path
    cfg: Config | None  # None when config.yaml is missing or damaged
    records: list[dict]  # metrics.jsonl, one dict per event
    manifest: dict = field(default_factory=dict)
    checkpoints: list[tuple[Path, int]] = field(default_factory=list)  # complete ones, and their steps
    problem: str | None = None  # why part of the folder could not be read
    heartbeat: dict | None = None  # status.json, written by the training process while it runs

    @property
    def name(self) -> str:
        return self.path.resolve().name

    def events(self, kind: str) -> list[dict]:
        return [r for r in self.records if r["event"] == kind]

    @property
    def start(self) -> dict:
        return next(iter(self.events("start")), {})

    @property
    def step(self) -> int:
        return max((r["step"] for r in self.records), default=0)

    @property
    def max_steps(self) -> int | None:
        return self.cfg.training.max_steps if self.cfg else None

    @property
    def status(self) -> str:
        if not self.records:
            return "unreadable" if self.problem else "empty"
        last = self.records[-1]
        if last["event"] == "end":
            return "finished"
        if last["event"] == "stopped":
            return f"stopped ({last.get('signal') or last.get('reason', 'signal')})"
        live = liveness(self.heartbeat) if self.heartbeat else None
        if live in ("running", "running?"):
            return live
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
        return next((r["tokens_seen"] for r in reversed(self.records) if "tokens_seen" in r), 0)

    @property
    def untrained_eval(self) -> dict | None:
        """The evaluation before the first update: the untrained model of the same shape and seed."""
        return next((r for r in self.events("eval") if r["step"] == 0), None)

    @property
    def best_eval(self) -> dict | None:
        trained = [r for r in self.events("eval") if r["step"] > 0 and r.get("val_loss") is not None]
        return min(trained, key=lambda r: r["val_loss"], default=None)

    @property
    def best_val_loss(self) -> float | None:
        best = self.best_eval
        return best["val_loss"] if best else None

    @property
    def wall_seconds(self) -> float:
        """Time from the first to the last event, summed over the segments a resume separates."""
        total, first, last = 0.0, None, None
        for r in self.records:
            if r["event"] == "resume" and first is not None:
                total += last - first
                first = None
            if first is None:
                first = r["time"]
            last = r["time"]
        return total + (last - first if first is not None else 0.0)

    @property
    def median_tokens_per_sec(self) -> float | None:
        return self._steady_median("tokens_per_sec")

    @property
    def median_ms_per_step(self) -> float | None:
        return self._steady_median("ms_per_step")

    def _steady_median(self, key: str) -> float | None:
        """The median of a train event's figure. The first interval includes warm-up (and the
        first evaluation): it is left out when there are others."""
        values = [r[key] for r in self.events("train")]
        values = values[1:] or values
        return statistics.median(values) if values else None

    @property
    def preset(self) -> str:
        return guess_preset(self.cfg) if self.cfg else "?"


def read_run(path: str | Path) -> Run:
    """A run folder as written by `trickster train`; a clear error if it is not one."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"run folder {path} not found; pass a folder written by `trickster train`")
    if not path.is_dir():
        raise UserError(f"{path} is a file, not a run folder; pass a folder written by `trickster train`")
    if not (path / "metrics.jsonl").is_file():
        raise UserError(
            f"{path} is not a run folder (no metrics.jsonl); pass a folder written by `trickster train`"
        )
    return _read(path)


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
            runs.append(Run(folder, None, [], problem=str(err)))
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


def _read(path: Path) -> Run:
    problems: list[str] = []
    records = read_metrics(path / "metrics.jsonl", problems)
    cfg = None
    if (path / "config.yaml").is_file():
        try:
            cfg = load_config(path / "config.yaml")
        except UserError as err:
            problems.append(str(err))
    else:
        problems.append("config.yaml is missing")
    try:
        manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        manifest = {}
    problem = "; ".join(problems) or None
    return Run(path, cfg, records, manifest, _checkpoints(path), problem, read_status(path))


def _checkpoints(run_dir: Path) -> list[tuple[Path, int]]:
    """The complete checkpoints and their steps, read once, oldest first. One that a live run
    deletes while they are read (keep_last rotation, a rollback) is left out."""
    found = []
    for path in (run_dir / "checkpoints").glob("*"):
        try:
            if ckpt.is_complete(path):
                found.append((path, ckpt.checkpoint_step(path)))
        except UserError:
            if path.exists():  # damaged, not deleted
                raise
    return sorted(found, key=lambda found: (found[1], found[0].name))


def format_runs(runs: list[Run]) -> list[str]:
    """The lines of `trickster runs`: one row per run, numbers aligned on the right."""
    header = ("run", "preset", "parameters", "steps", "best val loss", "tokens seen", "wall time", "status")
    rows = []
    for run in runs:
        steps = f"{run.step:,}" + (f"/{run.max_steps:,}" if run.max_steps else "")
        best = run.best_val_loss
        rows.append(
            (
                run.name,
                run.preset,
                f"{run.params:,}" if run.params else "?",
                steps,
                f"{best:.4f}" if best is not None else "-",
                f"{run.tokens_seen:,}",
                format_duration(run.wall_seconds),
                run.status,
            )
        )
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    right = {2, 3, 4, 5, 6}  # numbers line up on the right
    lines = []
    for row in [header, *rows]:
        cells = [
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(cells).rstrip())
    return lines
