"""Prompt/response records for fine-tuning: read from JSON lines, prepared like any corpus (token
shards, one pipeline) with a loss mask beside each shard.

Each record becomes [start id] prompt response [end-of-text]; its mask is 0 over the start id and
the prompt, 1 over the response and the end-of-text (what the model must learn to produce, and to
stop). The last `val_fraction` of the records (at least one) are the validation split, in the
file's order; exact copies (same prompt, same response) are kept once, like documents.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trickster.data.json_records import check_not_an_array, checked_text, its_fields, json_line, json_type
from trickster.data.sources import Source
from trickster.data.textfile import decode, read_bytes
from trickster.errors import UserError
from trickster.plural import counted


@dataclass
class Records:
    """Prompt/response pairs: the loss will cover each response, never its prompt."""

    name: str
    pairs: list[tuple[str, str]]
    files: list[str] = field(default_factory=list)
    sha256: str = ""


def jsonl_prompt_response(path: str | Path) -> Records:
    """One JSON object per line with "prompt" and "response" strings (blank lines are skipped)."""
    path = Path(path)
    raw = read_bytes(path)
    pairs = []
    # JSON Lines ends a line at "\n" only: str.splitlines would also cut at U+2028 or NEL in a string
    for number, line in enumerate(decode(raw, str(path)).split("\n"), start=1):
        if not line.strip():
            continue
        if number == 1:
            check_not_an_array(line, path)
        where = f"{path} line {number}"
        record = json_line(line, where)
        if not isinstance(record, dict):
            raise UserError(f'{where} is not a JSON object; write {{"prompt": "...", "response": "..."}}')
        for key in ("prompt", "response"):
            if key not in record:
                raise UserError(_missing(record, key, where))
            if not isinstance(record[key], str):
                got = json_type(record[key])
                raise UserError(f'{where}: "{key}" must be a string (got {got}); fix or remove that record')
            checked_text(record[key], f'{where}: "{key}"')
        if not record["response"]:
            raise UserError(
                f'{where}: "response" is empty, so the loss would have nothing to learn from; write the '
                "response, or remove that record"
            )
        pairs.append((record["prompt"], record["response"]))
    if len(pairs) < 2:
        held = f"holds {counted(len(pairs), 'record')}" if raw.strip() else "is empty"
        raise UserError(f"{path} {held}; at least 2 are needed (one for training, one to validate)")
    return Records("jsonl", pairs, [str(path)], hashlib.sha256(raw).hexdigest())


def _missing(record: dict, key: str, where: str) -> str:
    """The line for a record without `key`: its own fields named, and a chat record ("messages",
    as OpenAI's and Hugging Face's fine-tuning sets write them) or an instruction record (Alpaca's
    instruction, input, output) sent to how to turn it into pairs."""
    if "messages" in record and "prompt" not in record:
        return (
            f'{where} is a chat record ("messages"); data prepare reads prompt/response records: '
            "write one per reply, the conversation before it rendered as the prompt "
            "(docs/finetune-export.md, Chat records)"
        )
    if isinstance(record.get("text"), str) and "prompt" not in record and "response" not in record:
        return (  # a corpus of {"text": ...} records, such as Hugging Face datasets write
            f'{where} has no "{key}" field ({its_fields(record)}); without --text-field or --template, '
            "jsonl reads prompt/response records (for fine-tuning); pass --text-field text to read each "
            "record's text"
        )
    if "instruction" in record and "output" in record and "prompt" not in record:
        return (  # Alpaca's shape, the commonest instruction set: the prompt is the user's to write
            f"{where} is an instruction record ({its_fields(record)}); data prepare reads prompt/response "
            "records: write the instruction (and its input) with the cue the model answers after as "
            '"prompt", the output as "response" (docs/finetune-export.md, Instruction records)'
        )
    return f'{where} has no "{key}" field ({its_fields(record)}); each record needs "prompt" and "response"'


def records_source(records: Records, val_fraction: float) -> Source:
    """The records as a source of (prompt, response) documents with its own validation split: the
    last `val_fraction` of them, at least one, at most all but one."""
    n_val = min(max(1, round(len(records.pairs) * val_fraction)), len(records.pairs) - 1)
    train, val = records.pairs[:-n_val], records.pairs[-n_val:]

    def read() -> Iterator[tuple[str, str]]:
        return iter(train)

    def read_val() -> Iterator[tuple[str, str]]:
        return iter(val)

    return Source(
        records.name,
        {
            "source": records.name,
            "records": "prompt-response",
            "sha256": records.sha256,
            "files": records.files,
        },
        read,
        read_val=read_val,
        total_bytes=sum(len(p.encode("utf-8")) + len(r.encode("utf-8")) for p, r in records.pairs),
        files=records.files,
        content_sha256=lambda: records.sha256,
        records=True,
    )
