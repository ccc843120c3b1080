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
import errno
import gzip
import itertools
import lzma
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trickster.data.links import missing
from trickster.errors import UserError

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
BLOCK_BYTES = 1 << 20  # text_blocks: about the 1 MB chunks preparation tokenizes at a time
# compressions read as bytes would be "not UTF-8 (convert it from latin1)": say what they are
OTHER_COMPRESSION = {
    b"\x28\xb5\x2f\xfd": "compressed with zstd (unzstd FILE)",
    b"PK\x03\x04": "a zip archive (unzip FILE)",
}

# what OPENERS read, in a file whose name does not say so: was "not UTF-8 text; convert it from latin1"
MISNAMED = {b"\x1f\x8b": ("gzip", ".gz"), b"\xfd7zXZ\x00": ("xz", ".xz"), b"BZh": ("bzip2", ".bz2")}

PARQUET_MAGIC = b"PAR1"  # a Parquet file's first (and last) four bytes


def read_bytes(path: Path, kind: str = "text file") -> bytes:
    """The bytes of a regular file, decompressed when its name says it is compressed. `kind` names
    the file the user was to pass where it is not one ("JSON Lines file (.jsonl)")."""
    return b"".join(raw_blocks(path, -1, kind))  # one block: joined without a copy


def raw_blocks(path: Path, size: int, kind: str = "text file") -> Iterator[bytes]:
    """The bytes of a regular file as read_bytes reads them, `size` at a time (-1: all at once);
    each block is whole but the last (a buffered read fills it), so the same file always comes in
    the same blocks. Its errors are read_bytes's, raised when met."""
    try:
        mode = path.stat().st_mode
        if stat.S_ISDIR(mode):
            raise UserError(f"{path} is a folder; pass a {kind}")
        if not stat.S_ISREG(mode):  # reading a pipe with no writer waits forever
            raise UserError(f"{path} is not a regular file (a pipe or device?); pass a {kind}")
        with OPENERS.get(path.suffix.lower(), open)(path, "rb") as file:
            while block := file.read(size):
                yield block
    except FileNotFoundError:
        raise UserError(missing(path, f"pass the path of an existing {kind}")) from None
    except PermissionError:
        raise UserError(f"{path} is not readable; check its permissions") from None
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise unreadable(path, err) from None


def small_file_bytes(path: Path) -> bytes | None:
    """The bytes of `path` as read_bytes reads them if they fit in one block (BLOCK_BYTES), else None
    (and nothing more than that block is read): a file among several larger than that is read in
    blocks (LargeText), not whole."""
    blocks = raw_blocks(path, BLOCK_BYTES)
    try:
        first, second = next(blocks, b""), next(blocks, None)
    finally:
        blocks.close()
    return first if second is None else None


@dataclass(frozen=True)
class LargeText:
    """A text file among several too large to hold whole (small_file_bytes): one document whose text
    is read in blocks when its turn comes; `digest` (a hashlib object, the source's sum) is fed its
    bytes."""

    path: Path
    digest: object | None = None

    def blocks(self) -> Iterator[str]:
        return text_blocks(self.path, self.digest)


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


def text_blocks(path: Path, digest=None, block_bytes: int | None = None) -> Iterator[str]:
    """The text of `path` as read_text reads it, in blocks of about `block_bytes` bytes
    (BLOCK_BYTES) read one after another: what is held at a time is one block, whatever the file's
    size. No character or "\r\n" is cut in two; `digest` (a hashlib object) is fed every byte.

    Its errors are read_text's, in the same order: one of reading when met; one that makes the
    bytes no text (a mark, another compression, a bad UTF-8 byte at its offset in the whole file, a
    NUL) only once every byte is read, as read_text reads the whole file before it decodes, and
    no block is yielded once such a problem is known."""
    name = str(path)
    decoder = codecs.getincrementaldecoder("utf-8")()
    problem: UserError | None = None
    offset, nul, carry, started = 0, -1, "", False
    for raw in itertools.chain(raw_blocks(path, max(4, block_bytes or BLOCK_BYTES)), [b""]):
        if digest is not None:
            digest.update(raw)
        if offset == 0 and raw:  # the marks are 4 bytes at most: the first block holds them
            problem = head_problem(raw, name)
        if nul < 0 and (found := raw.find(b"\0")) >= 0:
            nul = offset + found
        if problem is None:
            held = len(decoder.getstate()[0])  # bytes of a character the last block cut short
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as err:
                problem = not_utf8(name, offset - held + err.start)
            else:
                if text and not started:
                    text, started = text.removeprefix("\ufeff"), True
                text, carry = carry + text, ""
                if raw and text.endswith("\r"):  # its "\n" may start the next block
                    text, carry = text[:-1], "\r"
                if text and nul < 0:
                    yield newlines(text)
        offset += len(raw)
    if problem is not None:
        raise problem
    if nul >= 0:
        raise holds_nul(name, nul)


