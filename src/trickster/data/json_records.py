"""A JSON record as corpora read it: one line parsed (`json_line`), the JSON type of a value named
(`json_type`), its fields named (`its_fields`), a string checked to be text (`checked_text`), and a
record's text by --text-field (`TextField`)."""

from __future__ import annotations

import json
import math
import shlex
from pathlib import Path

from trickster import untrusted
from trickster.errors import UserError


def json_line(line: str, where: str, fix: str | None = None):
    """One line of a JSON Lines file, parsed; one that is no JSON, or that Python cannot hold, is
    one line naming `where` (its file and line) and `fix`: what to do about a file the user did not
    write (HellaSwag's). Without it, the user's own records: write JSON, or fix that record."""
    try:
        # without its line break, which would put an error at the end on a second line, column 1
        return untrusted.parse(json.loads, line.rstrip("\r\n"))
    except json.JSONDecodeError as err:
        problem = untrusted.json_problem(err)
        raise UserError(
            f"{where} is not JSON ({problem}); {fix or 'write one JSON object per line'}"
        ) from None
    except untrusted.Unreadable as err:
        raise UserError(f"{where} {err.reason}; {fix or 'fix or remove that record'}") from None


def check_first_line(line: str, path) -> None:
    """Refuse a file whose first line opens a JSON array: a .json file of records (pandas'
    to_json(orient="records"), json.dump of a list) is no JSON Lines, and its first line read as one
    was "not JSON" (pretty-printed) or "not a JSON object" (on one line). And a file of plain text
    (a .txt given to jsonl): a first line that opens no object and is no JSON said only "line 1 is
    not JSON; write one JSON object per line", not that `data prepare text` reads it as it is."""
    if line.lstrip().startswith("["):
        raise UserError(
            f"{path} holds a JSON array, not JSON Lines (one object a line); convert it, for example "
            f"with jq -c '.[]' {path} > {Path(path).stem}.jsonl"
        )
    if line.lstrip().startswith("{"):
        return
    try:
        untrusted.parse(json.loads, line.rstrip("\r\n"))
    except (json.JSONDecodeError, untrusted.Unreadable):
        raise UserError(
            f"{path} line 1 is not JSON: the file holds plain text, not JSON Lines (one object a line); "
            f"read it as text with `trickster data prepare text {shlex.quote(str(path))}`, or write "
            "one JSON object per line"
        ) from None


def json_type(value) -> str:
    """How JSON names the type of a value json.loads returned (NaN and Infinity, which Python's json
    reads and writes although JSON has no such values, by their names); any other value by its
    Python type."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, int | float):
        return "a number"
    named = {type(None): "null", str: "a string", list: "an array", dict: "an object"}
    # a Hub dataset's row holds Python values too (a timestamp, bytes, an image)
    return named.get(type(value), f"a value of type {type(value).__name__}")


def its_fields(record: dict) -> str:
    """The fields a record has, for a line saying one it lacks: its first ten, or that it has none."""
    return f"it has: {', '.join(list(record)[:10])}" if record else "it has no fields"


def checked_text(text: str, what: str, fix: str = "fix or remove that record") -> str:
    """`text`, unless it holds a lone surrogate (JSON may escape half of a pair, "\\ud800"): no
    character, which no tokenizer can encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        code = f"\\u{ord(text[err.start]):04x}"
        raise UserError(
            f"{what} holds a lone surrogate ({code} at character {err.start}), half of a "
            f"character that is not text; {fix}"
        ) from None
    return text


FIX = "pass --text-field FIELD (a nested one as OUTER.INNER)"


class TextField:
    """The text of each record of a pass in its field `name`: a key, or a dotted path into nested
    objects (`content.body`), as Hugging Face datasets' flatten() names a nested column and Spark's
    col() reaches one; a key holding the dots itself is taken first. A record without the field,
    once an earlier one had it, is a missing value, as Hugging Face's json loader reads it (null);
    before any had it, the field is likely misspelt, and refused, naming the keys where the path
    stopped. A null object on the way is a missing value too, as flatten() reads it.

    JSON Lines records and a Hugging Face dataset's rows are read alike. A dataset's rows share one
    schema (`one_schema`), so a value that is no string is the field's, not one record's to fix;
    `fix` replaces every line's advice where the source takes no --text-field (tinystories)."""

    def __init__(self, name: str, one_schema: bool = False, fix: str | None = None):
        self.name, self.seen = name, False
        self.one_schema, self.fix = one_schema, fix

    def restart(self) -> None:
        """A new pass: no record has had the field yet."""
        self.seen = False

    def text(self, record: dict, where: str) -> str:
        """The record's text; "" for a missing value (null, NaN, the field absent after others had it)."""
        value, walked, stopped = walk(record, self.name, where)
        if stopped is not None:
            if not self.seen:
                there = "it has" if not walked else f'"{".".join(walked)}" has'
                keys = ", ".join(list(stopped)[:10])
                raise UserError(f'{where} has no "{self.name}" field ({there}: {keys}); {self.fix or FIX}')
            value = None
        self.seen = True
        # a missing value, as Parquet and datasets rows hold it: no document; so is NaN, pandas'
        # missing value, which json.dumps writes where to_json would write null
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if isinstance(value, dict):  # a nested object: the text is a field inside it
            keys = ", ".join(list(value)[:10])
            inside = f"name the field inside it that holds the text, as --text-field {self.name}.FIELD"
            raise UserError(f'{where}: "{self.name}" is an object (it has: {keys}); {self.fix or inside}')
        if not isinstance(value, str):
            strings = "pass --text-field FIELD naming a field of strings"
            strings += "" if self.one_schema else ", or fix or remove that record"
            raise UserError(
                f'{where}: "{self.name}" must be a string (got {json_type(value)}); {self.fix or strings}'
            )
        return checked_text(value, f'{where}: "{self.name}"')


def walk(record: dict, name: str, where: str) -> tuple[object, list[str], dict | None]:
    """The value of `record`'s field `name` (a key, else a dotted path into nested objects) as
    (the value, the keys walked, None); or, where the path stopped at an object without its next
    key, (None, the keys walked to it, that object). A null object on the way gives a null value;
    any other value that is not an object is refused (`where` names the record)."""
    if name in record or "." not in name:
        return record.get(name), [], None if name in record else record
    value, walked = record, []
    for key in name.split("."):
        if value is None:  # a null object on the way: a missing value, as datasets' flatten() reads it
            return None, walked, None
        if not isinstance(value, dict):
            raise UserError(
                f'{where}: "{".".join(walked)}" is {json_type(value)}, not an object holding '
                f'"{key}"; pass --text-field FIELD naming a field of strings'
            )
        if key not in value:
            return None, walked, value
        value, walked = value[key], [*walked, key]
    return value, walked, None
