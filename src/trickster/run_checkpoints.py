"""A run folder's checkpoints/ as a list: which checkpoints are complete (by their files), the step
each was saved at (its info.json), the newest, the oldest pruned, and what a killed writer left tidied.
Also what a failed write of the run tells the user to do: continue with --resume once there is a
checkpoint, else run the command again with resume=auto. The trainer (train/) and the metrics it
writes (observe/events.py) both take these from here: observe/ imports nothing of train/.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trickster import atomic
from trickster.errors import UserError, write_fix

COMPLETE = "COMPLETE"
WEIGHTS = "model.safetensors"
STEP_DIR = re.compile(r"^step_(\d+)$")
# how a run goes on before its first checkpoint: --resume finds nothing there, and the same command
# alone is refused, the run folder being no longer empty
START_AFRESH = "training_config.resume=auto (it starts afresh in the same run folder)"
RUN_AGAIN = f"run the command again with {START_AFRESH}"
FIRST_SAVE_FIX = write_fix(then=RUN_AGAIN)


def not_empty_fix(run_dir: Path) -> str:
    """What a start without --resume, refused in a folder that is not empty and holds no checkpoint
    to continue, says to do. A run stopped before its first save (killed, or a fine-tune shorter
    than save_every, which saves only at its end) has written its metrics.jsonl: --resume finds
    nothing there, and resume=auto starts it afresh (or continues it, if tidying the folder puts
    back a checkpoint a kill left aside). Another folder is not one to train in."""
    if (run_dir / "metrics.jsonl").is_file():
        return f"it holds a run that saved no checkpoint to continue from; {RUN_AGAIN}, or choose a new --out"
    return "choose a new folder with --out"


def is_complete(path: Path) -> bool:
    return (path / COMPLETE).is_file() and (path / WEIGHTS).is_file()


def numbered(run_dir: str | Path) -> list[Path]:
    """Complete numbered checkpoints, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if STEP_DIR.match(p.name) and is_complete(p)]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def continuable(run_dir: str | Path) -> list[Path]:
    """The checkpoints a run continues from: the complete numbered ones, oldest first, then `final`
    if complete; never `best` (an evaluation's weights, see none_saved)."""
    final = Path(run_dir) / "checkpoints" / "final"
    return numbered(run_dir) + ([final] if is_complete(final) else [])


