"""One text file read as a corpus reads it: UTF-8, as written but for a byte-order mark at its start
and its line endings, "\r\n" or a lone "\r" read as "\n" (Python's universal newlines, as its
text mode, nanoGPT's prepare scripts and Hugging Face datasets' text loader read a file: a corpus
saved on Windows teaches no "\r" before every line break, and meets the same text saved elsewhere),
and decompressed on the way when its name ends in .gz, .bz2 or .xz (as Hugging Face datasets and
zcat read them; dumps such as C4's come as .json.gz). JSON Lines keep their strings as written: a
"\r" escaped in one is the record's own text (records.py and sources.jsonl_documents).

Whatever cannot be text stops with one line that names the file and what to do: a pipe (reading
one that nothing writes to waits forever), UTF-16 or UTF-32 (told apart by their byte-order marks),
a NUL byte (a binary file, or UTF-16 without its mark, which would pass for UTF-8), another
compression, a damaged archive.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import lzma
import stat
from collections.abc import Iterator
from pathlib import Path

from trickster.errors import UserError

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
# compressions read as bytes would be "not UTF-8 (convert it from latin1)": say what they are
OTHER_COMPRESSION = {b"\x28\xb5\x2f\xfd": "zstd (unzstd FILE)", b"PK\x03\x04": "a zip archive (unzip FILE)"}


def read_bytes(path: Path) -> bytes:
    """The bytes of a regular file, decompressed when its name says it is compressed."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise UserError(f"{path} is a folder; pass a text file")
        if not stat.S_ISREG(mode):  # reading a pipe with no writer waits forever
            raise UserError(f"{path} is not a regular file (a pipe or device?); pass a text file")
        opener = OPENERS.get(path.suffix.lower())
        if opener is None:
            return path.read_bytes()
        with opener(path, "rb") as compressed:
            return compressed.read()
    except FileNotFoundError:
        raise UserError(f"{path} not found; pass the path of an existing text file") from None
    except PermissionError:
        raise UserError(f"{path} is not readable; check its permissions") from None
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise unreadable(path, err) from None


def text_size(files: list[Path]) -> int | None:
    """The bytes of text `files` hold, known before they are read (a progress bar's total); None
    when one is compressed: its size on disk is a fraction of its text's, which only reading tells."""
    if any(path.suffix.lower() in OPENERS for path in files):
        return None
    return sum(path.stat().st_size for path in files)


def read_text(path: Path) -> str:
    return text_of(read_bytes(path), str(path))


def text_of(raw: bytes, name: str) -> str:
    """A text file's bytes (`name` in an error) as a corpus reads them: decoded, line endings "\n"."""
    return newlines(decode(raw, name))


def newlines(text: str) -> str:
    """`text` with each line ending "\n", as Python's text mode reads a file (universal newlines)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


# UTF-32's little-endian mark starts with UTF-16's (FF FE): looked for first
MARKS = (
    ((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE), "UTF-32"),
    ((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE), "UTF-16"),
)


def marked_encoding(head: bytes) -> str | None:
    """UTF-32 or UTF-16 when `head` (a file's first bytes) starts with that encoding's byte-order mark."""
    return next((name for marks, name in MARKS if head.startswith(marks)), None)


def other_encoding(source: str, name: str) -> UserError:
    return UserError(
        f"{source} is {name} text; convert it to UTF-8 (for example: iconv -f {name.lower()} -t utf-8)"
    )


def decode(raw: bytes, source: str) -> str:
    """UTF-8 text, without the byte-order mark some editors write first (no character of the text)."""
    if (name := marked_encoding(raw)) is not None:
        raise other_encoding(source, name)
    for magic, what in OTHER_COMPRESSION.items():
        if raw.startswith(magic):
            raise UserError(f"{source} is compressed with {what}; decompress it first")
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{source} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8 "
            "(for example: iconv -f latin1 -t utf-8)"
        ) from None
    nul = raw.find(b"\0")
    if nul >= 0:
        raise UserError(
            f"{source} holds a NUL byte (at offset {nul}): a binary file, or UTF-16 text; pass UTF-8 "
            "text (for example: iconv -f utf-16 -t utf-8), or move the file out of the way"
        )
    return text


def json_lines(path: Path) -> Iterator[tuple[int, str]]:
    r"""(line number, line) of a JSON Lines file, read as it goes. Lines end at "\n" only (with an
    optional "\r" before it): U+2028, NEL or a lone "\r" may stand inside a record. A
    byte-order mark before the first line is dropped."""
    opener = OPENERS.get(path.suffix.lower(), open)
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="\n") as lines:
            yield from enumerate(lines, start=1)
    except UnicodeDecodeError as err:
        with opener(path, "rb") as raw:
            name = marked_encoding(raw.read(4))
        if name is not None:
            raise other_encoding(str(path), name) from None
        raise UserError(
            f"{path} is not UTF-8 text (bad byte at offset {err.start}); convert it to UTF-8"
        ) from None
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise unreadable(path, err) from None


def unreadable(path: Path, err: Exception) -> UserError:
    """The line for a file whose reading failed: the system refused (an OSError with its errno: a
    symlink to itself, an I/O error), or its archive is damaged or cut short (gzip, bz2 and lzma
    raise errors without an errno, or EOFError)."""
    if isinstance(err, OSError) and err.errno is not None:
        return UserError(f"{path} cannot be read ({err.strerror}); pass a readable text file")
    return UserError(f"{path} cannot be decompressed ({err}); check that it is a whole {path.suffix} file")
