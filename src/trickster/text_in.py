"""Text a user typed, piped or passed on the command line, checked to be UTF-8 before it is encoded."""

from __future__ import annotations

UTF8_FIX = "set your terminal to UTF-8, or convert the text (iconv -t utf-8)"


def not_utf8(text: str) -> str | None:
    """Where `text` is not UTF-8 ('byte 0xff at character 3'); None when it is all UTF-8."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        # Python keeps each byte of an argument or a piped line that was not UTF-8 as U+DC80..U+DCFF
        code = ord(text[err.start])
        what = f"byte 0x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}"
        return f"{what} at character {err.start}"
    return None
