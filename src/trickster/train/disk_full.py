"""A full disk (or a used-up quota) while a run trains: it ends in one line that says so, names the
file it could not write and the checkpoint it kept whole, and gives the command that continues from
there once there is room; `stopped` with the reason `disk-full` goes to status.json (rewritten in
place if need be: observe/status.py) and, if there is room for it, to metrics.jsonl.

Each write of the run (metrics.jsonl and its copies, a checkpoint, status.json) turns a full disk
into errors.DiskFull where it fails, with its errno: a full disk or a quota is told by that, not by
the system's words (another language's, maybe). The one text read for it is safetensors' message,
which holds the errno as "(os error N)" (tensor_files; torch.save's RuntimeError has none, so
tensor_files keeps the OSError of the write itself). This words it for the run. Before, the line
was the failed write's own, and status.json, whose new copy found no room either, kept saying
`running`: `trickster runs` showed the run as `stopped (process died)`."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from typing import TYPE_CHECKING

from trickster import run_checkpoints
from trickster.errors import DiskFull, UserError
from trickster.run_checkpoints import RUN_AGAIN
from trickster.train.recovery import write_stopped
from trickster.train.signals import continue_command

if TYPE_CHECKING:
    from trickster.train.loop import Trainer

REASON = "disk-full"


class RunOutOfDisk(UserError):
    """The line a run ends with on a full disk; `stop_reason`, the word status.json records."""

    stop_reason = REASON


@contextlib.contextmanager
def ends_run(trainer: Trainer) -> Iterator[None]:
    try:
        yield
    except DiskFull as full:
        raise out_of_disk(trainer, full) from None


def out_of_disk(trainer: Trainer, full: DiskFull) -> RunOutOfDisk:
    """The `stopped` event if there is room for it, and the run's one line."""
    run_dir = trainer.run_dir
    trainer.heartbeat.step = trainer.state.step  # its last beat was the last log line's
    with contextlib.suppress(UserError, OSError):  # the event needs room too
        write_stopped(trainer, reason=REASON, file=full.what)
    good = run_checkpoints.latest(run_dir)
    full_what = "the disk quota is used up" if full.errno == errno.EDQUOT else "the disk is full"
    head = f"{full_what} at step {trainer.state.step}: could not write {full.what} ({full.reason})"
    if good is None:
        none = run_checkpoints.none_saved(run_dir)
        return RunOutOfDisk(f"{head}; {none}: free disk space, then {RUN_AGAIN}")
    return RunOutOfDisk(
        f"{head}; free disk space, then continue from checkpoints/{good.name} (step "
        f"{run_checkpoints.checkpoint_step(good)}, kept whole) with: {continue_command(run_dir, trainer.job)}"
    )