def read_info(path: Path, fix: str = "use another checkpoint") -> dict:
    """info.json: a JSON object with at least the integer `step` it was saved at."""
    try:
        info = json.loads((path / "info.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        info = None  # missing, a folder, not UTF-8, not JSON
    if not isinstance(info, dict) or type(info.get("step")) is not int:
        raise UserError(f"{path / 'info.json'} is missing or damaged; {fix}")
    return info


@dataclass(frozen=True)
class RecordedLoss:
    """A checkpoint's validation loss as its info.json records it, and when it was measured: a
    checkpoint saved between evaluations holds the loss of the one before (state.last_val_loss),
    which is never to be shown as its own."""

    loss: float | None  # None: no evaluation yet, or one of non-finite weights
    step: int  # the checkpoint's
    measured_at: int | None  # the step of the evaluation; None: never, or an older version's unknown one

    @property
    def at_this_step(self) -> bool:
        return self.measured_at == self.step

    def shown(self) -> str:
        """'1.8312' measured at this step; '1.9020 measured at step 20' before; 'not measured at this
        step' when no earlier loss is known either; 'n/a' before any evaluation or for weights that
        were not finite."""
        if self.at_this_step or (self.loss is None and self.measured_at is None):
            return "n/a" if self.loss is None else f"{self.loss:.4f}"
        if self.loss is None:
            return "not measured at this step"
        when = "an earlier step" if self.measured_at is None else f"step {self.measured_at}"
        return f"{self.loss:.4f} measured at {when}"


def recorded_loss(path: Path, info: dict, eval_every: int | None = None) -> RecordedLoss:
    """The validation loss of the checkpoint at `path` whose info.json is `info` (read_info), for
    every reader that shows or uses it. info.json records the step it was measured at (val_loss_step)
    since 2026-12-02; for an older one it is inferred: `best` is saved after its evaluation, `final`
    and one at a multiple of `eval_every` (the checkpoint's config, when the caller has it) were
    evaluated at their step; any other holds an earlier evaluation's loss, of a step not recorded."""
    step, loss = info["step"], info.get("val_loss")
    if "val_loss_step" in info:
        return RecordedLoss(loss, step, info["val_loss_step"])
    evaluated = path.name in ("best", "final") or (eval_every is not None and step % eval_every == 0)
    return RecordedLoss(loss, step, step if evaluated and loss is not None else None)


def checkpoint_step(path: Path) -> int:
    """The step of one of a run's checkpoints (to pick the newest, to list them)."""
    return _listed_info(path)["step"]


def _listed_info(path: Path) -> dict:
    """The info.json of one of a run's checkpoints as a listing reads it: damaged, it is named as
    the one to move aside."""
    return read_info(path, fix=f"move {path} out of {path.parent} to use the run's others")


def latest(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step (numbered ones and `final`, which wins a tie)."""
    found = newest(run_dir)
    return None if found is None else found[0]


def newest(run_dir: str | Path) -> tuple[Path, dict] | None:
    """`latest` and its info.json, each candidate's read once (as checkpoint_step reads it)."""
    return max(with_info(continuable(run_dir)), key=_recency, default=None)


def with_info(checkpoints: list[Path], damaged_left_out: bool = False) -> list[tuple[Path, dict]]:
    """Each of a run's `checkpoints` with its info.json, read once for all that a listing needs of
    it (its step, the sums saved with it): damaged, it is named as the one to move aside, or with
    `damaged_left_out`, left out."""
    listed = []
    for path in checkpoints:
        try:
            listed.append((path, _listed_info(path)))
        except UserError:
            if not damaged_left_out:
                raise
    return listed


def newest_first(listed: list[tuple[Path, dict]]) -> list[tuple[Path, dict]]:
    """with_info's checkpoints by step, newest first; `final` before a numbered one of its step."""
    return sorted(listed, key=_recency, reverse=True)


def _recency(found: tuple[Path, dict]) -> tuple[int, bool]:
    return found[1]["step"], found[0].name == "final"


def none_saved(run_dir: str | Path, otherwise: str = "no checkpoint was saved yet") -> str:
    """Why a run folder has no checkpoint to continue from, for the lines that say so: a `best`
    saved before the first numbered checkpoint (eval_every below save_every) is named, as a run
    never continues from `best` (an evaluation's weights; a spike's rollback must go back further)."""
    if is_complete(Path(run_dir) / "checkpoints" / "best"):
        return (
            "no checkpoint to continue from was saved yet (checkpoints/best holds the best weights "
            "so far, for generate)"
        )
    return otherwise


def prune(run_dir: str | Path, keep_last: int | None) -> list[Path]:
    """Delete all but the newest `keep_last` numbered checkpoints. `best` and `final` are separate
    folders, never touched here, so rotation cannot remove the best weights."""
    if keep_last is None:
        return []
    doomed = numbered(run_dir)[:-keep_last]
    for path in doomed:
        remove(path)
    return doomed


def remove(path: Path) -> None:
    """Delete a checkpoint folder. It is renamed first, to a hidden name that `recover` deletes: a
    kill halfway through leaves neither a half checkpoint nor one that would be put back (as a
    replaced folder, `.old-`, is)."""
    trash = path.parent / f".{path.name}.deleted-{os.getpid()}"
    path.rename(trash)
    shutil.rmtree(trash)


def recover(run_dir: str | Path) -> list[str]:
    """Tidy what a killed writer left in checkpoints/, before a run continues there.

    A kill between the two renames of `replace_dir` leaves `best` (or `final`) only under its old
    hidden name: put it back. Half-written staging folders and half-deleted checkpoints of dead
    processes are deleted, and so are the files a killed `update_info` left inside a checkpoint.
    Returns a line for each repair, for the log.
    """
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    replaced = sorted({match["name"] for _, match in atomic.leftovers(folder) if match["kind"] == "old"})
    repairs = [
        f"restored checkpoints/{name} from an interrupted replacement"
        for name in replaced
        if atomic.restore_replaced(folder / name, complete=is_complete)
    ]
    for hidden, match in atomic.leftovers(folder):  # what is left: no checkpoint's only copy
        shutil.rmtree(hidden, ignore_errors=True)
        what = "deletion" if match["kind"] == "deleted" else "write"
        repairs.append(f"removed {hidden.name}, left by an interrupted {what}")
    for checkpoint in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in atomic.remove_leftovers(checkpoint):
            repairs.append(f"removed {checkpoint.name}/{path.name}, left by an interrupted write")
    return repairs


def run_write_fix(run_dir: Path, resume_fix: Callable[[OSError], str]) -> Callable[[OSError], str]:
    """The fix for a failed write of the run in `run_dir`, looked at only when a write fails:
    `resume_fix` (--resume) once the run has a checkpoint to continue from (a numbered one or
    final; their info.json is not read, so one damaged elsewhere neither stops the write nor hides
    its own error), else the command again with resume=auto."""

    def fix(err: OSError) -> str:
        return (resume_fix if continuable(run_dir) else FIRST_SAVE_FIX)(err)

    return fix
