"""--text-field into nested records: `content.body` reaches the field `body` of the object (JSON
Lines) or struct column (Parquet) `content`, as Hugging Face datasets' flatten() names it. The
token counts here are made from the texts written, with a char tokenizer (one id per character,
one end-of-text per document)."""

from __future__ import annotations

import datetime
import json
import random

import pytest

from trickster import cli
from trickster.data.loader import load_data

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron".split()


def bodies(count: int) -> list[str]:
    rng = random.Random(count)
    return [f"{i}: " + " ".join(rng.choice(WORDS) for _ in range(25)) for i in range(count)]


def prepare(capsys, *args: str) -> tuple[int, list[str], str]:
    code = cli.main(["data", "prepare", *args, "--no-progress", "--workers", "1"])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def tokens_of(out) -> int:
    meta = load_data(out).meta
    return meta["train_tokens"] + meta["val_tokens"]


def test_jsonl_reads_a_field_inside_a_nested_object(tmp_path, capsys):
    """It said 'line 1 has no "content.body" field (it has: id, content)': dots were part of a name."""
    texts = bodies(40)
    records = [{"id": i, "content": {"title": "t", "body": text}} for i, text in enumerate(texts)]
    records[7:7] = [{"id": "a", "content": None}, {"id": "b", "content": {"title": "no body"}}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    reads_bodies(capsys, tmp_path, "jsonl", tmp_path / "a.jsonl", texts, "2 records")


def test_jsonl_a_key_holding_the_dots_itself_is_read_first(tmp_path, capsys):
    texts = bodies(30)
    records = [{"content.body": text, "content": {"body": "not this"}} for text in texts]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    code, _, err = prepare(capsys, "jsonl", str(tmp_path / "a.jsonl"), "--text-field", "content.body",
                           "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert tokens_of(out) == sum(len(t) + 1 for t in texts)


def test_parquet_reads_a_field_of_a_struct_column(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    texts = bodies(40)
    content = [{"title": "t", "body": text} for text in texts] + [None, {"title": "x", "body": None}]
    pq.write_table(pa.table({"id": list(range(42)), "content": content}), tmp_path / "rows.parquet")
    reads_bodies(capsys, tmp_path, "parquet", tmp_path / "rows.parquet", texts, "2 records")


def test_a_hub_dataset_reads_a_field_of_a_nested_column(tmp_path, capsys):
    """A local dataset folder with a nested feature, as `datasets` streams its rows (dicts)."""
    datasets = pytest.importorskip("datasets")
    texts = bodies(40)
    content = [{"title": "t", "body": text} for text in texts] + [{"title": "x", "body": None}]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"content": content})}).save_to_disk(
        str(tmp_path / "set")
    )
    reads_bodies(capsys, tmp_path, "hf", tmp_path / "set", texts, "1 record")


def reads_bodies(capsys, tmp_path, kind: str, source, texts: list[str], skipped: str) -> None:
    """`data prepare KIND SOURCE --text-field content.body` keeps exactly `texts` and says how many
    records it skipped."""
    out = tmp_path / "out"
    code, lines, err = prepare(capsys, kind, str(source), "--text-field", "content.body", "--out", str(out))
    assert code == 0, err
    assert tokens_of(out) == sum(len(t) + 1 for t in texts)
    assert f"skipped {skipped} with no text (null, empty, or without the text field)" in lines, lines


def test_a_hub_path_through_a_value_that_is_no_object_is_one_line(tmp_path, capsys):
    """A dotted --text-field through a timestamp column (no JSON type) names it, no traceback."""
    datasets = pytest.importorskip("datasets")
    when = [datetime.datetime(2026, 1, day) for day in range(1, 4)]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"created": when})}).save_to_disk(
        str(tmp_path / "set")
    )
    flags = ["--text-field", "created.year", "--out", str(tmp_path / "out")]
    code, lines, err = prepare(capsys, "hf", str(tmp_path / "set"), *flags)
    assert code == 2
    assert '"created" is a value of type datetime, not an object holding "year"' in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field", ["txt", "content.text", "content", "id", "id.year"])
def test_a_wrong_text_field_is_told_alike_of_json_lines_and_of_a_hub_dataset(tmp_path, capsys, field):
    """The same records as a JSON Lines file and as a Hub dataset, the same wrong --text-field: the
    same line but for where it was read (the Hub's said "has no field 'txt'" where JSON Lines said
    'has no "txt" field', "holds int, not text" where it said "must be a string (got a number)").
    A Hub dataset's column has one type for every row, so its line does not ask to fix one record."""
    datasets = pytest.importorskip("datasets")
    records = [{"id": i, "content": {"title": "t", "body": text}} for i, text in enumerate(bodies(12))]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    columns = {"id": [r["id"] for r in records], "content": [r["content"] for r in records]}
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(columns)}).save_to_disk(str(tmp_path / "set"))
    capsys.readouterr()  # the save's progress bar
    told = {}
    for kind, source in (("jsonl", tmp_path / "a.jsonl"), ("hf", tmp_path / "set")):
        code, _, err = prepare(capsys, kind, str(source), "--text-field", field, "--out", str(tmp_path / "o"))
        assert code == 2 and err.count("\n") == 1, err
        told[kind] = err
    jsonl_line = told["jsonl"].replace(f"{tmp_path / 'a.jsonl'} line 1", f"dataset '{tmp_path / 'set'}'")
    assert told["hf"] == jsonl_line.replace(", or fix or remove that record", ""), told
    assert "--text-field" in told["hf"], told


@pytest.mark.parametrize("field", ["id", "id.year"])
def test_parquet_names_a_column_type_as_its_schema_does(tmp_path, capsys, field):
    """A Parquet column of the wrong type is named by its schema's type, whether --text-field ends
    there or goes on into it: it said "holds int" of the one (from a value read) and "holds int64"
    of the other (from the schema)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"id": list(range(12)), "text": bodies(12)}), tmp_path / "rows.parquet")
    code, _, err = prepare(capsys, "parquet", str(tmp_path / "rows.parquet"), "--text-field", field,
                           "--out", str(tmp_path / "o"))  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert "column 'id' holds int64, not " in err, err


def test_parquet_refuses_a_column_that_is_no_text_before_reading_any_file(tmp_path, capsys):
    """The type is the schema's, so a later file's column of bytes is refused before the files
    before it are tokenized (it was found at its first row, after them)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": bodies(200)}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"text": [b"raw bytes"] * 3}), tmp_path / "b.parquet")
    code, lines, err = prepare(capsys, "parquet", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2 and err.count("\n") == 1, err
    assert "b.parquet: column 'text' holds binary, not text" in err, err
    assert lines == [] and not (tmp_path / "o.partial").exists()
