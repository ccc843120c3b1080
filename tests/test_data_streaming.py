"""Streaming, sharded, resumable preparation and the sources behind it (no network: the Hugging Face
datasets are built inside the tests with `datasets.Dataset.from_dict`)."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
import torch

from trickster import cli
from trickster.data import encode as encode_module
from trickster.data import hub, sources, textfile
from trickster.data.loader import BatchSampler, TokenStream, load_data, split_rows, window_rows
from trickster.data.prepare import in_validation, partial_dir, prepare
from trickster.errors import UserError

ENCODE_CHUNK = encode_module.encode_chunk
WORDS = "the cat sat on a mat while one dog ran far away and came back home at night".split()


def stories(count: int, seed: int = 0) -> list[str]:
    """Distinct little documents of varying length."""
    rng = np.random.default_rng(seed)
    return [
        f"story {i}: " + " ".join(rng.choice(WORDS, size=int(rng.integers(5, 40)))) + ".\n"
        for i in range(count)
    ]


def write_texts(folder, texts):
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (folder / f"{i:04d}.txt").write_text(text)
    return [str(folder)]


def split_documents(data, stream) -> list[str]:
    """The documents of a split, cut at the end-of-text ids."""
    ids = np.asarray(stream).astype(np.int64)
    ends = np.flatnonzero(ids == data.tokenizer.eot_id) + 1
    return [data.tokenizer.decode(piece.tolist()) for piece in np.split(ids, ends) if len(piece)]


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """80 documents in shards of 64 tokens (many boundaries), and the same in one shard per split."""
    root = tmp_path_factory.mktemp("shards")
    paths = write_texts(root / "texts", stories(80))
    prepare(sources.text_files(paths), "char", root / "sharded", shard_tokens=64, chunk_chars=300)
    prepare(sources.text_files(paths), "char", root / "flat", chunk_chars=300)
    return root


def test_shards_read_as_one_stream_with_windows_across_boundaries(small_shards):
    sharded, flat = load_data(small_shards / "sharded"), load_data(small_shards / "flat")
    assert len(sharded.train.shards) > 10 and len(flat.train.shards) == 1
    assert all(isinstance(s, np.memmap) for s in sharded.train.shards + flat.train.shards)
    index = json.loads((small_shards / "sharded" / "index.json").read_text())
    assert len(index["train"]) > 10 and all(s["tokens"] == 64 for s in index["train"][:-1])
    assert 0 < index["train"][-1]["tokens"] <= 64
    assert sharded.meta["tokens_sha256"] != flat.meta["tokens_sha256"]  # other shards: other data id
    whole = np.asarray(flat.train)
    assert len(sharded.train) == len(whole) and np.array_equal(np.asarray(sharded.train), whole)
    for a, b in [(60, 70), (0, 64), (64, 128), (63, 65), (10, 300), (len(whole) - 5, len(whole))]:
        assert np.array_equal(sharded.train[a:b], whole[a:b]), (a, b)
    assert sharded.train[64] == whole[64] and sharded.train[-1] == whole[-1]
    starts = torch.tensor([0, 50, 60, 127, len(whole) - 17])  # windows of 16 crossing boundaries
    one = TokenStream([whole])  # the same tokens in one piece
    got, want = (split_rows(window_rows(tokens, starts, 16), 16) for tokens in (sharded.train, one))
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    ends = starts.numpy() + 17  # each window of 16 with its target, read by plain slices
    expected = np.stack([whole[a:b] for a, b in zip(starts.numpy(), ends, strict=True)])
    assert np.array_equal(sharded.train.windows(starts.numpy(), 17), expected)
    assert np.array_equal(one.windows(starts.numpy(), 17), expected)
    a = BatchSampler(sharded.train, 16, 4, seed=5).next_batch()
    b = BatchSampler(one, 16, 4, seed=5).next_batch()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_worker_processes_give_the_same_tokens(small_shards, tmp_path, monkeypatch):
    pools = []
    real = encode_module.multiprocessing.get_context

    def spy(method):
        pools.append(method)
        return real(method)

    monkeypatch.setattr(encode_module.multiprocessing, "get_context", spy)
    paths = [str(small_shards / "texts")]
    meta = prepare(sources.text_files(paths), "char", tmp_path / "pool", workers=2, chunk_chars=300)
    assert pools == ["spawn"]  # the pool really ran
    assert meta["tokens_sha256"] == load_data(small_shards / "flat").meta["tokens_sha256"]


class Interrupt:
    """Replaces the chunk encoder: Ctrl-C after `after` chunks; counts the chunks encoded."""

    def __init__(self, after: int | None):
        self.after, self.calls = after, 0

    def __call__(self, task):
        if self.after is not None and self.calls >= self.after:
            raise KeyboardInterrupt
        self.calls += 1
        return ENCODE_CHUNK(task)


def test_an_interrupted_preparation_continues_without_redoing_finished_shards(tmp_path, monkeypatch, capsys):
    paths = write_texts(tmp_path / "texts", stories(120, seed=1))
    out = tmp_path / "out"
    out.mkdir()  # an existing prepared folder must survive the interruption untouched
    (out / "meta.json").write_text("{}")

    def run():
        return prepare(sources.text_files(paths), "char", out, shard_tokens=400, chunk_chars=200, workers=1)

    monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=12))
    with pytest.raises(KeyboardInterrupt, match=r"finished shards? kept in .*; run the same command"):
        run()
    partial = partial_dir(out)
    assert (out / "meta.json").read_text() == "{}" and sorted(p.name for p in out.iterdir()) == ["meta.json"]
    record = json.loads((partial / "progress.json").read_text())
    assert record["next_document"] > 0
    finished = sorted((partial / "train").glob("*.bin"))
    assert len(finished) == len(record["splits"]["train"]["shards"]) >= 2
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    second = Interrupt(after=None)
    monkeypatch.setattr(encode_module, "encode_chunk", second)
    meta = run()
    assert "continuing the preparation" in capsys.readouterr().out
    assert not partial.exists() and (out / "index.json").is_file()
    assert all(p.stat().st_mtime_ns == stamps[p] for p in (out / "train").glob("*.bin") if p in stamps)
    fresh = Interrupt(after=None)
    monkeypatch.setattr(encode_module, "encode_chunk", fresh)
    reference = prepare(
        sources.text_files(paths), "char", tmp_path / "ref", shard_tokens=400, chunk_chars=200, workers=1
    )
    assert second.calls == fresh.calls - 12  # the finished chunks were not tokenized again
    assert meta["tokens_sha256"] == reference["tokens_sha256"]
    assert meta["train_documents"] + meta["val_documents"] == 120


@pytest.mark.parametrize("name", ["out", "line\nbreak"])
def test_ctrl_c_on_the_command_line_is_one_line_saying_how_to_go_on(name, tmp_path, monkeypatch, capsys):
    """Not a line on stdout and a bare 'interrupted' on stderr: one line, exit status 130, even
    when the folder's name holds a line break (written escaped, as an error's line writes it)."""
    paths = write_texts(tmp_path / "texts", stories(40, seed=5))
    monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=0))
    out = tmp_path / name
    args = ["data", "prepare", "text", *map(str, paths), "--out", str(out), "--workers", "1", "--no-progress"]
    assert cli.main(args) == 130
    captured = capsys.readouterr()
    assert "interrupted" not in captured.out
    kept = str(partial_dir(out)).replace("\n", "\\n")
    assert captured.err.splitlines() == [
        f"interrupted: 0 finished shards kept in {kept}; run the same command again to continue"
    ]


def test_continuing_with_other_settings_is_one_clear_error(tmp_path, monkeypatch):
    paths = write_texts(tmp_path / "texts", stories(60, seed=2))
    monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=3))
    with pytest.raises(KeyboardInterrupt):
        prepare(sources.text_files(paths), "char", tmp_path / "out", chunk_chars=200, workers=1, echo=print)
    monkeypatch.undo()
    with pytest.raises(UserError, match=r"other settings \(tokenizer char, now byte\).*delete .*out.partial"):
        prepare(sources.text_files(paths), "byte", tmp_path / "out", chunk_chars=200)
    assert (partial_dir(tmp_path / "out") / "progress.json").is_file()  # kept for the right command


def test_continuing_after_input_files_changed_names_them(tmp_path, monkeypatch):
    """It said "other settings (source)" and to run the command that started it, which was the
    same command: the files it read had changed since."""
    paths = write_texts(tmp_path / "texts", stories(60, seed=2))
    monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=3))
    with pytest.raises(KeyboardInterrupt):
        prepare(sources.text_files(paths), "char", tmp_path / "out", chunk_chars=200, workers=1, echo=print)
    monkeypatch.undo()
    texts = tmp_path / "texts"
    with (texts / "0007.txt").open("a") as edited:
        edited.write("one more line\n")
    (texts / "0007b.txt").write_text("a new story.\n")
    (texts / "0042.txt").unlink()
    partial = partial_dir(tmp_path / "out")
    with pytest.raises(UserError) as refused:
        prepare(sources.text_files(paths), "char", tmp_path / "out", chunk_chars=200)
    assert str(refused.value) == (
        f"{partial} holds an unfinished preparation of other input ({texts / '0007.txt'} changed, "
        f"{texts / '0007b.txt'} added, {texts / '0042.txt'} gone); it continues only the same input: put "
        f"the input back as it was, or delete {partial} to start again"
    )
    assert (partial / "progress.json").is_file()


def test_a_source_with_its_own_validation_split_keeps_it(tmp_path):
    datasets = pytest.importorskip("datasets")
    train, val = stories(50, seed=3), stories(8, seed=4)
    folder = tmp_path / "tinystories"
    folder.mkdir()
    datasets.Dataset.from_dict({"text": train}).to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_dict({"text": val}).to_parquet(str(folder / "validation.parquet"))
    out = tmp_path / "out"
    argv = ["data", "prepare", "tinystories", "--dataset", str(folder), "--out", str(out)]
    assert cli.main([*argv, "--no-progress", "--tokenizer", "byte"]) == 0
    data = load_data(out)
    assert split_documents(data, data.train) == train and split_documents(data, data.val) == val
    assert data.meta["source"] == "tinystories" and data.meta["eot_id"] == 256


def test_hf_reads_a_dataset_saved_to_disk_with_another_text_field(tmp_path):
    datasets = pytest.importorskip("datasets")
    docs = stories(40, seed=5)
    datasets.Dataset.from_dict({"id": list(range(40)), "content": docs}).save_to_disk(str(tmp_path / "saved"))
    out = tmp_path / "out"
    argv = ["data", "prepare", "hf", str(tmp_path / "saved"), "--text-field", "content", "--out", str(out)]
    assert cli.main([*argv, "--no-progress"]) == 0
    data = load_data(out)
    assert sorted(split_documents(data, data.train) + split_documents(data, data.val)) == sorted(docs)
    assert split_documents(data, data.val) == [d for d in docs if in_validation(d, 0.1)]
    with pytest.raises(UserError, match='no "text" field.*--text-field'):
        prepare(hub.hf_dataset(str(tmp_path / "saved")), "byte", tmp_path / "other")


def test_jsonl_text_field_and_template_and_parquet_give_plain_documents(tmp_path):
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = stories(30, seed=6)
    records = [{"prompt": d[:10], "response": d[10:], "text": d} for d in docs]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    by_field = sources.jsonl_documents([str(tmp_path / "r.jsonl")], text_field="text")
    assert list(by_field.read()) == docs
    joined = sources.jsonl_documents([str(tmp_path / "r.jsonl")], template="Q: {prompt}\\nA: {response}")
    assert list(joined.read()) == [f"Q: {r['prompt']}\nA: {r['response']}" for r in records]
    pq.write_table(pa.table({"body": docs}), tmp_path / "d.parquet", row_group_size=7)
    assert list(sources.parquet_documents([str(tmp_path / "d.parquet")], "body").read()) == docs

    out = tmp_path / "out"
    argv = ["data", "prepare", "jsonl", str(tmp_path / "r.jsonl"), "--template", "{prompt}|{response}"]
    assert cli.main([*argv, "--out", str(out), "--no-progress", "--val-fraction", "0.3"]) == 0
    data = load_data(out)
    assert "loss_mask" not in data.meta and data.train.loss_mask is None
    assert sorted(split_documents(data, data.train) + split_documents(data, data.val)) == sorted(
        f"{d[:10]}|{d[10:]}" for d in docs
    )


def test_bpe_is_trained_on_the_stream_and_encodes_the_same_in_worker_processes(small_shards, tmp_path):
    pytest.importorskip("tokenizers")
    paths = [str(small_shards / "texts")]
    one = prepare(
        sources.text_files(paths), "bpe", tmp_path / "one", vocab_size=300, workers=1, chunk_chars=300
    )
    two = prepare(
        sources.text_files(paths), "bpe", tmp_path / "two", vocab_size=300, workers=2, chunk_chars=300
    )
    assert one["vocab_size"] == 300 and one["dtype"] == "uint16"
    assert one["tokens_sha256"] == two["tokens_sha256"]
    data = load_data(tmp_path / "two")
    docs = split_documents(data, data.train) + split_documents(data, data.val)
    assert sorted(docs) == sorted(stories(80))


def test_jsonl_lines_end_only_at_a_newline(tmp_path):
    """JSON Lines ends a line at "\\n" (or "\\r\\n"): U+2028, NEL and a lone carriage return, which
    JSON allows inside strings or between tokens, belong to the record they are in."""
    from trickster.data.records import jsonl_records

    texts = ["one\u2028two", "three\x85four", "five\u2029six"]
    lines = [json.dumps({"text": t, "prompt": t, "response": t}, ensure_ascii=False) for t in texts]
    lines.append('{"text": "seven",\r"prompt": "p", "response": "r"}')
    path = tmp_path / "r.jsonl"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8", newline="")
    assert list(sources.jsonl_documents([str(path)], text_field="text").read()) == [*texts, "seven"]
    assert jsonl_records(path).documents == [*((t, t) for t in texts), ("p", "r")]


def test_a_folder_of_parquet_files_is_read_without_what_spark_writes_beside_them(tmp_path):
    """Spark and Hadoop write part-*.parquet with an empty _SUCCESS marker (and hidden .crc files)
    beside them: _SUCCESS stopped the preparation as 'not a Parquet file'."""
    pytest.importorskip("pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    docs = stories(10, seed=4)
    (tmp_path / "out").mkdir()
    pq.write_table(pa.table({"text": docs[:5]}), tmp_path / "out" / "part-00000.parquet")
    pq.write_table(pa.table({"text": docs[5:]}), tmp_path / "out" / "part-00001.parquet")
    (tmp_path / "out" / "_SUCCESS").touch()
    (tmp_path / "out" / ".part-00000.parquet.crc").write_bytes(b"crc\x00")
    assert list(sources.parquet_documents([str(tmp_path / "out")]).read()) == docs


def test_a_folder_of_json_lines_is_read_without_the_other_files_beside_them(tmp_path, capsys):
    """A dataset folder holds a README.md or a LICENSE beside its .jsonl files: they stopped the
    preparation as 'line 1 is not JSON'. A folder with no JSON Lines file says what it looked for."""
    import gzip

    docs = stories(9, seed=5)
    (tmp_path / "set").mkdir()
    for i, name in enumerate(["a.jsonl", "b.JSON", "c.ndjson.gz"]):
        lines = "".join(json.dumps({"text": t}) + "\n" for t in docs[3 * i : 3 * i + 3]).encode()
        (tmp_path / "set" / name).write_bytes(gzip.compress(lines) if name.endswith(".gz") else lines)
    (tmp_path / "set" / "README.md").write_text("# A dataset\n\nOf stories.\n", encoding="utf-8")
    (tmp_path / "set" / "LICENSE").write_text("MIT\n", encoding="utf-8")
    assert list(sources.jsonl_documents([str(tmp_path / "set")], text_field="text").read()) == docs
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "README.md").write_text("no data here\n", encoding="utf-8")
    code = cli.main(["data", "prepare", "jsonl", str(tmp_path / "docs"), "--text-field", "text"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "contain JSON Lines files (.jsonl)" in err, err


def test_compressed_text_and_json_lines_are_read_as_the_plain_files(tmp_path):
    """Corpora come as .jsonl.gz (C4), .txt.xz or .bz2: read as Hugging Face datasets and zcat
    read them. They were 'not UTF-8 text (convert it from latin1)'."""
    import bz2
    import gzip
    import lzma

    from trickster.data.records import jsonl_records

    texts = stories(6, seed=3)
    lines = "".join(json.dumps({"text": t, "prompt": t, "response": t}) + "\n" for t in texts)
    for opener, suffix in ((gzip.open, ".gz"), (bz2.open, ".bz2"), (lzma.open, ".xz")):
        folder = tmp_path / suffix[1:]
        folder.mkdir()
        for i, text in enumerate(texts):
            with opener(folder / f"{i}.txt{suffix}", "wt", encoding="utf-8", newline="") as f:
                f.write(text)
        with opener(tmp_path / f"r.jsonl{suffix}", "wt", encoding="utf-8") as f:
            f.write(lines)
        assert list(sources.text_files([str(folder)]).read()) == texts
        assert list(sources.jsonl_documents([str(tmp_path / f"r.jsonl{suffix}")], "text").read()) == texts
        assert jsonl_records(tmp_path / f"r.jsonl{suffix}").documents == [(t, t) for t in texts]


def test_text_files_line_endings_are_read_as_newlines_and_json_strings_as_written(tmp_path):
    """A corpus saved on Windows ("\\r\\n") or by old Mac software ("\\r") taught a model a "\\r"
    before every line break, and gave other tokens than the same text saved with "\\n": text files
    are read as Python's text mode, nanoGPT's prepare scripts and Hugging Face datasets' text loader
    read them (universal newlines). A "\\r" escaped in a JSON string is the record's own text."""
    lines = ["First Citizen:", "Before we proceed any further, hear me speak.", "", "All: Speak."]
    endings = {"lf": "\n", "crlf": "\r\n", "cr": "\r", "mixed": None}
    for name, end in endings.items():
        text = "".join(line + (end or ("\r\n" if i % 2 else "\r")) for i, line in enumerate(lines))
        (tmp_path / f"{name}.txt").write_bytes(text.encode() * 30)
        source = sources.text_files([str(tmp_path / f"{name}.txt")])
        prepare(source, "char", tmp_path / name, workers=1, echo=lambda line: None)
    prepared = {name: load_data(tmp_path / name) for name in endings}
    written = "".join(line + "\n" for line in lines) * 30
    for data in prepared.values():
        tokens = np.concatenate([data.train, data.val]).astype(np.int64).tolist()
        assert data.tokenizer.decode(tokens) == written and data.meta["vocab_size"] == len(set(written))
    (tmp_path / "r.jsonl").write_bytes(b'{"text": "a\\r\\nb"}\r\n{"text": "c\\rd"}\r\n')
    assert list(sources.jsonl_documents([str(tmp_path / "r.jsonl")], text_field="text").read()) == [
        "a\r\nb",
        "c\rd",
    ]


