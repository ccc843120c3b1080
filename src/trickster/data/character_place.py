"""Where in the files `data prepare` reads lies a character that a model's char vocabulary
(--tokenizer-from) lacks. A tokenizing worker meets it in a document without its file, and the line
named no place; the files are searched only then: text files for the line and column, JSON Lines
for the record's line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from trickster.data.paths import expand_paths
from trickster.data.sources import JSON_LINES_NAMES
from trickster.data.textfile import json_lines, read_text
from trickster.data.unknown_character import ANY_TEXT, UnknownCharacter
from trickster.errors import UserError

FIX = "remove {them} from the file, or fine-tune " + ANY_TEXT


def placed(err: UnknownCharacter, source: str, paths: list[str], template: str | None = None) -> UserError:
    """`err` with the file (and line, and column) of the first place that holds its character, or
    --template where that holds it; `err` as it is where none is found (a source of another kind,
    or a file changed meanwhile)."""
    if template is not None and err.char in template:
        fix = "take {them} out of --template, or fine-tune " + ANY_TEXT
        return UserError(err.line(at=" in --template", fix=fix))
    try:
        if source in ("text", "shakespeare"):
            for path in expand_paths(paths):
                text = read_text(path)
                if err.char in text:
                    return UnknownCharacter(text, err.char, err.vocabulary).in_file(path, FIX)
        if source == "jsonl":
            for path in expand_paths(paths, JSON_LINES_NAMES):
                found = _record_with(path, err)
                if found is not None:
                    return found
    except (UserError, ValueError):  # unreadable now: the line as the worker said it
        pass
    return err


def _record_with(path: Path, err: UnknownCharacter) -> UserError | None:
    """The line of the record whose text the worker refused (its field, or the template filled),
    else of the first that holds the character."""
    for wanted in (err.text, err.char):
        for number, line in json_lines(path):
            if line.strip() and any(wanted in text for text in _strings(json.loads(line))):
                fix = "remove {them} from that record, or fine-tune " + ANY_TEXT
                return UserError(f"{path} line {number}: {err.line(fix=fix, holder='the record')}")
    return None


def _strings(value) -> Iterator[str]:
    """The strings a JSON value holds, at any depth (the text field may be nested)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for inner in value.values():
            yield from _strings(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from _strings(inner)
