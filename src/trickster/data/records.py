"""Fine-tuning records (prompt/response, Alpaca's instructions, chat conversations): read from JSON
lines, laid out as text by their --format (record_layouts.py), prepared like any corpus (token
shards, one pipeline) with a loss mask beside each shard.

Each record becomes [start id] context reply [context reply ...] [end-of-text]; its mask is 0 over
the start id and each context, 1 over each reply and the end-of-text (what the model must learn to
produce, and to stop). The last `val_fraction` of the records (at least one) are the validation
split, in the file's order; exact copies (same segments) are kept once, like documents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trickster.data.json_records import check_not_an_array, json_line
from trickster.data.record_layouts import EXAMPLE, segments
from trickster.data.sources import Source
from trickster.data.textfile import decode, read_bytes
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


def jsonl_records(path: str | Path, layout: str = "prompt-response") -> Records:
    """One JSON object per line, a record of `layout` (blank lines are skipped)."""
    path = Path(path)
    raw = read_bytes(path)
    documents = []
    # JSON Lines ends a line at "\n" only: str.splitlines would also cut at U+2028 or NEL in a string
    for number, line in enumerate(decode(raw, str(path)).split("\n"), start=1):
        if not line.strip():
            continue
        if number == 1:
            check_not_an_array(line, path)
        where = f"{path} line {number}"
        record = json_line(line, where)
        if not isinstance(record, dict):
            raise UserError(f"{where} is not a JSON object; write {EXAMPLE[layout]}")
        documents.append(segments(record, where, layout))
    if len(documents) < 2:
        held = f"holds {counted(len(documents), 'record')}" if raw.strip() else "is empty"
        raise UserError(f"{path} {held}; at least 2 are needed (one for training, one to validate)")
    return Records("jsonl", documents, layout, [str(path)], hashlib.sha256(raw).hexdigest())


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