def test_a_plain_file_that_cannot_be_read_is_not_called_a_damaged_archive(tmp_path):
    """Reading a plain file can fail too (a symlink to itself, an I/O error): that said 'cannot be
    decompressed; check that it is a whole .txt file', the line for a cut-short archive."""
    loop = tmp_path / "notes.txt"
    loop.symlink_to(loop.name)
    with pytest.raises(UserError) as refused:
        textfile.read_text(loop)
    # the loop said in words since (was "cannot be read (Too many levels of symbolic links)")
    said = f"{loop} is a symlink loop (following it leads back to itself); fix or remove the link"
    assert str(refused.value) == said


def test_a_compressed_corpus_is_not_sized_by_its_compressed_bytes(tmp_path):
    """The progress bar's total (and the number of workers) came from the files' sizes on disk:
    for a .gz corpus that is a fraction of its text: the bar's total was 1/16 of the bytes it counts here. Its
    text's size is not known before it is read: no total, as for Parquet."""
    import gzip

    text = "".join(f"line {i} of a long and repetitive corpus\n" for i in range(2000))
    (tmp_path / "c.txt.gz").write_bytes(gzip.compress(text.encode()))
    (tmp_path / "r.jsonl.gz").write_bytes(gzip.compress(json.dumps({"text": text}).encode() + b"\n"))
    for source in (
        sources.text_files([str(tmp_path / "c.txt.gz")]),
        sources.jsonl_documents([str(tmp_path / "r.jsonl.gz")], text_field="text"),
    ):
        read = sum(len(t.encode()) for t in source.read())
        assert read == len(text) and (source.total_bytes is None or source.total_bytes >= read)


