"""Folders (and pages) that appear whole or not at all: build under a temporary name, then rename
into place.

The temporary names are `.NAME.tmp-PID` (being written) and `.NAME.old-PID` (being replaced), PID
the writer's process id. A writer killed mid-write leaves one behind; `leftovers` finds those whose
writer no longer runs, so that the next writer may delete them (never one a live process writes).

Also here, as every writer of such folders needs them: `held`, a lock on a folder that one
process at a time may fill (`still_at` checks the lock is on the folder still at its name),
`place_file`, which puts a finished file in place without replacing one that appeared meanwhile,
and `process_exists`, which tells a dead writer's leftovers from a live one's.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import re
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

from trickster.errors import UserError, disk_errors, write_error, write_fix

try:
    import fcntl
except ImportError:  # native Windows has no flock
    fcntl = None

LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|deleted)-(?P<pid>\d+)$")


def leftovers(folder: Path, of: str | None = None) -> list[tuple[Path, re.Match]]:
    """The temporary files and folders in `folder` (of the target named `of`, or of any) whose
    writer is dead, with their name's parts (name, kind, pid), in name order.

    A process id is checked on this machine only: a run folder shared between machines must not
    be written from two at once (the run folder's lock sees to it for training). This process's
    own id counts as dead: callers look while no write of theirs is under way, so a name bearing it
    was left by an earlier process with the same id (a container's processes get the same ids at
    each start)."""
    pattern = f".{glob.escape(of)}.*-*" if of else ".*"
    found = []
    for path in sorted(folder.glob(pattern)):
        match = LEFTOVER.match(path.name)
        if (
            match
            and (of is None or match["name"] == of)
            and (int(match["pid"]) == os.getpid() or not process_exists(int(match["pid"])))
        ):
            found.append((path, match))
    return found


def remove_leftovers(folder: Path, of: str | None = None) -> list[Path]:
    """Delete what `leftovers` finds (in `folder`, of the target `of` or of any); returns what
    went. An old copy whose target is missing is kept: it is the only copy (run_checkpoints.recover
    puts such a checkpoint back). One that cannot be deleted stays, without an error."""
    removed = []
    for path, match in leftovers(folder, of):
        if match["kind"] == "old" and not (folder / match["name"]).exists():
            continue
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        removed.append(path)
    return removed


def process_exists(pid) -> bool:
    """Whether a process of this id runs on this machine (one of another user's counts; an id
    that cannot be checked counts too, as not known to be dead)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    if os.name == "nt":  # signal 0 is CTRL_C_EVENT there: it would interrupt, not check
        return True
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # OverflowError: no id this system can have
        return False
    except OSError:  # EPERM: another user's process
        return True
    return True


@contextlib.contextmanager
def held(folder: Path, busy: str, fix: str, create: bool = True):
    """Hold `folder` (made if missing, when `create`) for this process for the block; another
    process that tries meanwhile gets one line, `busy`. The lock is the kernel's, on the folder
    itself, so it goes when its holder ends, however it ends (SIGKILL included); it stays with the
    folder if the holder renames it. Where the file system cannot lock, the block runs unguarded: a
    preparation ran without the lock before it existed, and still does there. The block gets True
    when it holds the lock, False when it runs unguarded (or, without `create`, the folder is gone):
    only a holder may take for certain that nobody else writes the folder.
    A folder this user cannot make or open (another user's) is one line ending with `fix`."""
    # not run_lock.claimed's lock file holding the PID: a file in the folder would be renamed with it
    while True:
        try:
            if create:
                folder.mkdir(parents=True, exist_ok=True)
            fd = None if fcntl is None else os.open(folder, os.O_RDONLY)
        except FileNotFoundError:
            if create:
                continue  # removed between the two calls (a spent DIR.partial deleted): make it again
            fd = None  # gone: nothing to hold
        except OSError as err:
            raise UserError(f"cannot open {folder} ({err.strerror or err}); {fix}") from None
        if fd is None:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
            except BlockingIOError:
                raise UserError(busy) from None
            except OSError:
                locked = False
            if still_at(fd, folder):  # not one its holder renamed away while we opened it
                yield locked
                return
        finally:
            os.close(fd)


def still_at(fd: int, path: Path) -> bool:
    """Whether the file or folder open as `fd` is still the one at `path` (a lock taken on one that
    was renamed or removed meanwhile guards nothing)."""
    try:
        return os.path.samestat(os.fstat(fd), path.stat())
    except FileNotFoundError:
        return False


def staging_dir(target: Path) -> Path:
    """A fresh empty folder beside `target` (same file system, so the final rename is atomic)."""
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def restore_replaced(target: Path, complete: Callable[[Path], bool] | None = None) -> bool:
    """Put back a folder that a kill between replace_dir's two renames left only under its old
    hidden name, when its writer is dead (and the copy is `complete`, if that check is given);
    True if one was put back."""
    if target.exists():
        return False
    old = [path for path, match in leftovers(target.parent, target.name) if match["kind"] == "old"]
    old = [path for path in old if complete is None or complete(path)]
    if old:
        old[-1].rename(target)
    return bool(old)


def being_replaced(target: Path) -> bool:
    """Whether `target` is between the two renames of a `replace_dir` under way: missing, with its
    old copy beside it under the hidden name of a writer that still runs (one that was killed
    there left it for `restore_replaced`). A reader waits for the new folder, which is a moment."""
    if target.exists():
        return False
    for path in target.parent.glob(f".{glob.escape(target.name)}.old-*"):
        match = LEFTOVER.match(path.name)
        if match and match["name"] == target.name and process_exists(int(match["pid"])):
            return True
    return False


def replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an old `target` is deleted only after the new one is in place."""
    fsync_tree(new)
    if not target.exists():
        new.rename(target)
    else:
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        _delete(old)
        target.rename(old)
        new.rename(target)
        _delete(old)
    _fsync_dir(target.parent)


def _delete(path: Path) -> None:
    """Delete a folder, or a file: a file at the target's name (rmtree left it aside, and the next
    replace's rename of the folder onto it failed), as far as it can be deleted."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def replace_file(path: Path, data: str | bytes | Iterable[str], durable: bool = True) -> None:
    """Replace the file at `path` with `data` (or its pieces, written as they come) in one rename:
    a reader, or a kill at any moment, sees the old file whole or the new one. Written beside the
    file `path` links to, if it is a link, so the link and the folder it points into stay as they
    are; then what killed earlier writes of it left there is deleted. A link to a device or a pipe
    (/dev/null) is written into: such a file is never replaced. `durable=False` skips the fsyncs,
    for a file rewritten often whose loss in a power cut does not matter (a heartbeat)."""
    put_in_place(write_aside(path, data, durable), path, durable)


def write_aside(path: Path, data: str | bytes | Iterable[str], durable: bool = True) -> Path | None:
    """replace_file's first half, for a writer that replaces `path` only once other writes have
    succeeded (else it deletes what this returns): `data` written in full under a temporary name
    beside the file, which put_in_place renames over it. Returns None for a device or a pipe,
    written into at once. A failed write leaves nothing aside."""
    target = path.resolve()
    if target.exists() and not target.is_file():  # a device or a pipe (a link to /dev/null): never replaced
        with open(target, "wb") as f:
            _write(f, data)
        return None
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(staging, "wb") as f:
            _write(f, data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            staging.unlink()
        raise
    return staging


def put_in_place(staging: Path | None, path: Path, durable: bool = True) -> None:
    """replace_file's second half: the file write_aside wrote takes the name `path` in one rename."""
    if staging is None:
        return
    target = path.resolve()
    try:
        os.replace(staging, target)
    except BaseException:
        with contextlib.suppress(OSError):
            staging.unlink()
        raise
    if durable:
        _fsync_dir(target.parent)
    remove_leftovers(target.parent, of=target.name)


def _write(f, data: str | bytes | Iterable[str]) -> None:
    for piece in [data] if isinstance(data, str | bytes) else data:
        f.write(piece.encode("utf-8") if isinstance(piece, str) else piece)


def fsync_tree(folder: Path) -> None:
    """The files of `folder` (not of its subfolders) and the folder itself, flushed to disk."""
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def place_file(new: Path, target: Path) -> bool:
    """Give the file `new` the name `target` unless something has taken that name meanwhile (a
    rename would replace it): a hard link refuses an existing name, then `new` goes. False, and
    `new` left as it is, if `target` exists. Where links are not supported, a rename after a look."""
    try:
        os.link(new, target)
    except FileExistsError:
        return False
    except OSError:  # a file system without hard links (FAT, some network mounts)
        if target.exists() or target.is_symlink():
            return False
        os.replace(new, target)
    else:
        new.unlink()
    _fsync_dir(target.parent)
    return True


@contextlib.contextmanager
def new_folder(target: Path, flag: str = "--out"):
    """Yield an empty staging folder; when the block succeeds it becomes `target` in one rename.

    `target` is missing or an empty folder (a link to one is followed, and stays): POSIX renames
    over an empty folder in one step, so `target` is never missing, and refuses a folder that is
    not empty (filled meanwhile), which stays as it is. Staging folders of killed writes of
    `target` (`.NAME.tmp-PID`, PID dead) are deleted first. On any failure (Ctrl-C included) the
    staging folder is removed and `target` is untouched; a failed write (disk full, no permission)
    becomes one line naming `target`, the cause's fix (errors.write_fix) and `flag`.
    """
    real, staging = target.resolve() if target.is_symlink() else target, None
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        remove_leftovers(real.parent, of=real.name)
        staging = staging_dir(real)
        yield staging
        fsync_tree(staging)
        if os.name == "nt" and real.is_dir() and not any(real.iterdir()):
            real.rmdir()  # Windows renames over no folder, not even an empty one
        try:
            staging.rename(real)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            raise UserError(
                f"{target} already exists and is not empty; choose a new folder with {flag} "
                "(nothing was changed)"
            ) from None
        _fsync_dir(real.parent)
    except BaseException as err:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError):  # why, and its fix: free space, make the folder writable, ...
            raise write_error(str(target), err, write_fix(f"choose another {flag}")) from None
        raise


def check_page(path: Path, fix: str) -> None:
    """Refuse `path` for a page if it is a file that is no page (see write_page)."""
    if path.is_file() and path.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"{path} already exists and is not an .html page; {fix} (nothing was changed)")


def write_page(path: Path, page: str, fix: str) -> None:
    """Write an HTML page in one rename. An existing file is replaced only if it is a page too (a
    report written before): never a run's metrics, a config or a corpus named by mistake.
    `fix`: what to do instead, e.g. "choose another --out"."""
    check_page(path, fix)
    with disk_errors(str(path), write_fix(fix)):
        replace_file(path, page)
