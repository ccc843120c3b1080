"""The JSON text of what `data prepare` writes (meta.json, index.json, progress.json): indented by
two spaces, as the project's other JSON files (a run's manifest.json, a checkpoint's info.json),
with each row of a table on one line. A row is a list of strings and numbers inside a list: a file
with its size and time in the source's file list, a [number, copied number] example of the
duplicates. json.dumps(indent=2) gave each of those five lines, 40 bytes more a row: meta.json of
50,000 small files took 4.8 MB, 2.8 MB with a row a line (measured with `data prepare text`)."""

from __future__ import annotations

import json

INDENT = "  "


def json_text(value) -> str:
    """`value` as JSON text, as json.dumps(value, indent=2) writes it but for rows on one line."""
    return _text(value, "", in_list=False)


def _text(value, outer: str, in_list: bool) -> str:
    inner = outer + INDENT
    if isinstance(value, dict) and value:
        items = (f"{inner}{json.dumps(str(key))}: {_text(item, inner, False)}" for key, item in value.items())
        return "{\n" + ",\n".join(items) + f"\n{outer}}}"
    if isinstance(value, list | tuple) and value:
        if in_list and not any(isinstance(item, dict | list | tuple) for item in value):
            return json.dumps(value)  # a row: ["notes/a.txt", 1583, 1796076051348590085]
        items = (inner + _text(item, inner, True) for item in value)
        return "[\n" + ",\n".join(items) + f"\n{outer}]"
    return json.dumps(value)