def test_a_null_text_is_no_document_and_a_null_in_a_template_is_refused(tmp_path):
    """null is a missing value: a Parquet or datasets row holding one is no document, and the same
    rows written as JSON Lines (pandas' to_json(lines=True) writes null) must prepare the same; it
    stopped the preparation. A template filled from it wrote "None" into the text, and an array
    Python's "['a', 'b']"."""
    path = tmp_path / "r.jsonl"
    path.write_text(
        '{"text": "one", "q": "Who?"}\n{"text": null, "q": null}\n{"text": "two", "q": ["a", "b"]}\n'
    )
    assert list(sources.jsonl_documents([str(path)], text_field="text").read()) == ["one", "two"]
    with pytest.raises(UserError, match=r'r.jsonl line 2: "q", which --template names, is null'):
        list(sources.jsonl_documents([str(path)], template="Q: {q}").read())
    path.write_text('{"q": "Who?"}\n{"q": ["a", "b"]}\n')
    with pytest.raises(UserError, match=r'line 2: "q", which --template names, is an array'):
        list(sources.jsonl_documents([str(path)], template="Q: {q}").read())
    path.write_text('{"q": "Who?", "n": 3}\n')  # numbers are text enough
    assert list(sources.jsonl_documents([str(path)], template="{q} {n}").read()) == ["Who? 3"]


