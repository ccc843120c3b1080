"""Where text comes from: Tiny Shakespeare (downloaded and checked), local files, Python's stdlib,
JSONL (a text field, a template over each record, or fine-tuning records),
and Parquet files; Hugging Face datasets (TinyStories, FineWeb, any other, or a local copy) are
in hub.py.

A `Source` reads its documents lazily, one at a time and in a fixed order, so that a corpus larger
than memory streams through `prepare`; its `identity` says exactly what was read, for meta.json and
for checking that an interrupted preparation is continued on the same input. Tiny Shakespeare and
Python's stdlib are small enough to be read whole (`Corpus`); JSONL's fine-tuning records
(prompt/response, alpaca, messages) live in records.py.
"""

from __future__ import annotations

import hashlib
import math
import string
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from trickster.data.json_records import (
    TextField,
    check_first_line,
    checked_text,
    its_fields,
    json_line,
    json_type,
)
from trickster.data.no_text import NoText
from trickster.data.parquet_column import column_path, leaf_values
from trickster.data.paths import expand_paths, source_of
from trickster.data.textfile import (
    OPENERS,
    LargeText,
    json_lines,
    read_bytes,
    small_file_bytes,
    text_blocks,
    text_of,
    text_size,
)
from trickster.errors import UserError

if TYPE_CHECKING:
    from trickster.data.hub import Revision

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
# what `jsonl FOLDER` reads of a folder, as Hugging Face's json loader: plain or compressed. Also
# .zst (The Pile, SlimPajama), which no opener reads: taken to be refused by name (json_lines),
# where leaving it out dropped it unsaid beside .jsonl files, and alone was "no files found"
JSON_LINES_NAMES = tuple(
    f"{name}{packed}" for name in (".jsonl", ".json", ".ndjson") for packed in ("", *OPENERS, ".zst")
)
DATASETS_EXTRA = "pip install 'nano-trickster[datasets]'"


@dataclass
class Source:
    """Documents read lazily: `read()` starts a fresh pass over them, always in the same order."""

    name: str
    identity: dict  # what is read (files with sizes, or a dataset's name/config/split/field)
    read: Callable[[], Iterator[str]]
    read_val: Callable[[], Iterator[str]] | None = None  # the source's own validation split, if any
    single_document: bool = False  # one text: validation is its last characters, not whole documents
    # that one text in blocks of bounded size, read as they come (a single text file); else read()'s
    read_blocks: Callable[[], Iterator[str]] | None = None
    # each document, a file too large to hold whole as a LargeText to read in blocks (text files)
    read_texts: Callable[[], Iterator[str | LargeText]] | None = None
    total_bytes: int | None = None  # of the input, when known up front (for the progress bar)
    files: list[str] = field(default_factory=list)
    content_sha256: Callable[[], str] | None = None  # of the bytes the last full read went through
    # fine-tuning records, by their layout (record_layouts.FORMATS): documents are tuples of context
    # and reply in turn, and a loss mask covers the replies
    records: str | None = None
    revision: Revision | None = None  # a version that changes under the same name (a Hub dataset's)
    # its text files' line endings are read as "\n" (textfile.newlines), which preparation version
    # 2 brought: what version 1 read of them may differ (meta.preparation_settings)
    newlines: bool = False
    no_text: NoText = field(default_factory=NoText)  # of the last pass read() started


@dataclass
class Corpus:
    name: str
    documents: list[str]
    files: list[str] = field(default_factory=list)
    sha256: str = ""  # of the source bytes, concatenated in order

    @property
    def num_chars(self) -> int:
        return sum(len(d) for d in self.documents)


