"""Who trains in a run folder: the process that holds it (`claimed`, an exclusive lock on
RUN_DIR/.lock, a file naming the process), the line that refuses a second one, whether a run
already uses a folder (run_dir_in_use, fresh_run_dir), and the fix for a failed write there."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path

from trickster import run_checkpoints
from trickster.atomic import still_at
from trickster.errors import UserError, disk_errors, write_fix
from trickster.observe.events import RESUME_FIX

try:
    import fcntl
except ImportError:  # native Windows has no flock; WSL2 has
    fcntl = None

LOCK = ".lock"  # RUN_DIR/.lock: held by the process that trains there (claimed)
WRITE_FIX = write_fix("choose another --out")  # a new run's folder (run_folder_fix)


def run_folder_fix(run_dir: Path) -> Callable[[OSError], str]:
    """The fix for a failed write in the run folder (its lock, its files), picked when one fails:
    once the folder holds a checkpoint to continue from, continue with --resume after the fix, as
    the run's metrics and checkpoints say (observe.events.RESUME_FIX); another --out would hold
    none of its checkpoints. Before its first, or another --out (WRITE_FIX)."""

    def fix(err: OSError) -> str:
        return (RESUME_FIX if _holds_a_checkpoint(run_dir) else WRITE_FIX)(err)

    return fix


def _holds_a_checkpoint(run_dir: Path) -> bool:
    """Whether `run_dir` holds a checkpoint to continue from: a failed write or lock there is then
    fixed in place and the run continued with --resume, not moved to another --out."""
    try:
        return bool(run_checkpoints.continuable(run_dir))
    except OSError:  # a folder that cannot even be listed holds nothing to resume from here
        return False


def run_dir_in_use(run_dir: Path) -> bool:
    """A run only starts (without --resume) in a folder that is missing or empty. An empty
    checkpoints/ and the lock file alone are what a start killed before writing anything leaves
    (claimed and open_run_dir make them first): the next start may use the folder."""
    if not run_dir.is_dir():
        return False
    return any(_written(p) for p in run_dir.iterdir())


def fresh_run_dir(out: Path) -> Path:
    """`out`, or `out-2`, `out-3`, ... if a run (or a file) already uses it (quickstart's run)."""
    run_dir, suffix = out, 2
    while run_dir_in_use(run_dir) or run_dir.is_file():
        run_dir, suffix = out.with_name(f"{out.name}-{suffix}"), suffix + 1
    return run_dir


def _written(path: Path) -> bool:
    if path.name == LOCK and path.is_file():
        return False
    return path.name != "checkpoints" or not path.is_dir() or any(path.iterdir())


@contextlib.contextmanager
def claimed(run_dir: Path, resume: bool | str = False):
    """Train in `run_dir` alone: hold an exclusive lock on RUN_DIR/.lock for the block. A second
    process that tries to train there meanwhile (with or without --resume) is refused with one line
    naming the first one (`resume`: the start is one, which must continue here: _in_use). The
    kernel drops the lock when its holder ends, however it ends (SIGKILL included), so a dead run
    never blocks its resume. The file is removed when the block ends, and so are the run folder
    and its checkpoints/ if this start made them and they are still empty (a start refused before
    writing anything leaves nothing new; what was there before stays)."""
    refuse_a_file(run_dir)
    path, created = run_dir / LOCK, not run_dir.exists()
    with _locked(path, run_dir, resume) as lock:
        checkpoints_made = not (run_dir / "checkpoints").exists()  # seen by the lock's holder
        lock.truncate(0)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # still locked: see _locked
            for made, folder in ((checkpoints_made, run_dir / "checkpoints"), (created, run_dir)):
                if made:
                    with contextlib.suppress(OSError):  # not empty: rmdir removes only an empty folder
                        folder.rmdir()


@contextlib.contextmanager
def _locked(path: Path, run_dir: Path, resume: bool | str):
    """RUN_DIR/.lock, open and locked. Its holder removes it before it lets go, so a process that
    locks a file no longer at `path` (removed while it waited) tries again with the new one."""
    # not atomic.held (a lock on a folder, taken unguarded where none can be): the file names its holder
    make_folder(run_dir, run_dir)
    while True:
        with disk_errors(f"run folder {run_dir}", run_folder_fix(run_dir)):
            lock = open(path, "a+", encoding="utf-8")
        with lock:
            _lock(lock, run_dir, resume)
            if still_at(lock.fileno(), path):
                yield lock
                return


def _lock(lock, run_dir: Path, resume: bool | str) -> None:
    if fcntl is None:
        raise UserError(
            "training needs a POSIX system to lock its run folder (Linux, macOS, or WSL2 on "
            "Windows); native Windows is not supported"
        )
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):  # ENOLCK: NFS without its lock service
            raise UserError(
                f"cannot lock run folder {run_dir} ({err.strerror}); {_unlockable_fix(run_dir)}"
            ) from None
        lock.seek(0)
        raise UserError(_in_use(run_dir, lock.read().strip(), resume)) from None


def _in_use(run_dir: Path, pid: str, resume: bool | str) -> str:
    """The line that refuses to train in `run_dir` while the process `pid` (as its lock file records
    it; anything else: unknown) holds it. A new run may go to another --out; a resume may not (its
    checkpoints are here, and a copy of the folder would fork the run), so it waits for the holder."""
    holder = f"process {pid}" if pid.isdigit() else "another process"
    if not resume:
        return (
            f"{run_dir} is in use: {holder} is training there; wait for it to end (or stop it), "
            "or choose another --out (nothing was changed)"
        )
    # SIGTERM stops a trickster run after its step, with a checkpoint saved (signals.py)
    stop = f"stop it with kill {pid} (it saves a checkpoint as it stops)" if pid.isdigit() else "stop it"
    return (
        f"{run_dir} is in use: {holder} is training there; a resume continues the run in this folder, "
        f"so wait for it to end, or {stop}, then resume again (nothing was changed)"
    )


def _unlockable_fix(run_dir: Path) -> str:
    """What to do where the run folder's file system refuses the lock: another --out holds none of
    the checkpoints of a run to continue, so the folder itself goes where locks work."""
    where = "a file system that locks files (a local disk)"
    if not _holds_a_checkpoint(run_dir):
        return f"choose another --out, on {where}"
    return (
        f"copy the folder to {where}, then continue the copy with --resume --out COPY (nothing was changed)"
    )


def refuse_a_file(run_dir: Path) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"logging_config.output_dir {run_dir} is a file; choose a folder path")


def make_folder(folder: Path, run_dir: Path) -> None:
    """`folder` (the run folder or one inside it), with its parents; one line if it cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        fix = run_folder_fix(run_dir)(err)
        raise UserError(f"cannot create run folder {run_dir} ({err.strerror}); {fix}") from None