def test_nan_is_a_missing_value_like_null_and_never_text(tmp_path):
    """Python's json writes a float NaN (pandas' missing value, where to_json writes null) as NaN,
    and Infinity, neither of which JSON has; --template wrote them into the text as "nan" and "inf".
    They go as null goes: a NaN text is no document, a template refuses them, naming the line."""
    from trickster.data.records import jsonl_records

    path = tmp_path / "r.jsonl"
    path.write_text('{"text": "one", "q": "Who?", "n": "1"}\n{"text": NaN, "q": NaN, "n": -Infinity}\n')
    assert list(sources.jsonl_documents([str(path)], text_field="text").read()) == ["one"]
    with pytest.raises(UserError, match=r'r.jsonl line 2: "q", which --template names, is NaN; fill it'):
        list(sources.jsonl_documents([str(path)], template="Q: {q}").read())
    with pytest.raises(UserError, match=r'r.jsonl line 2: "n", which --template names, is -Infinity;'):
        list(sources.jsonl_documents([str(path)], template="N: {n}").read())
    with pytest.raises(UserError, match=r'r.jsonl line 2: "n" must be a string \(got -Infinity\)'):
        list(sources.jsonl_documents([str(path)], text_field="n").read())
    path.write_text('{"prompt": "p", "response": "r"}\n{"prompt": NaN, "response": "r"}\n')
    with pytest.raises(UserError, match=r'r.jsonl line 2: "prompt" must be a string \(got NaN\)'):
        jsonl_records(path)


