"""The checkpoint a path a user gives names: a checkpoint folder as it is, a run folder's `best` or
else its newest complete checkpoint. Anything else (a Hugging Face folder, a file, a run's
checkpoints/ folder, prepared data, a folder of runs) is refused in one line that says what to pass.
"""

from __future__ import annotations

from pathlib import Path

from trickster import run_checkpoints
from trickster.errors import UserError, did_you_mean
from trickster.run_checkpoints import COMPLETE, WEIGHTS


def resolve(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (its `best`, else its newest complete checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise UserError(_not_found(path))
    if (path / "config.json").is_file() and not (path / COMPLETE).exists():  # save_pretrained()'s
        raise UserError(
            f"{path} is a Hugging Face model folder, not a run or checkpoint; bring it in first: "
            f"trickster import hf {path} --out runs/NAME"
        )
    if (path / WEIGHTS).exists() or (path / COMPLETE).exists():
        if not (path / COMPLETE).is_file():
            raise UserError(f"checkpoint {path} is incomplete (its write was interrupted); use another one")
        if not run_checkpoints.is_complete(path):  # marked complete, then its weights were moved or deleted
            raise UserError(f"checkpoint {path} has no {WEIGHTS} (moved or deleted); use another checkpoint")
        return path
    best = path / "checkpoints" / "best"
    if run_checkpoints.is_complete(best):
        return best
    found = run_checkpoints.latest(path)
    if found is None:
        raise UserError(_no_checkpoint(path))
    return found


def _no_checkpoint(path: Path) -> str:
    """Why `path` gives no checkpoint, for what a user passes instead of a run or checkpoint folder."""
    if path.is_file():
        holder = path.parent
        if (holder / WEIGHTS).exists() or (holder / COMPLETE).exists() or (holder / "checkpoints").is_dir():
            return f"{path} is a file; pass the folder that holds it ({holder}) or its run folder"
        return (
            f"{path} is a file, not a run or checkpoint; pass a run folder (runs/NAME) or a checkpoint folder"
        )
    if path.name == "checkpoints" and (path.parent / "config.yaml").is_file():
        one = run_checkpoints.latest(path.parent) or path / "best"
        return f"{path} holds checkpoints: pass the run folder {path.parent} or one of them, such as {one}"
    if (path / "meta.json").is_file():
        return f"{path} is a prepared data folder, not a run; pass a run folder (runs/NAME) or a checkpoint"
    runs = [p for p in path.iterdir() if (p / "checkpoints").is_dir()] if path.is_dir() else []
    if runs:  # runs/ itself, the folder of run folders: one with a checkpoint named first
        one = min(runs, key=lambda run: (run_checkpoints.latest(run) is None, run.name))
        return f"{path} holds runs, not checkpoints: pass one of them, such as {one}"
    return f"no complete checkpoint in {path}; train first, or pass a checkpoint folder"


def _not_found(path: Path) -> str:
    """`path` is not there: in a run's checkpoints/ (`step_60` for step_000060), the checkpoints
    saved there; else the closest run or checkpoint beside it, if one is close (`runs/tny`)."""
    folder = path.parent
    try:
        beside = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError:  # a folder this user may not list
        beside = []
    saved = [p.name for p in beside if run_checkpoints.is_complete(p)]
    prefix = "" if path.parent == Path(path.name).parent else f"{folder}/"  # as typed: no ./ added
    if folder.name == "checkpoints" and saved:
        return (
            f"{path} not found{did_you_mean(path.name, saved, prefix=prefix)}; {folder} holds "
            f"{', '.join(saved)}: pass one of them, or the run folder {folder.parent} (its best)"
        )
    runs = [p.name for p in beside if (p / "checkpoints").is_dir()] + saved
    hint = did_you_mean(path.name, runs, prefix=prefix)
    return f"{path} not found{hint}; pass a run folder (runs/NAME) or a checkpoint folder"
