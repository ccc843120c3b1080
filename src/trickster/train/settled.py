"""A checkpoint read whole while a training run may replace it.

A run writes a new `best` (and `final`) by atomic.replace_dir's two renames. A reader that resolved
`runs/x` to `runs/x/checkpoints/best` and read its info.json before the swap, and its weights after,
saw two checkpoints: their checksums disagree, and it said the file was damaged on disk. A read is
made again while the folder it read was replaced meanwhile, up to TRIES reads: `generate` and the
other commands, a fine-tune's init_from, and each load of `trickster serve` read this way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from trickster.atomic import being_replaced
from trickster.run_checkpoints import WEIGHTS

WAIT = 2.0  # seconds: a replace is a moment between two renames; a writer that stops there is dead
# reads, not seconds: a large model read from a slow disk takes longer than any time limit, and is
# as likely to meet a save as a small one; a run that replaces best during five reads in a row
# saves faster than the checkpoint can be read
TRIES = 5
Loaded = TypeVar("Loaded")


def identity(path: Path) -> tuple[int, ...] | None:
    """Which checkpoint is at `path`, told apart without reading it: the folder's and its weights'
    identity (a new checkpoint is a new folder renamed into place, with new files: the folder's inode
    alone is not enough, as ext4 gives the inode of the folder a save deleted to the next one it
    makes). None when either is missing."""
    try:
        folder, weights = path.stat(), (path / WEIGHTS).stat()
    except OSError:
        return None
    return folder.st_dev, folder.st_ino, weights.st_ino, weights.st_mtime_ns


def read_settled(
    target: Path,
    resolve: Callable[[Path], Path],
    read: Callable[[Path], Loaded],
    wait: float = WAIT,
) -> Loaded:
    """read(resolve(target)), all of it from one checkpoint. Made again when the folder read was
    replaced while it was read (its read failed, or succeeded on parts of two checkpoints), or was
    missing as a replace began after the wait for one, up to TRIES reads however long each takes;
    a failure of a folder nobody replaces is raised at once. A replace under way is waited for up
    to `wait` seconds: a writer that stays between its renames longer is stopped (or dead)."""
    for tried in range(1, TRIES + 1):
        last = tried == TRIES
        whole = _wait_for(target, time.monotonic() + wait)
        path, seen = None, identity(target)  # a checkpoint's own (a run folder's is None)
        try:
            path = resolve(target)
            before = identity(path)
            loaded = read(path)
        except Exception:
            if path is None:  # resolve failed: in a replace that began after the wait found none?
                moved = whole and (_in_replace(target) or identity(target) != seen)
            else:
                moved = _replaced(path, before)
            if not moved or last:
                raise
        else:
            if not _replaced(path, before) or last:
                return loaded
        time.sleep(0.01)
    raise AssertionError("unreachable: the last read returns or raises")


def _replaced(path: Path, before: tuple[int, ...] | None) -> bool:
    return being_replaced(path) or identity(path) != before


def _in_replace(target: Path) -> bool:
    """Whether `target` (a checkpoint) or its run's `best` is between a replace's two renames: a run
    folder would otherwise resolve to its newest numbered checkpoint, a checkpoint to 'not found'."""
    return being_replaced(target) or being_replaced(target / "checkpoints" / "best")


def _wait_for(target: Path, deadline: float) -> bool:
    """Wait while `target` is in a replace (_in_replace), until `deadline`. Whether it is whole."""
    while _in_replace(target):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True