@pytest.mark.parametrize("encoding", ["utf-32-le", "utf-32-be", "utf-16-le", "utf-16-be"])
def test_utf16_and_utf32_are_named_by_their_mark(tmp_path, encoding):
    """UTF-32's little-endian mark (FF FE 00 00) starts with UTF-16's (FF FE): a UTF-32 file was
    called UTF-16 text, and told to convert with iconv -f utf-16; a big-endian one, latin1."""
    from trickster.data.records import jsonl_records

    name = encoding[:6].upper()
    text = '{"text": "To be", "prompt": "p", "response": "r"}\n' * 2
    path = tmp_path / "t.jsonl"
    path.write_bytes("\ufeff".encode(encoding) + text.encode(encoding))
    fix = rf"t.jsonl is {name} text; convert it to UTF-8 \(for example: iconv -f {name.lower()} -t utf-8\)"
    with pytest.raises(UserError, match=fix):
        list(sources.text_files([str(path)]).read())
    with pytest.raises(UserError, match=fix):
        list(sources.jsonl_documents([str(path)], text_field="text").read())
    with pytest.raises(UserError, match=fix):
        jsonl_records(path)


@pytest.mark.parametrize("field", ["text", "prompt"])
def test_a_lone_surrogate_in_jsonl_is_named_with_its_line(tmp_path, field):
    """JSON can escape half of a surrogate pair ("\\ud800"), which is no character: one line that
    names the record, not a traceback from the tokenizer."""
    from trickster.data.records import jsonl_records

    path = tmp_path / "r.jsonl"
    good = '{"text": "fine", "prompt": "p", "response": "r"}'
    bad = '{"text": "half \\ud800 pair", "prompt": "half \\udc00", "response": "r"}'
    path.write_text(f"{good}\n{bad}\n{good}\n")
    with pytest.raises(UserError, match=rf"r.jsonl line 2: \"{field}\" holds a lone surrogate"):
        if field == "text":
            list(sources.jsonl_documents([str(path)], text_field="text").read())
        else:
            jsonl_records(path)


