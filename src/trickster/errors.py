"""The exceptions that reach the user as a single line: UserError (exit status 2, no traceback)
and Interrupted (Ctrl-C, exit status 130); `disk_errors` makes a failed write a UserError, and
`single_line` keeps such a line one line."""

import contextlib
import difflib
import errno
import os
from collections.abc import Callable


class UserError(Exception):
    """Something the user can fix: a bad config value, a missing file, an empty corpus.

    The message is one line that names what is wrong and how to fix it.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what it left behind and how to go on: the one line `interrupted: ...`.
    `exit_status`: 128 + the signal, as a shell reports a process that signal ended (130: SIGINT)."""

    exit_status = 130


@contextlib.contextmanager
def disk_errors(what: str, fix: str | Callable[[OSError], str], within: tuple = ()):
    """Turn a failed write (disk full, read-only or unwritable folder) into one clear line; `fix`
    says what to do, or picks it from the error (`write_fix`). With `within` (folders), only an
    error that a write alone meets (full, read-only, too large), or that names a file in one of
    them, is turned: a source read meanwhile fails in its own words (a network error is an OSError)."""
    try:
        yield
    except OSError as err:
        if within and err.errno not in WRITE_ONLY and not _names_one_in(err, within):
            raise
        raise write_error(what, err, fix) from None


def write_error(what: str, err: OSError, fix: str | Callable[[OSError], str]) -> UserError:
    """The one line of a failed write of `what`: why, and `fix` (or the fix it picks from `err`).
    For a writer that must clean up before it raises, where `disk_errors` cannot wrap it."""
    reason = err.strerror or str(err) or type(err).__name__
    name = os.fsdecode(err.filename) if err.filename is not None else what
    if err.errno in IN_THE_WAY and name not in what:  # which file: `what` may be its folder
        reason = f"{reason}: {name}"
    fix = fix if isinstance(fix, str) else fix(err)
    line = f"could not write {what} ({reason}); {fix}"
    return DiskFull(line, what, reason, err.errno) if err.errno in FULL else UserError(line)


class DiskFull(UserError):
    """A write refused for want of room (the disk, or the user's quota on it): `what` could not be
    written (a file, or "checkpoint PATH"), for `reason`, the system's words, and `errno`, which of
    FULL it was (the words may be another language's). A training run words it anew
    (train/disk_full.py), with the checkpoint it kept."""

    def __init__(self, message: str, what: str, reason: str, code: int):  # `errno` would hide the module
        super().__init__(message)
        self.what, self.reason, self.errno = what, reason, code

    def __reduce__(self):  # handed to every process of a job (rank0.on_main) whole
        return (DiskFull, (str(self), self.what, self.reason, self.errno))


FULL = (errno.ENOSPC, errno.EDQUOT)  # the disk, or the user's quota on it
REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)  # a folder's mode, its owner, a read-only mount
WRITE_ONLY = (*FULL, errno.EROFS, errno.EFBIG)  # what no read meets
IN_THE_WAY = (errno.EISDIR, errno.ENOTDIR)  # a folder where a file goes, a file where a folder goes


def write_fix(elsewhere: str = "", then: str = "") -> Callable[[OSError], str]:
    """The fix for a file that could not be written, by why: free disk space (full), make the
    folder writable (its mode, its owner, a read-only mount), lift the file size limit (EFBIG: a
    `ulimit -f`, or a file system's largest file), or, where no file can be written at all, say so
    (a folder of the system such as /proc or /sys: root is told 'No such file or directory', others
    'Permission denied'). Then what to do once that is done (`then`: "continue with --resume") and
    what to do instead (`elsewhere`: "choose another --out"); every write of a user's files takes
    its fix from here."""

    def fix(err: OSError) -> str:
        if _kernel_folder(err.filename):
            return "; ".join(filter(None, ["no file can be written there (as in /proc or /sys)", elsewhere]))
        action = CAUSES.get(err.errno) or ("fix that" if then else "")
        then_part = f", then {then}" if then and action else ""
        if not action:
            return elsewhere
        return f"{action}{then_part}" + (f", or {elsewhere}" if elsewhere else "")

    return fix


CAUSES = {
    **dict.fromkeys(FULL, "free disk space"),
    **dict.fromkeys(REFUSED, "make the folder writable"),
    errno.EISDIR: "move that folder away",
    errno.EFBIG: "lift the file size limit (ulimit -f)",  # or a file system's: `elsewhere` then
}


def _names_one_in(err: OSError, folders: tuple) -> bool:
    """Whether the error names a file in one of `folders` (or one of them)."""
    names = [os.path.abspath(os.fspath(n)) for n in (err.filename, err.filename2) if n is not None]
    folders = [os.path.abspath(os.fspath(f)) for f in folders]
    return any(n == f or n.startswith(f + os.sep) for n in names for f in folders)


def _kernel_folder(path) -> bool:
    """Whether `path` lies on a file system with no storage (procfs, sysfs: 0 blocks in all): one
    refused there for any reason (ENOENT, EACCES) is no folder to make writable or to free."""
    try:
        return path is not None and os.statvfs(os.path.dirname(os.fspath(path))).f_blocks == 0
    except (OSError, TypeError, ValueError):  # gone, or a name the OS refuses
        return False


LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines cuts


def single_line(message: str) -> str:
    """The message on one line even when a name in it holds a line break (a file name may)."""
    return "".join(c.encode("unicode_escape").decode() if c in LINE_BREAKS else c for c in message)


def did_you_mean(name: str, choices: list[str], prefix: str = "", cutoff: float = 0.6) -> str:
    """` (did you mean PREFIXchoice?)` for the choice closest to a mistyped `name`, or "" when none
    is close enough (`cutoff`: difflib's ratio; 0.75 keeps `--device tpu` from suggesting cpu)."""
    close = difflib.get_close_matches(name, choices, n=1, cutoff=cutoff)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""
