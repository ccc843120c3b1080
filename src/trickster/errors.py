"""The one exception type that reaches the user as a single line (exit status 2, no traceback)."""


class UserError(Exception):
    """Something the user can fix: a bad config value, a missing file, an empty corpus.

    The message is one line that names what is wrong and how to fix it.
    """