def test_a_byte_order_mark_is_not_part_of_the_text(tmp_path):
    """Windows editors start UTF-8 files with a byte-order mark (EF BB BF): it is no character of
    the document (a char vocabulary would gain U+FEFF, every document would start with it), and
    json.loads refuses a line that starts with it."""
    from trickster.data.records import jsonl_records

    bom = b"\xef\xbb\xbf"
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.txt").write_bytes(bom + b"first\r\n")
    (tmp_path / "t" / "b.txt").write_bytes("second \ufeff inside".encode())
    assert list(sources.text_files([str(tmp_path / "t")]).read()) == ["first\n", "second \ufeff inside"]
    lines = b'{"text": "a", "prompt": "p", "response": "r"}\n{"text": "b", "prompt": "q", "response": "s"}\n'
    (tmp_path / "r.jsonl").write_bytes(bom + lines)
    assert list(sources.jsonl_documents([str(tmp_path / "r.jsonl")], text_field="text").read()) == ["a", "b"]
    assert jsonl_records(tmp_path / "r.jsonl").documents == [("p", "r"), ("q", "s")]


def test_ctrl_c_while_the_replaced_copy_is_deleted_says_the_data_is_prepared(
    tmp_path, monkeypatch, capsys, dead_pid
):
    """Deleting the old prepared folder (many GB of shards) takes a while once the new one has its
    name: Ctrl-C then said 'N finished shard(s) kept in DIR.partial; run the same command again',
    where there was no DIR.partial and nothing left to do, and the half-deleted old copy stayed
    beside DIR for good. Now the line says DIR is prepared, and the next preparation deletes that
    copy."""
    from trickster import atomic

    paths = write_texts(tmp_path / "texts", stories(40, seed=5))
    out = tmp_path / "out"
    args = ["data", "prepare", "text", *map(str, paths), "--out", str(out), "--workers", "1", "--no-progress"]
    assert cli.main([*args, "--tokenizer", "byte"]) == 0
    rmtree = atomic.shutil.rmtree

    def cut_short(path, *a, **k):
        if path.name.startswith(".out.old-") and path.exists():
            (path / "meta.json").unlink()  # some of it deleted, then Ctrl-C
            raise KeyboardInterrupt
        rmtree(path, *a, **k)

    monkeypatch.setattr(atomic.shutil, "rmtree", cut_short)
    capsys.readouterr()
    assert cli.main(args) == 130
    assert capsys.readouterr().err.splitlines() == [
        f"interrupted: {out} is prepared (only deleting the folder it replaced was cut short)"
    ]
    assert load_data(out).tokenizer.kind == "char" and not partial_dir(out).exists()
    monkeypatch.undo()
    # as the stopped process, now dead, left it (this process's own would go anyway)
    (tmp_path / f".out.old-{os.getpid()}").rename(tmp_path / f".out.old-{dead_pid}")
    assert cli.main(args) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "texts"]


