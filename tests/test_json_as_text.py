"""JSON Lines given to `data prepare text` (data/json_as_text.py): prepared as plain text, as asked,
with one note on stderr that says so and names `data prepare jsonl`."""

from __future__ import annotations

import json

from trickster import cli
from trickster.data.loader import load_data

RECORDS = [{"messages": [{"role": "user", "content": f"question {i}"}]} for i in range(40)]


def _prepare_text(tmp_path, capsys, name: str, content: str) -> tuple[list[str], str]:
    """`trickster data prepare text NAME` of `content`: the stderr lines and the training text."""
    (tmp_path / name).write_text(content)
    out = tmp_path / f"{name}-data"
    capsys.readouterr()
    argv = ["data", "prepare", "text", str(tmp_path / name), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    data = load_data(out)
    return capsys.readouterr().err.splitlines(), data.tokenizer.decode(list(data.train[:60]))


def test_json_lines_prepared_as_text_are_prepared_with_a_note(tmp_path, capsys):
    """chat.jsonl, and the same lines in a .txt, were read as plain text without a word: a model
    trained on braces and keys. They still are (a model of JSON may be wanted), with one note."""
    lines = "".join(json.dumps(record) + "\n" for record in RECORDS)
    for name in ("chat.jsonl", "chat.txt"):
        err, text = _prepare_text(tmp_path, capsys, name, lines)
        assert err == [
            f"note: {tmp_path / name} is JSON Lines, read here as plain text (its braces and keys are "
            f"trained on too); to train on its records' text, run `trickster data prepare jsonl "
            f"{tmp_path / name}`"
        ]
        assert text.startswith('{"messages": [{"role": "user"')  # the raw lines, as asked

    err, _ = _prepare_text(tmp_path, capsys, "notes.txt", "{braces} in prose are no JSON\n" * 40)
    assert err == []