def shakespeare(path: str | Path | None = None, url: str = SHAKESPEARE_URL, timeout: float = 30) -> Corpus:
    """Tiny Shakespeare from a local copy, or downloaded from its canonical URL and checked."""
    if path is not None:
        raw = read_bytes(Path(path))
        source = str(path)
    else:
        raw = download(url, timeout)
        digest = hashlib.sha256(raw).hexdigest()
        if digest != SHAKESPEARE_SHA256:
            raise DownloadFailed(
                f"downloaded file from {url} has SHA-256 {digest[:12]}..., expected "
                f"{SHAKESPEARE_SHA256[:12]}...; retry, or pass a local copy with --path FILE"
            )
        source = url
    text = text_of(raw, source)
    if not text.strip():  # said "corpus 'shakespeare' is empty" of a file of blank lines
        held = "is empty" if not text else "holds only whitespace"
        raise UserError(f"{source} {held}; pass --path a copy of Tiny Shakespeare (input.txt)")
    return Corpus("shakespeare", [text], [source], hashlib.sha256(raw).hexdigest())


def shakespeare_source(path: str | Path | None = None) -> Source:
    """Tiny Shakespeare as `data prepare` reads it. Downloaded, it is known before the download
    (only the file with SHAKESPEARE_SHA256 is taken): a folder already prepared from it is found
    without the network, and it is downloaded only when its text is read."""
    canonical = {"source": "shakespeare", "sha256": SHAKESPEARE_SHA256, "files": [SHAKESPEARE_URL]}
    if path is not None:
        source = corpus_source(shakespeare(path))
        # a copy of the canonical file is the download's text: a folder prepared from either is
        # found by the other (a quick start run once with --path, then again offline without it)
        if source.identity["sha256"] == SHAKESPEARE_SHA256:
            source.identity, source.newlines = canonical, False  # the download's "\n" only
        return source
    read: list[Corpus] = []

    def documents() -> Iterator[str]:
        if not read:
            read.append(shakespeare())
        return iter(read[0].documents)

    return Source(
        "shakespeare",
        canonical,
        documents,
        single_document=True,
        files=[SHAKESPEARE_URL],
        content_sha256=lambda: read[0].sha256 if read else SHAKESPEARE_SHA256,
    )


class DownloadFailed(UserError):
    """A corpus not downloaded whole (offline, or not the file expected), or a Hub dataset not opened:
    the quick start falls back to another corpus, prepare keeps an older version's folder (only then)."""