def test_ctrl_c_says_the_finished_shards_a_continuation_keeps(tmp_path, monkeypatch):
    """A Ctrl-C after a chunk finished shards but before its record was saved said the shards of
    the record in memory ('9 finished shards kept'), where the one saved, which the same command
    continues, held fewer ('continuing ...: 7 finished shards')."""
    from trickster.data import prepare as prepare_module

    paths = write_texts(tmp_path / "texts", stories(120, seed=1))
    write_chunk, written, said = prepare_module.write_chunk, [], []

    def run():
        source = sources.text_files(paths)
        return prepare(
            source, "char", tmp_path / "out", shard_tokens=100, chunk_chars=200, workers=1, echo=said.append
        )

    def written_then_interrupted(*chunk):  # the Ctrl-C lands as the chunk's shards are done
        write_chunk(*chunk)
        written.append(chunk)
        if len(written) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(prepare_module, "write_chunk", written_then_interrupted)
    with pytest.raises(KeyboardInterrupt) as stopped:
        run()
    kept = re.match(r"(\d+) finished shards? kept", str(stopped.value))
    monkeypatch.setattr(prepare_module, "write_chunk", write_chunk)
    run()
    continued = re.match(r"continuing the preparation in .*: (\d+) finished shard", said[0])
    assert kept and continued, (str(stopped.value), said[0])
    assert kept.group(1) == continued.group(1) != "0"