# UTF-32's little-endian mark starts with UTF-16's (FF FE): looked for first
MARKS = (
    ((codecs.BOM_UTF32_LE, codecs.BOM_UTF32_BE), "UTF-32"),
    ((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE), "UTF-16"),
)


def marked_encoding(head: bytes) -> str | None:
    """UTF-32 or UTF-16 when `head` (a file's first bytes) starts with that encoding's byte-order mark."""
    return next((name for marks, name in MARKS if head.startswith(marks)), None)


class NotText(UserError):
    """The bytes of a file are no UTF-8 text (another encoding or compression, a bad byte, a NUL,
    a damaged or cut-short archive).
    Only a change to the file puts it right, and that changes a preparation's settings: a
    preparation stopped by it has nothing worth continuing."""


def other_encoding(source: str, name: str) -> UserError:
    return NotText(
        f"{source} is {name} text; convert it to UTF-8 (for example: iconv -f {name.lower()} -t utf-8)"
    )


def decode(raw: bytes, source: str) -> str:
    """UTF-8 text, without the byte-order mark some editors write first (no character of the text)."""
    if (problem := head_problem(raw, source)) is not None:
        raise problem
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as err:
        raise not_utf8(source, err.start) from None
    nul = raw.find(b"\0")
    if nul >= 0:
        raise holds_nul(source, nul)
    return text


def head_problem(head: bytes, source: str) -> UserError | None:
    """Why a file whose bytes start with `head` (4 at least, unless it is shorter) is no UTF-8 text
    that decoding would tell (UTF-16 or UTF-32, told by their marks; another compression), or None."""
    if (name := marked_encoding(head)) is not None:
        return other_encoding(source, name)
    for magic, what in OTHER_COMPRESSION.items():
        if head.startswith(magic):
            return NotText(f"{source} is {what}; decompress it first")
    for magic, (what, suffix) in MISNAMED.items():
        if head.startswith(magic) and (what != "bzip2" or head[4:10] == b"1AY&SY"):  # "BZh" may be text
            return NotText(
                f"{source} is compressed with {what}, which is read only from a name ending in {suffix}; "
                f"rename it {Path(source).name}{suffix}, or decompress it first"
            )
    if head.startswith(PARQUET_MAGIC):  # it was "not UTF-8 text", with iconv to convert it
        return NotText(
            f"{source} is a Parquet file, not text; read it with `trickster data prepare parquet {source}`"
        )
    return None


def not_utf8(source: str, offset: int) -> UserError:
    return NotText(
        f"{source} is not UTF-8 text (bad byte at offset {offset}); convert it to UTF-8 "
        "(for example: iconv -f latin1 -t utf-8)"
    )


def holds_nul(source: str, offset: int) -> UserError:
    return NotText(
        f"{source} holds a NUL byte (at offset {offset}): a binary file, or UTF-16 text; pass UTF-8 "
        "text (for example: iconv -f utf-16 -t utf-8), or move the file out of the way"
    )


def json_lines(path: Path) -> Iterator[tuple[int, str]]:
    r"""(line number, line) of a JSON Lines file, read as it goes. Lines end at "\n" only (with an
    optional "\r" before it): U+2028, NEL or a lone "\r" may stand inside a record. A
    byte-order mark before the first line is dropped.

    Whatever is no UTF-8 stops it as it stops a text file, by the same words: another compression
    or UTF-16/32 before the first line (zstd was "not UTF-8 text"), a bad byte or a NUL by its line
    and its offset in the file (a text stream's decoder gave an offset in its own buffer)."""
    name, offset = str(path), 0
    try:
        with OPENERS.get(path.suffix.lower(), open)(path, "rb") as file:
            for number, raw in enumerate(file, start=1):
                if number == 1 and (problem := head_problem(raw, name)) is not None:
                    raise problem
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise not_utf8(f"{name} line {number}", offset + err.start) from None
                if (nul := raw.find(b"\0")) >= 0:  # never JSON: UTF-16 without its mark, or binary
                    raise holds_nul(f"{name} line {number}", offset + nul)
                yield number, line.removeprefix("\ufeff") if number == 1 else line
                offset += len(raw)
    except (OSError, EOFError, lzma.LZMAError) as err:
        raise unreadable(path, err) from None


def unreadable(path: Path, err: Exception) -> UserError:
    """The line for a file whose reading failed: the system refused (an OSError with its errno: a
    symlink to itself, an I/O error), or its archive is damaged or cut short (gzip, bz2 and lzma
    raise errors without an errno, or EOFError). A damaged archive is NotText: only another copy of
    it puts it right (the system's refusal may pass: a preparation stopped by it can go on)."""
    if isinstance(err, OSError) and err.errno == errno.ELOOP:
        return UserError(missing(path, "pass a readable text file"))
    if isinstance(err, OSError) and err.errno is not None:
        return UserError(f"{path} cannot be read ({err.strerror}); pass a readable text file")
    return NotText(f"{path} cannot be decompressed ({err}); check that it is a whole {path.suffix} file")