def download(url: str, timeout: float = 30, local_copy: str = "--path FILE") -> bytes:
    """The file at `url`; failing that, one line that says to pass a local copy with `local_copy`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read()
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadFailed(
            f"could not download {url} ({reason}); if you are offline, download it elsewhere and "
            f"pass the local copy with {local_copy}"
        ) from None


def corpus_source(corpus: Corpus) -> Source:
    """An in-memory corpus as a Source (one document: validation is its last characters), of text
    files read with their line endings as "\n"."""
    return Source(
        corpus.name,
        {"source": corpus.name, "sha256": corpus.sha256, "files": corpus.files[:20]},
        lambda: iter(corpus.documents),
        single_document=len(corpus.documents) == 1,
        total_bytes=None,
        files=corpus.files,
        content_sha256=lambda: corpus.sha256,
        newlines=True,
    )


def text_files(patterns: list[str]) -> Source:
    """UTF-8 text files, folders and glob patterns; each file is one document, read when its turn
    comes: whole (`read`), or one larger than a block in blocks (`read_texts`). One file is one
    document, read in blocks: its validation split is its last characters."""
    files = expand_paths(patterns)
    digest, no_text = [hashlib.sha256()], NoText("file")

    def restart() -> None:
        """A new pass over the files: their digest and what held no text, from nothing."""
        digest[0] = hashlib.sha256()
        no_text.restart()

    def file_text(path: Path, raw: bytes) -> str:
        """The text of a file read whole, its bytes added to the digest; a file without text is
        counted in no_text (and its empty text is no document)."""
        text = text_of(raw, str(path))
        digest[0].update(raw)
        if not text:
            no_text.skipped(str(path))
        return text

    def read() -> Iterator[str]:
        restart()
        for path in files:
            if text := file_text(path, read_bytes(path)):
                yield text

    def read_texts() -> Iterator[str | LargeText]:
        restart()
        for path in files:
            raw = small_file_bytes(path)
            if raw is None:
                yield LargeText(path, digest[0])
            elif text := file_text(path, raw):
                yield text

    def read_blocks() -> Iterator[str]:
        restart()
        no_text.skipped(str(files[0]))  # until a block holds text: the one file may be empty
        for block in text_blocks(files[0], digest[0]):
            if block.strip():
                no_text.restart()
            elif block and no_text.count:  # whitespace so far: a blank file, unless text follows
                no_text.restart()
                no_text.skipped_blank(str(files[0]))
            yield block

    return Source(
        "text",
        {"source": "text", "files": file_identity(files)},
        read,
        single_document=len(files) == 1,
        read_blocks=read_blocks if len(files) == 1 else None,
        read_texts=read_texts if len(files) > 1 else None,
        total_bytes=text_size(files),
        files=[str(p) for p in files],
        content_sha256=lambda: digest[0].hexdigest(),
        newlines=True,
        no_text=no_text,
    )


def jsonl_documents(
    patterns: list[str], text_field: str | None = None, template: str | None = None
) -> Source:
    """One document per JSON line: its `text_field`, or `template` filled from the record's fields
    (`"{prompt}\\n{response}"`; the escapes \\n and \\t written on a command line become a newline and
    a tab)."""
    if (text_field is None) == (template is None):
        raise UserError(
            "give jsonl either --text-field FIELD or --template TEMPLATE (or --format prompt-response)"
        )
    if template is not None:
        template = template.replace("\\n", "\n").replace("\\t", "\t")
        names = _template_fields(template)
    files = expand_paths(patterns, JSON_LINES_NAMES, "JSON Lines files (.jsonl)")  # not a README beside them
    fix = "pass --text-field FIELD naming the one that holds the text"
    if template is not None:
        fix = "fill those fields, or name others in --template"
    reader, no_text = None if text_field is None else TextField(text_field), NoText("record", text_field, fix)

    def document(record, where: str) -> str:
        if not isinstance(record, dict):
            raise UserError(f"{where} is not a JSON object; write one object per line")
        if reader is not None:
            return reader.text(record, where)
        for name in names:  # format_map would write null as "None", NaN as "nan", an array as "['a', 'b']"
            value = record.get(name, "")  # a missing one: format_map's KeyError names it
            finite = not isinstance(value, float) or math.isfinite(value)
            if isinstance(value, bool) or not isinstance(value, str | int | float) or not finite:
                raise UserError(
                    f'{where}: "{name}", which --template names, is {json_type(value)}; '
                    "fill it with text, or drop the record"
                )
        try:
            return checked_text(template.format_map(record), f"{where}: the text --template makes")
        except KeyError as err:
            raise UserError(
                f'{where} has no "{err.args[0]}" field, which --template names ({its_fields(record)}); name '
                "the records' fields in --template"
            ) from None
        except (ValueError, IndexError, AttributeError) as err:
            raise UserError(f"{where} does not fit --template ({err})") from None

    def read() -> Iterator[str]:
        if reader is not None:
            reader.restart()
        no_text.restart()
        for path in files:
            for number, line in json_lines(path):
                if not line.strip():
                    continue
                if number == 1:
                    check_first_line(line, path)
                where = f"{path} line {number}"
                text = document(record := json_line(line, where), where)
                if text:
                    yield text
                else:
                    no_text.skipped(where, record)

    how = {"text_field": text_field} if text_field is not None else {"template": template}
    return Source(
        "jsonl",
        {"source": "jsonl", "files": file_identity(files), **how},
        read,
        total_bytes=text_size(files),
        files=[str(p) for p in files],
        no_text=no_text,
    )


def _template_fields(template: str) -> list[str]:
    """The record fields `template` names in braces; refused if it names none, or is no template."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as err:
        raise UserError(
            f"--template {template!r} is not a valid template ({err}); "
            "write it like '{prompt}\\n{response}'"
        ) from None
    nested = next((n for n in names if "." in n and all(k.isidentifier() for k in n.split("."))), None)
    if nested:  # format_map would look for an attribute of the outer object
        raise UserError(
            f"--template names {{{nested}}}, a field inside another, which a template cannot reach; "
            f"read that field alone with --text-field {nested}, or name fields at the top of each record"
        )
    if not names or any(not n.isidentifier() for n in names):
        raise UserError(
            f"--template {template!r} must name record fields in braces, like '{{prompt}}\\n{{response}}'"
        )
    return names


