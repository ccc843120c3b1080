"""The note for JSON Lines given to `data prepare text`: it reads them as plain text, braces, keys
and escapes included, and trains a model on that without a word (chat.jsonl meant for `data prepare
jsonl`). Not refused: a user may want the raw text (a model of JSON). A Parquet file is refused
already (textfile: not text)."""

from __future__ import annotations

import json
from pathlib import Path

from trickster.data.paths import expand_paths
from trickster.errors import UserError

JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
SNIFFED = 1 << 16  # bytes of a file read to tell JSON Lines by its content
SNIFFED_LINES = 2  # its first lines, which must all be JSON objects


def json_lines_note(patterns: list[str]) -> str | None:
    """The note line for the files `patterns` name, when one is JSON Lines by its name (the first
    such) or the first file by its first lines; None otherwise, or when they cannot be listed (the
    preparation says why)."""
    try:
        files = expand_paths(patterns)
    except UserError:
        return None
    named = next((path for path in files if path.name.lower().endswith(JSON_SUFFIXES)), None)
    found = named or next((path for path in files[:1] if _holds_json_lines(path)), None)
    if found is None:
        return None
    return (
        f"note: {found} is JSON Lines, read here as plain text (its braces and keys are trained on "
        f"too); to train on its records' text, run `trickster data prepare jsonl {found}`"
    )


def _holds_json_lines(path: Path) -> bool:
    """Whether the first lines of `path` are JSON objects, one a line."""
    try:
        with path.open("rb") as file:
            head = file.read(SNIFFED)
    except OSError:
        return False
    whole = head.splitlines()[:-1] if len(head) == SNIFFED else head.splitlines()  # not a line cut short
    lines = [line for line in whole if line.strip()][:SNIFFED_LINES]
    try:
        return bool(lines) and all(isinstance(json.loads(line), dict) for line in lines)
    except ValueError:  # not JSON, or not UTF-8
        return False
