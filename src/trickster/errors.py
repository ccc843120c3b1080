"""The exceptions that reach the user as a single line: UserError (exit status 2, no traceback)
and Interrupted (Ctrl-C, exit status 130); `disk_errors` makes a failed write a UserError."""

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
