"""Fine-tuning records (prompt/response, Alpaca's instructions, chat conversations): read from JSON
lines, the rows of Parquet files or of a Hugging Face dataset, laid out as text by their --format
(record_layouts.py, the same fields checked in the same words: a row is named as a line is),
prepared like any corpus (token shards, one pipeline) with a loss mask beside each shard.

Each record becomes [start id] context reply [context reply ...] [end-of-text]; its mask is 0 over
the start id and each context, 1 over each reply and the end-of-text (what the model must learn to
produce, and to stop). The last `val_fraction` of the records (at least one) are the validation
split, in the file's order; exact copies (same segments) are kept once, like documents.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trickster.data import hub
from trickster.data.json_records import check_first_line, json_line
from trickster.data.paths import expand_paths
from trickster.data.record_layouts import EXAMPLE, FIELDS, check_markup, segments
from trickster.data.sources import Source, parquet_file, require_package
from trickster.data.textfile import decode, read_bytes
from trickster.data.tokenizers import CharTokenizer, HFTokenizer, Tokenizer
from trickster.data.unknown_character import ANY_TEXT, UnknownCharacter
from trickster.errors import UserError
from trickster.plural import counted


@dataclass
class Records:
    """Fine-tuning records as segments, context and reply in turn: the loss will cover each reply,
    never its context. `layout` is their --format (record_layouts.py)."""

    name: str
    documents: list[tuple[str, ...]]
    layout: str = "prompt-response"
    files: list[str] = field(default_factory=list)
    sha256: str = ""
    places: list[str] = field(default_factory=list)  # each record's file and line (or row), as lines name it


def jsonl_records(path: str | Path, layout: str = "prompt-response") -> Records:
    """One JSON object per line, a record of `layout` (blank lines are skipped)."""
    path = Path(path)
    raw = read_bytes(path, "JSON Lines file (.jsonl)")
    documents, places = [], []
    # JSON Lines ends a line at "\n" only: str.splitlines would also cut at U+2028 or NEL in a string
    for number, line in enumerate(decode(raw, str(path)).split("\n"), start=1):
        if not line.strip():
            continue
        if number == 1:
            check_first_line(line, path)
        where = f"{path} line {number}"
        record = json_line(line, where)
        if not isinstance(record, dict):
            raise UserError(f"{where} is not a JSON object; write {EXAMPLE[layout]}")
        documents.append(segments(record, where, layout))
        places.append(where)
    _check_enough(documents, str(path), "" if raw.strip() else "is empty")
    return Records("jsonl", documents, layout, [str(path)], hashlib.sha256(raw).hexdigest(), places)


def parquet_records(patterns: list[str], layout: str) -> Records:
    """Each row of Parquet files (in order), a record of `layout`: its columns as a JSON record's
    fields, a "messages" column (a list of structs) as a list of objects. Only the layout's columns
    are read, unless a file lacks one: then all, so the first row's line names what it holds."""
    files = expand_paths(patterns, (".parquet",), "Parquet files")  # not Spark's _SUCCESS beside them
    pq = require_package("pyarrow.parquet", "Parquet files need the `pyarrow` package")
    opened = [parquet_file(pq, path) for path in files]  # each refused, if it is none, before reading

    def rows() -> Iterator[tuple[dict, str]]:
        for path, parquet in zip(files, opened, strict=True):
            names = parquet.schema_arrow.names
            needed = [key for key in FIELDS[layout] if key in names]
            whole = any(key != "input" and key not in names for key in FIELDS[layout])
            number = 0
            for batch in parquet.iter_batches(batch_size=1024, columns=None if whole else needed):
                for row in batch.to_pylist():
                    number += 1
                    yield row, f"{path} row {number}"

    where = str(files[0]) if len(files) == 1 else f"the {len(files)} Parquet files"
    return _read("parquet", rows(), layout, where, [str(p) for p in files])


def hf_records(dataset: str, config: str | None, split: str, layout: str) -> Records:
    """Each row of a Hugging Face dataset's split (a hub name or a local folder), a record of `layout`."""
    hub.check_not_a_file(dataset)

    def rows() -> Iterator[tuple[dict, str]]:
        for number, row in enumerate(hub.hf_rows(dataset, config, split), start=1):
            yield row, f"dataset '{dataset}' split '{split}' row {number}"

    return _read("hf", rows(), layout, f"dataset '{dataset}' split '{split}'", [dataset])


def _read(name: str, rows: Iterable[tuple[dict, str]], layout: str, what: str, files: list[str]) -> Records:
    """Records of rows read as dicts (each with the words naming it); their sha256 is of the records
    as laid out, in order (a row's other columns, unread, are not in it)."""
    documents, places, digest = [], [], hashlib.sha256()
    for row, where in rows:
        documents.append(segments(row, where, layout, name))
        places.append(where)
        digest.update(json.dumps(documents[-1], ensure_ascii=False).encode("utf-8") + b"\n")
    _check_enough(documents, what)
    return Records(name, documents, layout, files, digest.hexdigest(), places)


def check_characters(records: Records, tokenizer: Tokenizer) -> None:
    """Every record's text in a char vocabulary (--tokenizer-from a char model), checked before any
    is tokenized: a tokenizing worker's refusal named no file or line of the record among thousands."""
    # an exported char model imported back refuses what it lacks, as char does: its records too
    dropping = isinstance(tokenizer, HFTokenizer) and tokenizer.drops_from is not None
    if not isinstance(tokenizer, CharTokenizer) and not dropping:
        return
    check_markup(records.layout, tokenizer)  # the layout's own text first: no record's fault
    fix = "remove {them} from that record, or fine-tune " + ANY_TEXT
    for number, document in enumerate(records.documents):
        try:
            tokenizer.encode("".join(document))
        except UnknownCharacter as err:
            place = records.places[number] if number < len(records.places) else f"record {number + 1}"
            raise UserError(f"{place}: {err.line(fix=fix, holder='the record')}") from None


def _check_enough(documents: list, what: str, held: str = "") -> None:
    """At least 2 records: one for training, one to validate."""
    if len(documents) < 2:
        held = held or f"holds {counted(len(documents), 'record')}"
        raise UserError(f"{what} {held}; at least 2 records are needed (one for training, one to validate)")


def records_source(records: Records, val_fraction: float) -> Source:
    """The records as a source of documents (their segments) with its own validation split: the
    last `val_fraction` of them, at least one, at most all but one."""
    documents = records.documents
    n_val = min(max(1, round(len(documents) * val_fraction)), len(documents) - 1)
    train, val = documents[:-n_val], documents[-n_val:]

    def read() -> Iterator[tuple[str, ...]]:
        return iter(train)

    def read_val() -> Iterator[tuple[str, ...]]:
        return iter(val)

    return Source(
        records.name,
        {
            "source": records.name,
            "records": records.layout,
            "sha256": records.sha256,
            "files": records.files,
        },
        read,
        read_val=read_val,
        total_bytes=sum(len(part.encode("utf-8")) for document in documents for part in document),
        files=records.files,
        content_sha256=lambda: records.sha256,
        records=records.layout,
    )
