"""Where generate, compare and chat write their text: stdout, which a user may have closed (`>&-`),
sent to a file on a full disk, or set to an encoding that lacks a character of the text. Each was a
traceback (an AttributeError on None, an OSError at the first write, a UnicodeEncodeError); a pipe
that ended (`| head`) is still a quiet success (cli.main)."""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from collections.abc import Iterator

from trickster.data.unknown_character import shown
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
    except UnicodeEncodeError as err:  # a locale or PYTHONIOENCODING of ascii, latin-1, cp1252
        sys.stdout.write("\n")  # the message on a line of its own, not after the text
        raise UserError(unencodable(command, err)) from None
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


def unencodable(command: str, err: UnicodeEncodeError) -> str:
    """The line for a character of the text that stdout's encoding lacks (a byte model's U+FFFD, a
    curly quote where PYTHONIOENCODING is ascii, the locale latin-1, or a file is written in cp1252 on
    Windows): the character (with its code point: one the encoding lacks is not ASCII), the
    encoding, and how to write UTF-8 instead."""
    character = err.object[err.start]
    return (
        f"{command} could not write {shown(character)} to standard output, whose "
        f"encoding is {err.encoding}; set PYTHONIOENCODING=utf-8 (or a UTF-8 locale) and run it again"
    )
