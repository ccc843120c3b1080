"""A preparation stopped at any point it continues from (while tokenizing, while rewriting the one
distinct document of copies, after meta.json was written) gives, continued, the folder an
uninterrupted preparation writes: byte for byte, meta.json's date aside."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from trickster.data import encode as encode_module
from trickster.data import sources
from trickster.data.prepare import partial_dir, prepare
from trickster.data.shards import ShardWriter

from .conftest import EXCERPT, QUIET
from .test_data_pieces import small_blocks
from .test_data_streaming import Interrupt, stories, write_texts


def files_of(kind: str, root: Path) -> list[str]:
    """copies: three copies of one text (one distinct document, cut in two at the end); files:
    distinct documents; one: a single text file (one document read in pieces)."""
    folder = root / kind
    if kind == "files":
        return write_texts(folder, stories(300, seed=7))
    folder.mkdir()
    text = "".join(EXCERPT.read_text().splitlines(keepends=True)[:800])
    for i in range(3 if kind == "copies" else 1):
        (folder / f"copy{i}.txt").write_text(text)
    return [str(folder)]


def calls_of(monkeypatch, owner, name: str, stop_at: int | None = None) -> list:
    """The calls of owner.name, counted; Ctrl-C at the `stop_at`-th (from 1)."""
    original, calls = getattr(owner, name), []

    def counted(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, counted)
    return calls


def stop_after_meta(monkeypatch) -> None:
    """Ctrl-C once meta.json and index.json are written, before progress.json is deleted."""
    unlink = Path.unlink

    def stopping(self, *args, **kwargs):
        if self.name == "progress.json":
            raise KeyboardInterrupt
        return unlink(self, *args, **kwargs)

    monkeypatch.setattr(Path, "unlink", stopping)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    """Every file of a prepared folder; meta.json without its date (`created`)."""
    files = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    meta = json.loads(files["meta.json"])
    assert meta.pop("created")
    files["meta.json"] = json.dumps(meta).encode()
    return files


STOPS = [  # (files, where it stops, at which call)
    ("copies", "rewrite", 1),  # the rewrite's first write (train)
    ("copies", "rewrite", 2),  # and its second (val)
    ("copies", "rewrite, older record", 1),  # and a progress.json that kept no sum of the source
    ("copies", "after meta", None),
    ("copies", "chunk", 2),
    ("files", "chunk", 3),
    ("files", "after meta", None),
    ("one", "chunk", 3),
    ("one", "after meta", None),
]


@pytest.mark.parametrize(("kind", "stop", "at"), STOPS, ids=[f"{k}: {s} {a or ''}" for k, s, a in STOPS])
def test_a_continued_preparation_writes_the_folder_an_uninterrupted_one_writes(
    kind, stop, at, tmp_path, monkeypatch
):
    paths = files_of(kind, tmp_path)

    def run(out):
        source = sources.text_files(paths)
        return prepare(source, "byte", out, shard_tokens=700, chunk_chars=4_000, workers=1, **QUIET)

    small_blocks(monkeypatch, 4096)  # the one file in pieces of about 4 kB, one chunk each
    with pytest.MonkeyPatch.context() as patch:
        writes = calls_of(patch, ShardWriter, "add")
        reference = run(tmp_path / "ref")
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as patch, pytest.raises(KeyboardInterrupt):
        if stop.startswith("rewrite"):  # the rewrite of the one distinct document: the last two writes
            calls_of(patch, ShardWriter, "add", stop_at=len(writes) - 2 + at)
        elif stop == "chunk":
            patch.setattr(encode_module, "encode_chunk", Interrupt(after=at))
        else:
            stop_after_meta(patch)
        run(out)
    record_file = partial_dir(out) / "progress.json"
    record = json.loads(record_file.read_text())
    assert record["cutting"] == (kind == "copies" and stop != "chunk")  # it stopped where meant
    if stop.endswith("older record"):
        record.pop("source_sha256", None)
        record_file.write_text(json.dumps(record))

    continued = run(out)
    files = sorted(p for p in Path(paths[0]).iterdir())
    read = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()  # in order, as read
    assert reference["source_sha256"] == read
    assert continued["source_sha256"] == read
    assert folder_bytes(out) == folder_bytes(tmp_path / "ref")