def parquet_documents(patterns: list[str], text_field: str = "text") -> Source:
    """One document per row of `text_field`, read one record batch at a time (pyarrow)."""
    files = expand_paths(patterns, (".parquet",), "Parquet files")  # not Spark's _SUCCESS beside them
    pq = require_package("pyarrow.parquet", "Parquet files need the `pyarrow` package")
    for path in files:  # every file's column refused, by its type, before any file is read
        column_path(parquet_file(pq, path).schema_arrow, text_field, path)

    no_text = NoText("row", text_field, "pass --text-field COLUMN naming the one that holds the text")

    def read() -> Iterator[str]:
        no_text.restart()
        for path in files:
            parquet = pq.ParquetFile(path)
            schema = parquet.schema_arrow  # pyarrow converts the file's schema anew at each call
            parts, columns = column_path(schema, text_field, path), schema.names
            for batch in parquet.iter_batches(batch_size=1024, columns=[text_field]):
                for text in leaf_values(batch.column(0), parts):  # str or None: column_path said
                    if text:
                        yield text
                    else:
                        no_text.skipped(str(path), columns)

    return Source(
        "parquet",
        {"source": "parquet", "files": file_identity(files), "text_field": text_field},
        read,
        total_bytes=None,  # compressed sizes say little about the text inside
        files=[str(p) for p in files],
        no_text=no_text,
    )


def parquet_file(pq, path: Path):
    """`path` opened by pyarrow.parquet (`pq`); a file that is none refused in one line."""
    try:
        return pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises ArrowInvalid (a ValueError) or OSError
        raise UserError(f"{path} is not a Parquet file ({one_line(err)}); {_other_source(path)}") from None


def _other_source(path: Path) -> str:
    """What to do with a file given to `parquet` that is none: JSON Lines or text read as such."""
    kind = source_of(path)
    if kind == "parquet":
        return "pass .parquet files"
    field = " --text-field FIELD" if kind == "jsonl" else ""
    return f"read it with `trickster data prepare {kind} {path}{field}`, or pass .parquet files"


def require_package(module: str, why: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{why}: {DATASETS_EXTRA}") from None


def one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    line = text[0] if text else type(err).__name__
    return line if len(line) <= 200 else line[:197] + "..."


def file_identity(files: list[Path]) -> list:
    """Each file with its size and modification time: a changed input is noticed without reading it."""
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def python_stdlib() -> Corpus:
    """The running Python's standard library sources: a corpus every machine has offline."""
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = ("site-packages", "test", "tests", "idlelib", "__pycache__", "dist-packages")
    files = sorted(
        p for p in root.rglob("*.py") if not any(part in skip for part in p.relative_to(root).parts)
    )
    return _corpus_from_files("python-stdlib", files)


def _corpus_from_files(name: str, files: list[Path]) -> Corpus:
    """The files read whole; one that is no text (text_of refuses it) is passed over."""
    digest = hashlib.sha256()
    documents, used = [], []
    for path in files:
        raw = read_bytes(path)
        try:
            text = text_of(raw, str(path))
        except UserError:
            continue
        digest.update(raw)
        if text:
            documents.append(text)
            used.append(str(path))
    return Corpus(name, documents, used, digest.hexdigest())
