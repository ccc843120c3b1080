"""A JSON record as corpora read it: one line parsed (`json_line`), the JSON type of a value named
(`json_type`), a string checked to be text (`checked_text`), and a record's text by --text-field
(`TextField`)."""

from __future__ import annotations

import json
import math

from trickster import untrusted
from trickster.errors import UserError


def json_line(line: str, where: str):
    try:
        # without its line break, which would put an error at the end on a second line, column 1
        return untrusted.parse(json.loads, line.rstrip("\r\n"))
    except json.JSONDecodeError as err:
        problem = untrusted.json_problem(err)
        raise UserError(f"{where} is not JSON ({problem}); write one JSON object per line") from None
    except untrusted.Unreadable as err:
        raise UserError(f"{where} {err.reason}; fix or remove that record") from None


def json_type(value) -> str:
    """How JSON names the type of a value json.loads returned (NaN and Infinity, which Python's json
    reads and writes although JSON has no such values, by their names)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, int | float):
        return "a number"
    return {type(None): "null", str: "a string", list: "an array", dict: "an object"}[type(value)]


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


class TextField:
    """The text of each record of a pass in its field `name`. A record without it, once an earlier
    one had it, is a missing value, as Hugging Face's json loader reads it (null); before any had it,
    the field is likely misspelt, and refused."""

    def __init__(self, name: str):
        self.name, self.seen = name, False

    def restart(self) -> None:
        """A new pass: no record has had the field yet."""
        self.seen = False

    def text(self, record: dict, where: str) -> str:
        """The record's text; "" for a missing value (null, NaN, the field absent after others had it)."""
        if self.name not in record and not self.seen:
            fields = ", ".join(list(record)[:10])
            raise UserError(f'{where} has no "{self.name}" field (it has: {fields}); pass --text-field FIELD')
        self.seen = True
        value = record.get(self.name)
        # a missing value, as Parquet and datasets rows hold it: no document; so is NaN, pandas'
        # missing value, which json.dumps writes where to_json would write null
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return ""
        if not isinstance(value, str):
            raise UserError(
                f'{where}: "{self.name}" must be a string (got {json_type(value)}); pass '
                "--text-field FIELD naming a field of strings, or fix or remove that record"
            )
        return checked_text(value, f'{where}: "{self.name}"')
