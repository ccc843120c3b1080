"""Records and files with no text, as users bring them: a JSON Lines dump where some records lack the
text field (Hugging Face's json loader reads those as null), null or empty rows in JSONL, Parquet
and Hub datasets, empty files among text files. None is a document; each is counted in the summary
(and in meta.json), as the whitespace-only ones are. The counts here are made with the corpus."""

from __future__ import annotations

import json
import random

import pytest

from trickster import cli
from trickster.data.loader import load_data

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron".split()


def distinct_texts(count: int) -> list[str]:
    rng = random.Random(count)
    return [f"{i}: " + " ".join(rng.choice(WORDS) for _ in range(30)) for i in range(count)]


def prepare(capsys, *args: str) -> tuple[int, list[str], str]:
    code = cli.main(["data", "prepare", *args, "--no-progress", "--workers", "1"])
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def write_jsonl(path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def test_jsonl_records_without_the_field_after_earlier_ones_are_skipped_and_counted(tmp_path, capsys):
    """A record without --text-field after earlier ones had it stopped the whole preparation."""
    texts = distinct_texts(40)
    records = [{"id": i, "text": t} for i, t in enumerate(texts)]
    no_text = [{"id": "a", "text": None}, {"id": "b", "text": ""}, {"id": "c"}, {"id": "d"}]
    for at, record in zip((3, 11, 20, 35), no_text, strict=True):
        records.insert(at, record)
    write_jsonl(tmp_path / "a.jsonl", records[:25])
    write_jsonl(tmp_path / "b.jsonl", [{"id": "e"}, *records[25:]])  # the field known from a.jsonl
    out = tmp_path / "out"
    code, lines, err = prepare(capsys, "jsonl", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"),
                               "--text-field", "text", "--out", str(out))  # fmt: skip
    assert code == 0, err
    assert "skipped 5 records with no text (null, empty, or without the text field)" in lines, lines
    assert lines[0].startswith("jsonl: ") and " in 40 documents (" in lines[0], lines
    meta = load_data(out).meta
    assert (meta["documents_read"], meta["documents_without_text"]) == (40, 5)


@pytest.mark.parametrize("first", [{"id": 0, "txt": "a typo"}, {"id": 0}])
def test_jsonl_a_field_no_record_so_far_had_is_still_refused(tmp_path, capsys, first):
    """A misspelt --text-field is told at the first record, not taken as 'no text' everywhere."""
    write_jsonl(
        tmp_path / "a.jsonl", [first, *({"id": i, "text": t} for i, t in enumerate(distinct_texts(5)))]
    )
    code, _, err = prepare(capsys, "jsonl", str(tmp_path / "a.jsonl"), "--text-field", "text",
                           "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 2 and err.count("\n") == 1, err
    assert 'a.jsonl line 1 has no "text" field' in err and "pass --text-field FIELD" in err, err
    assert not (tmp_path / "out").exists()


def test_parquet_null_and_empty_rows_are_counted(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    column = [*distinct_texts(30), None, "", None]
    pq.write_table(pa.table({"text": column}), tmp_path / "rows.parquet")
    skips_three_records(capsys, tmp_path, "parquet", tmp_path / "rows.parquet")


def test_hf_null_empty_and_missing_fields_are_counted(tmp_path, capsys):
    """A local dataset folder read by Hugging Face's json loader: a missing field is null there."""
    pytest.importorskip("datasets")
    (tmp_path / "set").mkdir()
    records = [{"text": t} for t in distinct_texts(30)]
    records[4:4] = [{"text": None}, {"text": ""}, {"other": "no text field"}]
    write_jsonl(tmp_path / "set" / "train.jsonl", records)
    skips_three_records(capsys, tmp_path, "hf", tmp_path / "set")


def skips_three_records(capsys, tmp_path, kind: str, source) -> None:
    """`data prepare KIND SOURCE` prepares, says it skipped 3 records and records that in meta.json."""
    out = tmp_path / "out"
    code, lines, err = prepare(capsys, kind, str(source), "--out", str(out))
    assert code == 0, err
    assert "skipped 3 records with no text (null, empty, or without the text field)" in lines, lines
    assert load_data(out).meta["documents_without_text"] == 3


def test_empty_files_among_text_files_are_counted(tmp_path, capsys):
    """A 0-byte file (or a byte-order mark alone) is no document; one of blanks is a blank one."""
    (tmp_path / "notes").mkdir()
    for i, text in enumerate(distinct_texts(30)):
        (tmp_path / "notes" / f"{i:02}.txt").write_text(text, encoding="utf-8")
    (tmp_path / "notes" / "empty.txt").write_bytes(b"")
    (tmp_path / "notes" / "mark.txt").write_bytes(b"\xef\xbb\xbf")
    (tmp_path / "notes" / "blank.txt").write_text("  \n\n", encoding="utf-8")
    out = tmp_path / "out"
    code, lines, err = prepare(capsys, "text", str(tmp_path / "notes"), "--out", str(out))
    assert code == 0, err
    assert "skipped 2 empty files" in lines and "blank documents dropped: 1" in lines, lines
    assert " in 31 documents (" in lines[0], lines
    assert load_data(out).meta["documents_without_text"] == 2


def test_the_summary_says_one_copy_and_one_shard_in_the_singular(tmp_path, capsys):
    texts = distinct_texts(30)
    write_jsonl(tmp_path / "a.jsonl", [{"text": t} for t in [*texts, texts[7]]])
    code, lines, err = prepare(capsys, "jsonl", str(tmp_path / "a.jsonl"), "--text-field", "text",
                               "--out", str(tmp_path / "out"))  # fmt: skip
    assert code == 0, err
    assert "duplicates: 1 exact copy found, 1 dropped" in lines, lines
    assert " in 31 documents (" in lines[0], lines
    assert "tokens in 1 shard, val " in lines[-1] and lines[-1].count(" in 1 shard,") == 2, lines
    assert not any("(s)" in line for line in lines), lines
    assert not any(line.startswith("skipped") for line in lines), lines  # none without text


def test_a_zip_archive_is_called_one(tmp_path, capsys):
    (tmp_path / "a.txt").write_bytes(b"PK\x03\x04" + b"\x00" * 20)
    code, _, err = prepare(capsys, "text", str(tmp_path / "a.txt"), "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1, err
    assert "a.txt is a zip archive (unzip FILE); decompress it first" in err, err


def test_a_dataset_of_which_no_record_has_text_says_what_was_found(tmp_path, capsys):
    """It said only "corpus 'hf' is empty": nothing of the records read, nor of their fields."""
    pytest.importorskip("datasets")
    (tmp_path / "set").mkdir()
    write_jsonl(tmp_path / "set" / "train.jsonl", [{"text": None, "story": t} for t in distinct_texts(4)])
    code, _, err = prepare(capsys, "hf", str(tmp_path / "set"), "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1, err
    assert 'all 4 of its records have no text in field "text" (null, empty or missing)' in err, err
    assert "they have: text, story; pass --text-field FIELD" in err, err
    assert not (tmp_path / "out").exists()
