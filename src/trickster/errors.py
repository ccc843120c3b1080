"""The exceptions that reach the user as a single line: UserError (exit status 2, no traceback)
and Interrupted (Ctrl-C, exit status 130); `disk_errors` makes a failed write a UserError, and
`single_line` keeps such a line one line."""

import contextlib


class UserError(Exception):
    """Something the user can fix: a bad config value, a missing file, an empty corpus.

    The message is one line that names what is wrong and how to fix it.
    """


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, with what it left behind and how to go on: the one line `interrupted: ...`."""


@contextlib.contextmanager
def disk_errors(what: str, fix: str):
    """Turn a failed write (disk full, read-only or unwritable folder) into one clear line."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err) or type(err).__name__
        raise UserError(f"could not write {what} ({reason}); {fix}") from None


LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # where str.splitlines cuts


def single_line(message: str) -> str:
    """The message on one line even when a name in it holds a line break (a file name may)."""
    return "".join(c.encode("unicode_escape").decode() if c in LINE_BREAKS else c for c in message)
