"""Fine-tuning records from a Parquet file or a Hugging Face dataset (`data prepare parquet|hf
--format`): the same records prepared from JSON Lines and from the rows of either give the same
tokens and loss mask, in the layout written out by hand (test_record_layouts.laid_out); without
--format both still read a text field."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trickster import cli
from trickster.data.loader import load_data

from .test_record_layouts import alpaca_records, conversations, laid_out, prepare

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def _write_parquet_folder(folder, records: list[dict]) -> str:
    """The records as a dataset's Parquet shards: two files, read in the order of their names."""
    folder.mkdir()
    half = len(records) // 2
    for n, part in enumerate((records[:half], records[half:])):
        pq.write_table(pa.Table.from_pylist(part), folder / f"train-{n:05d}-of-00002.parquet")
    return str(folder)


def _write_saved_dataset(folder, records: list[dict]) -> str:
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(str(folder))
    return str(folder)


def _tokens_and_mask(data) -> tuple[list, list]:
    return [np.asarray(s).tolist() for s in (data.train, data.val)], [
        np.asarray(s.loss_mask).tolist() for s in (data.train, data.val)
    ]


@pytest.mark.parametrize("layout", ["alpaca", "messages"])
@pytest.mark.parametrize("source", ["parquet", "hf-parquet", "hf-saved"])
def test_records_from_parquet_and_datasets_are_prepared_as_the_same_json_lines(
    tmp_path, capsys, layout, source
):
    """Alpaca's set and chat sets are published as Parquet (alpaca-cleaned, ultrachat: a "messages"
    column of structs); `parquet` and `hf` took no --format, so they could not be fine-tuned on
    without converting them to JSON Lines by hand."""
    records = alpaca_records() if layout == "alpaca" else conversations()
    flags = [
        "--tokenizer",
        "bpe",
        "--vocab-size",
        "300",
        "--workers",
        "1",
        "--dedup",
        "exact",
        "--no-progress",
    ]
    from_jsonl = prepare(tmp_path, layout, records, "--tokenizer", "bpe", "--vocab-size", "300")
    capsys.readouterr()
    if source == "parquet":
        argv = ["parquet", _write_parquet_folder(tmp_path / "shards", records)]
    elif source == "hf-parquet":  # a Hub dataset's files, read by datasets' parquet loader
        argv = ["hf", _write_parquet_folder(tmp_path / "dataset", records)]
    else:
        argv = ["hf", _write_saved_dataset(tmp_path / "saved", records)]
    out = tmp_path / "from-rows"
    assert cli.main(["data", "prepare", *argv, "--format", layout, "--out", str(out), *flags]) == 0
    said = capsys.readouterr().out
    data = load_data(out)
    assert data.meta["records"] == layout and data.meta["val_records"] == 2
    kind = "conversations" if layout == "messages" else "instruction records"
    assert f"{argv[0]}: 20 {kind} read (18 train, 2 val kept; validation: the last records read)" in said
    # the same vocabulary (trained on the same texts), ids and mask as from the JSON Lines file
    assert data.tokenizer.fingerprint() == from_jsonl.tokenizer.fingerprint()
    assert _tokens_and_mask(data) == _tokens_and_mask(from_jsonl)
    assert data.tokenizer.chat_template == from_jsonl.tokenizer.chat_template is not None
    # ... which are the documented layout's: the last validation record, counted here
    val, mask = np.asarray(data.val).tolist(), np.asarray(data.val.loss_mask).tolist()
    parts = laid_out(layout, records[-1])
    ids = [i for text, _ in parts for i in data.tokenizer.encode(text)] + [data.tokenizer.eot_id]
    covered = [c for text, c in parts for _ in data.tokenizer.encode(text)] + [1]
    assert val[-len(ids) :] == ids and mask[-len(ids) :] == covered


def test_parquet_and_hf_without_format_still_read_a_text_field(tmp_path):
    """The default is unchanged: a column of text, no loss mask, even where its rows are records."""
    rows = [{"text": f"story {r['instruction']}", **r} for r in alpaca_records()]
    folder = _write_parquet_folder(tmp_path / "stories", rows)
    for source in ("parquet", "hf"):
        out = tmp_path / source
        argv = ["data", "prepare", source, folder, "--out", str(out), "--tokenizer", "byte", "--no-progress"]
        assert cli.main([*argv, "--workers", "1"]) == 0
        data = load_data(out)
        assert data.train.loss_mask is None and "records" not in data.meta
        text = data.tokenizer.decode(np.asarray(data.train).tolist() + np.asarray(data.val).tolist())
        assert all(row["text"] in text for row in rows) and "### Response:" not in text


def test_a_parquet_row_is_named_by_its_file_and_row_as_a_json_line_is(tmp_path, capsys):
    """The same checks, in the same words: the second file's third row, not the whole set's 13th."""
    records = alpaca_records()
    records[12]["output"] = "  "
    folder = _write_parquet_folder(tmp_path / "shards", records)
    argv = ["data", "prepare", "parquet", folder, "--format", "alpaca", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    path = f"{folder}/train-00001-of-00002.parquet"
    line = (
        f'{path} row 3: "output" is empty, so the loss would have nothing to learn from; write the output, '
    )
    assert capsys.readouterr().err == f"error: {line}or remove that record\n"
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert (
        cli.main(["data", "prepare", "jsonl", str(jsonl), "--format", "alpaca", "--out", str(tmp_path / "j")])
        == 2
    )
    assert (
        capsys.readouterr().err == f"error: {jsonl} line 13: {line.split(': ', 1)[1]}or remove that record\n"
    )
