"""Text a user typed, piped or passed on the command line, checked to be UTF-8 before it is encoded;
the lines `trickster chat` reads."""

from __future__ import annotations

import sys
from collections.abc import Iterator

from trickster.errors import UserError


def not_utf8(text: str, what: str) -> str | None:
    """What is wrong with `text` (`what`: '--prompt', 'this line') where it is not UTF-8, and the
    fix, in the words every command uses; None when it is all UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        # Python keeps each byte of an argument or a piped line that was not UTF-8 as U+DC80..U+DCFF
        code = ord(text[err.start])
        bad = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"
        return (
            f"{what} is not UTF-8 text ({bad} at character {err.start}); set your terminal to UTF-8, "
            "or convert the text (iconv -t utf-8)"
        )
    return None


def typed_lines(prompt: str) -> Iterator[str]:
    """Lines typed at a terminal (with `prompt` and line editing; Ctrl-D ends them, Ctrl-C raises
    KeyboardInterrupt on a line of its own: `interrupted`, exit status 130, as every command), or
    read from a pipe or a file (without prompts; none when stdin is closed, `<&-`). A piped line
    ends at "\n" or "\r\n" (a file written on Windows gave every line a "\r"). Its bytes are
    decoded here, those that are not UTF-8 kept as U+DC80..U+DCFF for not_utf8 to name, whatever
    error handler the locale gives stdin, at a terminal too (en_US.UTF-8's is strict: a Latin-1 line
    was a UnicodeDecodeError's traceback, and at a terminal a line said without its position). A
    stdin that cannot be read (`0> FILE`, opened for writing only) is one line. A folder (`< /tmp`)
    never gets here: Python itself stops before any code runs ('Fatal Python error:
    init_sys_streams: <stdin> is a directory, cannot continue', exit 1)."""
    stdin = sys.stdin
    if stdin is None:
        return
    try:
        if stdin.isatty():
            yield from _at_terminal(prompt)
            return
        raw = getattr(stdin, "buffer", None)  # a test's StringIO has none, and holds text already
        for line in stdin if raw is None else raw:
            if isinstance(line, bytes):
                line = line.decode("utf-8", "surrogateescape")
            yield line.removesuffix("\n").removesuffix("\r")
    except OSError as err:
        raise UserError(
            f"standard input cannot be read ({err.strerror or err}); type at a terminal, or give "
            "lines in a file or a pipe (trickster chat RUN < lines.txt)"
        ) from None


def _at_terminal(prompt: str) -> Iterator[str]:
    while True:
        try:
            yield input(prompt)
        except EOFError:
            print()
            return
        except KeyboardInterrupt:
            print()  # `interrupted` on a line of its own, not after the prompt
            raise
        except UnicodeDecodeError as err:  # a terminal set to another encoding: the line as a pipe gives it
            yield err.object.decode("utf-8", "surrogateescape").removesuffix("\n").removesuffix("\r")
