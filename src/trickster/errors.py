"""The exceptions that reach the user as a single line: UserError (exit status 2, no traceback)
and Interrupted (Ctrl-C, exit status 130); `disk_errors` makes a failed write a UserError, and
`single_line` keeps such a line one line."""

import contextlib
import errno
import os
from collections.abc import Callable


class UserError(Exception):
    """Something the user can fix: a bad config value, a missing file, an empty corpus.

    The message is one line that names what is wrong and how to fix it.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what it left behind and how to go on: the one line `interrupted: ...`."""


@contextlib.contextmanager
def disk_errors(what: str, fix: str | Callable[[OSError], str]):
    """Turn a failed write (disk full, read-only or unwritable folder) into one clear line; `fix`
    says what to do, or picks it from the error (`write_fix`)."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        fix = fix if isinstance(fix, str) else fix(err)
        raise UserError(f"could not write {what} ({reason}); {fix}") from None


FULL = (errno.ENOSPC, errno.EDQUOT)  # the disk, or the user's quota on it
REFUSED = (errno.EACCES, errno.EPERM, errno.EROFS)  # a folder's mode, its owner, a read-only mount


def write_fix(elsewhere: str) -> Callable[[OSError], str]:
    """The fix for a folder that could not be written, by why: free space, make it writable, or,
    when it is neither, say so (a folder of the system such as /proc or /sys takes no file of
    ours: root is told 'No such file or directory', others 'Permission denied'); then `elsewhere`."""

    def fix(err: OSError) -> str:
        if err.errno in FULL:
            return f"free disk space, or {elsewhere}"
        if err.errno in REFUSED and not _kernel_folder(err.filename):
            return f"make the folder writable, or {elsewhere}"
        return f"no file can be written there (as in /proc or /sys); {elsewhere}"

    return fix


def _kernel_folder(path) -> bool:
    """Whether `path` lies on a file system with no storage (procfs, sysfs: 0 blocks in all)."""
    try:
        return path is not None and os.statvfs(os.path.dirname(os.fspath(path))).f_blocks == 0
    except (OSError, TypeError, ValueError):  # gone, or a name the OS refuses
        return False


LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines cuts


def single_line(message: str) -> str:
    """The message on one line even when a name in it holds a line break (a file name may)."""
    return "".join(c.encode("unicode_escape").decode() if c in LINE_BREAKS else c for c in message)
