"""Where generate, compare and chat write their text: stdout, which a user may have closed (`>&-`)
or sent to a file on a full disk. Either was a traceback (an AttributeError on None, an OSError at
the first write); a pipe that ended (`| head`) is still a quiet success (cli.main)."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator

from trickster.errors import FULL, UserError
from trickster.train.lost_output import to_devnull


@contextlib.contextmanager
def text_written(command: str) -> Iterator[None]:
    """The block that writes `command`'s text; a stdout it cannot write to is one line."""
    if sys.stdout is None:
        raise UserError(
            f"standard output is closed (>&-), so {command} has nowhere to write its text; "
            "send it to a file (> out.txt) or to /dev/null instead"
        )
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as err:
        if err.errno not in (*FULL, errno.EFBIG, errno.EIO):  # a disk full, or failing
            raise
        to_devnull(sys.stdout)  # the flush at exit would fail again (status 120, a second message)
        raise UserError(
            f"{command} could not write its text to standard output ({os.strerror(err.errno)}); "
            "free space where it goes, or send it elsewhere"
        ) from None
