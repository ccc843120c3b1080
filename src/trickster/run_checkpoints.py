"""Which complete checkpoints a run folder holds, by their files alone, and what a failed write of
the run tells the user to do: continue with --resume once there is one, else run the command again
with resume=auto. The training loop (train/checkpoint.py) and the metrics it writes
(observe/events.py) say the same, and observe/ imports nothing of train/: both take it from here."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from trickster.errors import write_fix

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


def run_write_fix(run_dir: Path, resume_fix: Callable[[OSError], str]) -> Callable[[OSError], str]:
    """The fix for a failed write of the run in `run_dir`, looked at only when a write fails:
    `resume_fix` (--resume) once the run has a checkpoint to continue from (a numbered one or
    final; their info.json is not read, so one damaged elsewhere neither stops the write nor hides
    its own error), else the command again with resume=auto."""

    def fix(err: OSError) -> str:
        continuable = numbered(run_dir) or is_complete(Path(run_dir) / "checkpoints" / "final")
        return (resume_fix if continuable else FIRST_SAVE_FIX)(err)

    return fix
