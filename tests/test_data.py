import errno
import functools
import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

try:
    import resource
except ImportError:  # not on Windows
    resource = None

import numpy as np
import pytest
import torch

from trickster import cli
from trickster.data import sources
from trickster.data.loader import BatchSampler, TokenStream, fixed_batches, load_data
from trickster.data.prepare import in_validation, prepare, token_dtype
from trickster.data.tokenizers import load_tokenizer
from trickster.errors import UserError

from . import children
from .conftest import EXCERPT


@pytest.fixture
def http_server(tmp_path):
    """Serve tmp_path on a local port; yields the base URL."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_shakespeare_prepare_splits_90_10_by_characters(shakespeare_dir):
    text = EXCERPT.read_text()
    data = load_data(shakespeare_dir)
    cut = int(len(text) * 0.9)
    assert data.meta["train_chars"] == cut and data.meta["val_chars"] == len(text) - cut
    assert data.tokenizer.decode(data.train) == text[:cut]
    assert data.tokenizer.decode(data.val) == text[cut:]
    assert data.train.dtype == np.uint8 and data.meta["dtype"] == "uint8"
    assert data.meta["source_sha256"] == hashlib.sha256(EXCERPT.read_bytes()).hexdigest()
    assert data.meta["eot_id"] is None  # one document: nothing to separate
    assert data.train.loss_mask is None and all(isinstance(s, np.memmap) for s in data.train.shards)
    assert load_tokenizer(shakespeare_dir / "tokenizer.json").vocab_size == data.meta["vocab_size"]


def test_download_is_checked_by_sha256(tmp_path, http_server, monkeypatch):
    (tmp_path / "input.txt").write_bytes(EXCERPT.read_bytes())
    with pytest.raises(UserError, match="SHA-256"):
        sources.shakespeare(url=f"{http_server}/input.txt")
    digest = hashlib.sha256(EXCERPT.read_bytes()).hexdigest()
    monkeypatch.setattr(sources, "SHAKESPEARE_SHA256", digest)
    corpus = sources.shakespeare(url=f"{http_server}/input.txt")
    assert corpus.documents == [EXCERPT.read_text()]
    assert corpus.sha256 == digest


def test_offline_download_says_how_to_pass_a_local_file(http_server):
    with pytest.raises(UserError, match="--path FILE"):
        sources.shakespeare(url=f"{http_server}/missing.txt", timeout=5)
    with pytest.raises(UserError, match="--path FILE"):
        sources.shakespeare(url="http://127.0.0.1:9/input.txt", timeout=5)


def test_text_source_takes_files_folders_and_globs(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "one.txt").write_text("first document\n")
    (tmp_path / "a" / "two.txt").write_text("second document\n")
    (tmp_path / "three.md").write_text("third document\n")
    streamed = sources.text_files([str(tmp_path / "a"), str(tmp_path / "*.md")])
    assert list(streamed.read()) == ["first document\n", "second document\n", "third document\n"]
    assert not streamed.single_document


def test_a_folder_is_read_without_its_hidden_files_and_each_file_once(tmp_path):
    """A project folder: .git's compressed objects are no UTF-8 (the whole preparation stopped on
    one), .DS_Store and a .env are no corpus; a '**' glob through a symlink back up the tree (or a
    file named twice) reached each file up to 40 times, all kept with --keep-duplicates."""
    notes = tmp_path / "notes"
    (notes / "sub").mkdir(parents=True)
    (notes / "one.txt").write_text("first document\n")
    (notes / "sub" / "two.txt").write_text("second document\n")
    (notes / ".git" / "objects").mkdir(parents=True)
    (notes / ".git" / "objects" / "ab12").write_bytes(b"x\x9c\xcbH\xcd\xc9\xc9\x07\x00")
    (notes / ".DS_Store").write_bytes(b"Bud1\x00\x00")
    (notes / ".env").write_text("TOKEN=secret\n")
    (notes / "sub" / "up").symlink_to("..")  # a loop: notes/sub/up/sub/up/...
    expected = ["first document\n", "second document\n"]
    for paths in ([str(notes)], [str(notes / "**" / "*.txt")], [str(notes), str(notes / "one.txt")]):
        source = sources.text_files(paths)
        assert list(source.read()) == expected, paths
        assert source.files == [str(notes / "one.txt"), str(notes / "sub" / "two.txt")]


def test_a_folder_linked_into_the_corpus_is_read_once_like_a_linked_file(tmp_path):
    """A corpus that links in a shared collection (`books -> /mnt/shared/books`): the folder walk
    left its files out, without a word, where a '**' glob and a linked file read them."""
    shared = tmp_path / "shared"
    shared.mkdir()
    for i in range(3):
        (shared / f"book{i}.txt").write_text(f"book {i}: a shared text of its own\n")
    corpus = tmp_path / "corpus"
    (corpus / "own").mkdir(parents=True)
    (corpus / "own" / "notes.txt").write_text("my own notes\n")
    (corpus / "books").symlink_to(shared)
    (corpus / "own" / "again").symlink_to(shared)  # the same folder reached twice: read once
    (corpus / "own" / "loop").symlink_to("..")  # back up the tree: the walk must end
    expected = sorted([*(p.read_text() for p in shared.iterdir()), "my own notes\n"])
    for paths in ([str(corpus)], [str(corpus / "**" / "*.txt")]):
        assert sorted(sources.text_files(paths).read()) == expected, paths


def test_data_prepared_inside_the_folder_is_not_read_back_as_text(tmp_path, monkeypatch):
    """`trickster data prepare text .` writes data/text-char under the folder: run again (another
    tokenizer), it read the first one's shards, meta.json and tokenizer.json as 5 more documents."""
    for i in range(30):
        (tmp_path / f"n{i}.txt").write_text(f"note {i} about the project number {i * 17} and things\n")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["data", "prepare", "text", ".", "--no-progress"]) == 0
    partial = tmp_path / "data" / "other.partial"  # one that was interrupted
    partial.mkdir()
    (partial / "progress.json").write_text("{}")
    assert cli.main(["data", "prepare", "text", ".", "--tokenizer", "byte", "--no-progress"]) == 0
    meta = load_data(tmp_path / "data" / "text-byte").meta
    assert meta["documents_read"] == 30 and meta["source_file_count"] == 30


def test_a_corpus_folder_with_its_own_meta_and_index_json_is_read(tmp_path):
    """A corpus's own meta.json and index.json (a scraped site's, a dataset card's) beside its
    texts: the folder was taken for prepared data and left out whole, without a word (all of it:
    'no files found'). Only a folder that holds nothing but what a preparation writes is skipped."""
    site = tmp_path / "site"
    (site / "posts").mkdir(parents=True)
    (site / "about.txt").write_text("about this site\n")
    (site / "posts" / "meta.json").write_text('{"author": "someone"}\n')
    (site / "posts" / "index.json").write_text('["one.txt"]\n')
    (site / "posts" / "one.txt").write_text("the first post\n")
    names = ["about.txt", "posts/index.json", "posts/meta.json", "posts/one.txt"]
    assert sources.text_files([str(site)]).files == [str(site / name) for name in names]
    assert sources.text_files([str(site / "posts")]).files == [str(site / n) for n in names[1:]]


def test_a_folder_that_cannot_be_listed_stops_the_preparation(tmp_path, monkeypatch):
    """The walk left out a subfolder it could not list (permissions, a failing disk): a corpus
    without its files, and no word of it. (The tests run as root: listing fails by a stand-in.)"""
    (tmp_path / "notes" / "locked").mkdir(parents=True)
    (tmp_path / "notes" / "one.txt").write_text("first document\n")
    (tmp_path / "notes" / "locked" / "two.txt").write_text("second document\n")
    scandir = os.scandir

    def refusing(path="."):
        if Path(path).name == "locked":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refusing)
    with pytest.raises(UserError, match=r"notes/locked cannot be read \(Permission denied\)"):
        sources.text_files([str(tmp_path / "notes")])


def test_a_file_whose_name_looks_like_a_glob_is_read_as_named(tmp_path):
    """'report[1].txt' exists: as a pattern it matches only 'report1.txt' ("no files match")."""
    (tmp_path / "report[1].txt").write_text("the first report\n")
    assert list(sources.text_files([str(tmp_path / "report[1].txt")]).read()) == ["the first report\n"]
    (tmp_path / "report1.txt").write_text("another\n")  # the pattern's match, not the file named
    assert list(sources.text_files([str(tmp_path / "report[1].txt")]).read()) == ["the first report\n"]


def test_documents_are_split_whole_by_a_hash_of_their_text(tmp_path):
    docs = [f"document {i}: " + "abcdefgh"[i % 8] * (i % 13 + 1) + "\n" for i in range(60)]
    for i, doc in enumerate(docs):
        (tmp_path / f"{i:03d}.txt").write_text(doc)
    meta = prepare(sources.text_files([str(tmp_path / "*.txt")]), "char", tmp_path / "out", 0.3)
    data = load_data(tmp_path / "out")
    eot = data.tokenizer.eot_id
    assert eot == meta["eot_id"] is not None

    def documents(stream):
        text = data.tokenizer.decode(stream)  # decode drops end-of-text: split on it by ids instead
        ids = np.asarray(stream).tolist()
        assert ids.count(eot) == text.count("\n")
        return [
            data.tokenizer.decode(d)
            for d in np.split(np.asarray(ids), np.flatnonzero(np.asarray(ids) == eot) + 1)
            if len(d)
        ]

    train, val = documents(data.train), documents(data.val)
    assert sorted(train + val) == sorted(docs)  # every document whole, in exactly one split
    assert val == [d for d in docs if in_validation(d, 0.3)] and 0 < len(val) < len(train)
    assert meta["train_documents"] == len(train) and meta["val_documents"] == len(val)


def test_byte_tokenizer_with_documents_adds_an_end_of_text_id(tmp_path):
    corpus = sources.Corpus("t", [f"héllo wörld {i} " * 20 for i in range(40)])
    meta = prepare(corpus, "byte", tmp_path / "out")
    assert meta["vocab_size"] == 257 and meta["eot_id"] == 256 and meta["dtype"] == "uint16"


def test_documents_without_an_end_of_text_id_are_said_to_run_together(tmp_path, capsys):
    """--tokenizer-from a tokenizer without end-of-text (a byte model trained on one text) joins
    several documents back to back, with nothing between them: data prepare says so."""
    from trickster import cli
    from trickster.data.summary import NO_SEPARATOR_DOCUMENTS

    (tmp_path / "docs").mkdir()
    for i in range(40):
        (tmp_path / "docs" / f"{i}.txt").write_text(f"document {i} " * 10)
    argv = ["data", "prepare", "text", "--no-progress"]
    assert (
        cli.main(
            [*argv, str(tmp_path / "docs" / "0.txt"), "--tokenizer", "byte", "--out", str(tmp_path / "one")]
        )
        == 0
    )
    assert NO_SEPARATOR_DOCUMENTS not in capsys.readouterr().out  # one text: nothing to separate
    tokenizer = str(tmp_path / "one" / "tokenizer.json")
    assert (
        cli.main([*argv, str(tmp_path / "docs"), "--tokenizer-from", tokenizer, "--out", str(tmp_path / "a")])
        == 0
    )
    data = load_data(tmp_path / "a")
    joined = bytes(np.concatenate([np.asarray(data.train), np.asarray(data.val)]).tolist()).decode()
    assert joined.count("document") == 400  # every document is there, with no separator between them
    assert NO_SEPARATOR_DOCUMENTS in capsys.readouterr().out
    assert cli.main([*argv, str(tmp_path / "docs"), "--tokenizer", "byte", "--out", str(tmp_path / "b")]) == 0
    assert NO_SEPARATOR_DOCUMENTS not in capsys.readouterr().out


def test_the_validation_choice_depends_on_the_text_only():
    texts = [f"text number {i}" for i in range(2000)]
    chosen = [t for t in texts if in_validation(t, 0.1)]
    assert chosen == [t for t in reversed(texts) if in_validation(t, 0.1)][::-1]
    assert 150 < len(chosen) < 250  # about the fraction
    assert not any(in_validation(t, 0.0) for t in texts) and all(in_validation(t, 1.0) for t in texts)


def test_the_validation_choice_is_the_same_in_every_process():
    """The split is part of the prepared data's identity: a preparation resumed, or run again on
    another machine, must choose the same documents. Python's own hash() of a string changes with
    each process (PYTHONHASHSEED), so two processes with different seeds must agree."""
    code = (
        "from trickster.data.encode import in_validation; "
        "print([i for i in range(2000) if in_validation(f'text number {i}', 0.1)])"
    )
    here = [i for i in range(2000) if in_validation(f"text number {i}", 0.1)]
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        assert out.returncode == 0 and json.loads(out.stdout) == here, out.stderr


def test_token_dtype_is_the_smallest_that_fits():
    assert token_dtype(65) == np.uint8 and token_dtype(256) == np.uint8
    assert token_dtype(257) == np.uint16 and token_dtype(70_000) == np.uint32


@pytest.mark.slow
def test_python_stdlib_corpus_is_available_offline(tmp_path):
    corpus = sources.python_stdlib()
    assert len(corpus.documents) > 100 and corpus.num_chars > 1_000_000
    assert any(f.endswith("os.py") for f in corpus.files)
    meta = prepare(corpus, "byte", tmp_path / "stdlib")
    assert meta["train_tokens"] > 9 * meta["val_tokens"] * 0.9


def test_prepare_keeps_an_existing_folder_when_the_corpus_is_empty(tmp_path, shakespeare_dir):
    out = tmp_path / "data"
    prepare(sources.shakespeare(EXCERPT), "char", out)
    before = (out / "train" / "000000.bin").read_bytes()
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(UserError, match="empty"):
        prepare(sources.text_files([str(tmp_path / "empty.txt")]), "char", out)
    assert (out / "train" / "000000.bin").read_bytes() == before
    assert not (tmp_path / "data.partial").exists()  # nothing worth continuing was left behind


def test_a_killed_page_write_does_not_make_a_prepared_folder_foreign(tmp_path, dead_pid, live_pid):
    """`data report DIR --html` killed mid-write leaves DIR/.report.html.tmp-PID: preparing into DIR
    again must still see a prepared folder (and replace it whole), unless that writer still runs."""
    out = tmp_path / "data"
    prepare(sources.shakespeare(EXCERPT), "char", out)
    writing = out / f".report.html.tmp-{live_pid}"
    writing.write_text("<p>half", encoding="utf-8")
    with pytest.raises(UserError, match=rf"holds \.report\.html\.tmp-{live_pid}, which data prepare did not"):
        prepare(sources.shakespeare(EXCERPT), "byte", out)
    assert writing.exists() and load_tokenizer(out / "tokenizer.json").kind == "char"

    writing.rename(out / f".report.html.tmp-{dead_pid}")
    prepare(sources.shakespeare(EXCERPT), "byte", out)
    assert load_tokenizer(out / "tokenizer.json").kind == "byte"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


def test_a_preparation_killed_between_its_renames_leaves_the_old_data_usable(tmp_path, dead_pid, live_pid):
    """Preparing into an existing folder moves the old one aside, then the new one in: killed
    between the two, the folder is only its hidden old copy. The next reader puts it back, unless
    its writer still runs (then the new data is about to arrive)."""
    out = tmp_path / "data"
    prepare(sources.shakespeare(EXCERPT), "char", out)
    tokens = load_data(out).train.astype(np.int64).tolist()
    aside = out.rename(tmp_path / f".data.old-{live_pid}")
    with pytest.raises(UserError, match="no prepared data"):
        load_data(out)
    aside.rename(tmp_path / f".data.old-{dead_pid}")
    assert load_data(out).train.astype(np.int64).tolist() == tokens
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_two_preparations_into_one_folder_at_once_never_mix(tmp_path, shakespeare_dir, capsys):
    """The first stops half-way (its shards are being written in OUT.partial) while the same command
    runs again: the second is refused with one line, and the first finishes as if alone."""
    out, hold = tmp_path / "data", tmp_path / "hold"
    argv = ["data", "prepare", "shakespeare", "--path", str(EXCERPT), "--out", str(out), "--workers", "1"]
    with children.held("hold-after-progress-save", 2, argv, hold) as first:
        assert cli.main(argv) == 2
        assert "data.partial is in use: another preparation is writing it" in capsys.readouterr().err
    assert first.wait(120) == 0, first.output(5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    tokens = [load_data(folder).train.astype(np.int64).tolist() for folder in (out, shakespeare_dir)]
    assert tokens[0] == tokens[1]


def test_without_flock_a_preparation_runs_unguarded(tmp_path, shakespeare_dir, monkeypatch):
    """Native Windows has no fcntl: a preparation runs without its folder's lock, as it did before
    the lock came (training, which never ran there, refuses in one line: test_resume)."""
    from trickster import atomic

    monkeypatch.setattr(atomic, "fcntl", None)
    out = tmp_path / "data"
    argv = ["data", "prepare", "shakespeare", "--path", str(EXCERPT), "--out", str(out), "--workers", "1"]
    assert cli.main(argv) == 0
    tokens = [load_data(folder).train.astype(np.int64).tolist() for folder in (out, shakespeare_dir)]
    assert tokens[0] == tokens[1] and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize("replacing", [True, False], ids=["replacing-a-folder", "into-a-new-folder"])
def test_a_preparation_killed_before_its_folder_took_its_name_is_put_in_place_by_the_next(
    replacing, tmp_path, shakespeare_dir, capsys
):
    """Killed once finished, as DIR.partial was about to take the name DIR (after the old DIR went
    aside, when there was one): another command (other settings) is told what DIR.partial holds,
    and the old folder is put back meanwhile; the same command again renames it into place, as the
    killed one would have, in one line, preparing nothing again; no hidden copy is left."""
    out = tmp_path / "data"
    argv = ["data", "prepare", "shakespeare", "--path", str(EXCERPT), "--out", str(out), "--workers", "1"]
    if replacing:
        assert cli.main([*argv, "--tokenizer", "byte"]) == 0
    killed = children.run("tests.crash_child", "before-staged-rename", "1", *argv)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not out.exists()
    shard = (tmp_path / "data.partial" / "train" / "000000.bin").stat().st_ino
    capsys.readouterr()

    assert cli.main([*argv, "--val-fraction", "0.2"]) == 2
    err = capsys.readouterr().err
    assert "data.partial holds a finished preparation that was stopped before it took the name data" in err
    assert out.exists() == replacing
    assert not replacing or load_tokenizer(out / "tokenizer.json").kind == "byte"  # the old folder, back

    assert cli.main(argv) == 0
    said = capsys.readouterr().out.splitlines()
    assert said == [
        f"{out}.partial held this preparation, finished but stopped before it took the name data: "
        f"renamed to {out} (nothing was prepared again)"
    ]
    assert (out / "train" / "000000.bin").stat().st_ino == shard
    tokens = [load_data(folder).train.astype(np.int64).tolist() for folder in (out, shakespeare_dir)]
    assert tokens[0] == tokens[1] and sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def _stamps(folder):
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in [folder, *folder.rglob("*")]}


def test_the_same_preparation_again_keeps_the_folder(tmp_path, capsys):
    """The same command twice (the quickstart run again): the second says so in one line and
    rewrites nothing; changed settings, a changed input or a damaged folder are prepared anew."""
    out, text = tmp_path / "data", tmp_path / "corpus.txt"
    text.write_bytes(EXCERPT.read_bytes())
    argv = ["data", "prepare", "text", str(text), "--out", str(out), "--no-progress", "--workers", "1"]
    assert cli.main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    before = _stamps(out)
    assert cli.main(argv) == 0
    said = capsys.readouterr().out.splitlines()
    assert len(said) == 1 and said[0].startswith(f"already prepared: {out} holds text with the same settings")
    assert _stamps(out) == before and sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "data"]

    assert cli.main([*argv, "--val-fraction", "0.2"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert load_data(out).meta["val_fraction"] == 0.2 and out.stat().st_ino != before[out][0]

    argv = [*argv, "--val-fraction", "0.2"]
    with text.open("a") as f:
        f.write("KING LEAR:\nA line added since.\n")
    assert cli.main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert load_data(out).tokenizer.decode(load_data(out).val).endswith("A line added since.\n")

    shard = out / "val" / "000000.bin"
    shard.write_bytes(shard.read_bytes()[:-5])  # cut short: no longer complete
    assert cli.main(argv) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert load_data(out).meta["val_tokens"] == shard.stat().st_size


def test_targets_are_inputs_shifted_by_exactly_one(shakespeare_dir):
    data = load_data(shakespeare_dir)
    sampler = BatchSampler(data.train, seq_len=32, batch_size=4, seed=0)
    x, y = sampler.next_batch()
    assert x.shape == y.shape == (4, 32)
    assert torch.equal(x[:, 1:], y[:, :-1])
    stream = torch.from_numpy(data.train.astype(np.int64))
    for row_x, row_y in zip(x, y, strict=True):
        starts = [s for s in range(len(stream) - 32) if torch.equal(stream[s : s + 32], row_x)]
        assert any(torch.equal(stream[s + 1 : s + 33], row_y) for s in starts)


def test_sampler_is_reproducible_from_its_state(shakespeare_dir):
    data = load_data(shakespeare_dir)
    sampler = BatchSampler(data.train, 16, 2, seed=3)
    sampler.next_batch()
    state = sampler.state_dict()
    expected = [sampler.next_batch() for _ in range(3)]
    other = BatchSampler(data.train, 16, 2, seed=99)
    other.load_state_dict(state)
    for (a, b), (c, d) in zip(expected, [other.next_batch() for _ in range(3)], strict=True):
        assert torch.equal(a, c) and torch.equal(b, d)


def counting_stream(tokens: int = 500) -> TokenStream:
    """Token i is i: a window's first input is its start."""
    return TokenStream([np.arange(tokens, dtype=np.uint16)])


def starts_of(sampler: BatchSampler, batches: int) -> list[list[int]]:
    return [sampler.next_batch()[0][:, 0].tolist() for _ in range(batches)]


def test_skipped_draws_leave_what_a_sampler_that_never_drew_them_would_draw():
    """After a rollback the sampler passes over the spike's draws (5, 6 and 7 here): the batches
    are those of a plain sampler with those three left out, before and after a save and load in
    the middle (a resume), into a sampler of another seed."""
    plain = starts_of(BatchSampler(counting_stream(), 8, 2, seed=4), 12)
    skipping = BatchSampler(counting_stream(), 8, 2, seed=4)
    skipping.skip(5, 8)
    drawn = starts_of(skipping, 3)
    resumed = BatchSampler(counting_stream(), 8, 2, seed=99)
    resumed.load_state_dict(skipping.state_dict())
    drawn += starts_of(resumed, 6)
    assert drawn == plain[:5] + plain[8:]
    assert starts_of(skipping, 6) == drawn[3:]  # the sampler that was saved goes on alike


def test_rewind_counts_back_over_the_draws_handed_out_only():
    sampler = BatchSampler(counting_stream(), 8, 2, seed=0)
    sampler.skip(5, 8)  # draws 5, 6, 7 were passed over
    assert sampler.rewind(10, 2) == 8
    assert sampler.rewind(10, 3) == 4  # 9, 8, then 4
    assert sampler.rewind(10, 4) == 3
    assert sampler.rewind(5, 1) == 4


def test_every_window_can_be_drawn_the_last_one_included():
    """11 tokens and windows of 8 inputs and their 8 targets (9 tokens): starts 0, 1 and 2, whose
    last target is the stream's last token."""
    sampler = BatchSampler(counting_stream(11), 8, 4, seed=0)
    batches = [sampler.next_batch() for _ in range(30)]
    assert sorted({s for x, _ in batches for s in x[:, 0].tolist()}) == [0, 1, 2]
    assert max(int(y.max()) for _, y in batches) == 10


def test_each_process_takes_its_own_slice_of_the_one_global_batch():
    """Two processes of 3 windows each: rank 0 takes windows 0-2 and rank 1 windows 3-5 of the
    6 that a single process with a micro-batch of 6 draws from the same seed (token i of the
    stream is i, so a window's first input is its start): the same data whatever the number of
    processes, and no window trained twice in a step."""
    single = starts_of(BatchSampler(counting_stream(), 8, 6, seed=2), 4)
    ranks = [
        starts_of(BatchSampler(counting_stream(), 8, 3, seed=2, rank=r, world_size=2), 4) for r in (0, 1)
    ]
    assert [a + b for a, b in zip(*ranks, strict=True)] == single
    assert all(len(set(batch)) == 6 for batch in single)  # six distinct windows: no overlap to hide


def test_validation_batches_are_the_same_every_time(shakespeare_dir):
    data = load_data(shakespeare_dir)
    first = fixed_batches(data.val, 16, 2, 3, seed=1)
    second = fixed_batches(data.val, 16, 2, 3, seed=1)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second, strict=True))


def test_meta_json_records_counts_and_checksums(shakespeare_dir):
    meta = json.loads((shakespeare_dir / "meta.json").read_text())
    for key in ("tokenizer", "vocab_size", "train_tokens", "val_tokens", "source_sha256", "dtype"):
        assert key in meta
    index = json.loads((shakespeare_dir / "index.json").read_text())
    assert [s["file"] for s in index["train"]] == ["train/000000.bin"]
    assert (shakespeare_dir / "train" / "000000.bin").stat().st_size == meta["train_tokens"]
    digest = hashlib.sha256((shakespeare_dir / "val" / "000000.bin").read_bytes()).hexdigest()
    assert index["val"] == [{"file": "val/000000.bin", "tokens": meta["val_tokens"], "sha256": digest}]


def test_a_folder_written_before_shards_still_loads(shakespeare_dir, tmp_path):
    """Format 1: flat train.bin and val.bin (prompt/response records: masks beside them)."""
    data = load_data(shakespeare_dir)
    old = tmp_path / "old"
    old.mkdir()
    (old / "tokenizer.json").write_bytes((shakespeare_dir / "tokenizer.json").read_bytes())
    meta = {k: v for k, v in data.meta.items() if k not in ("layout", "index")} | {"format": 1}
    masks = {}
    for split in ("train", "val"):
        tokens = np.asarray(getattr(data, split))
        tokens.tofile(old / f"{split}.bin")
        masks[split] = (np.arange(len(tokens)) % 3 == 0).astype(np.uint8)
        masks[split].tofile(old / f"{split}.mask.bin")
    (old / "meta.json").write_text(json.dumps(meta))
    loaded = load_data(old)
    assert np.array_equal(np.asarray(loaded.train), np.asarray(data.train)) and loaded.train.loss_mask is None
    meta["loss_mask"] = {"train": "train.mask.bin", "val": "val.mask.bin"}
    (old / "meta.json").write_text(json.dumps(meta))
    loaded = load_data(old)
    assert np.array_equal(np.asarray(loaded.val.loss_mask), masks["val"])
    assert np.array_equal(np.asarray(loaded.val), np.asarray(data.val))


def test_the_summary_gives_a_small_corpus_its_size(tmp_path, capsys):
    """A corpus of a few notes was '0.0 MB of text', as if nothing had been read."""
    notes = tmp_path / "notes"
    notes.mkdir()
    text = EXCERPT.read_text(encoding="utf-8")
    for i in range(20):
        (notes / f"{i}.md").write_text(text[i * 1500 : (i + 1) * 1500], encoding="utf-8")
    size = sum(len(p.read_bytes()) for p in notes.iterdir())
    argv = [
        "data",
        "prepare",
        "text",
        str(notes),
        "--out",
        str(tmp_path / "d"),
        "--workers",
        "1",
        "--dedup",
        "exact",
    ]
    assert cli.main(argv) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith(f"text: {size / 1e3:.1f} KB of text in 20 documents"), first


def test_the_summary_gives_a_tiny_corpus_its_size_in_bytes(tmp_path, capsys):
    """A first try on two short notes was '0.0 KB of text', as if nothing had been read."""
    notes = tmp_path / "notes"
    notes.mkdir()
    for i, line in enumerate(["To be, or not to be", "that is the question", "whether 'tis nobler"]):
        (notes / f"{i}.txt").write_text(line + "\n")
    size = sum(len(p.read_bytes()) for p in notes.iterdir())
    argv = ["data", "prepare", "text", str(notes), "--out", str(tmp_path / "d"), "--val-fraction", "0.5"]
    assert cli.main([*argv, "--workers", "1", "--no-progress"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert size < 100 and first.startswith(f"text: {size} bytes of text in 3 documents"), first


def test_the_summary_says_one_byte_of_text_in_the_singular(tmp_path, capsys):
    """A folder of a one-character file and an empty one (skipped) read one byte: the summary
    said '1 bytes of text'."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("a")
    (notes / "empty.txt").write_text("")
    argv = ["data", "prepare", "text", str(notes), "--out", str(tmp_path / "d"), "--tokenizer", "byte"]
    assert cli.main([*argv, "--workers", "1", "--no-progress"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("text: 1 byte of text in 1 document "), first


def test_one_text_file_beside_empty_ones_is_cut_and_the_summary_says_they_were_empty(tmp_path, capsys):
    """A folder of one text file and two empty ones (skipped): the one document is cut, and the
    summary said 'one distinct document (the others were copies)', where none was a copy."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text(EXCERPT.read_text()[:5000])
    (notes / "b.txt").write_text("")
    (notes / "c.txt").write_text("")
    argv = ["data", "prepare", "text", str(notes), "--workers", "1", "--no-progress", "--out"]
    assert cli.main([*argv, str(tmp_path / "d")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "copies" not in first, first
    assert "(validation: one document (2 empty files skipped): the last 10% of its tokens)" in first, first
    (notes / "d.txt").write_text(EXCERPT.read_text()[:5000])  # a copy beside them: both are said
    assert cli.main([*argv, str(tmp_path / "d2")]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert "one distinct document (the others were copies; 2 empty files skipped)" in first, first


@pytest.mark.skipif(resource is None, reason="needs RLIMIT_FSIZE")
def test_a_refused_shard_write_is_one_line_with_its_own_fix(tmp_path, capsys):
    """A real refusal: a file size limit (EFBIG; Python ignores SIGXFSZ) that the first shard
    passes. It was an OSError traceback from the shard writer; now one line with the cause's fix
    (errors.write_fix), and once the limit is lifted the same command prepares the folder."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(EXCERPT.read_text() * 2)  # 200 KB: a 200 KB uint8 shard
    out = tmp_path / "data"
    argv = ["data", "prepare", "text", str(corpus), "--tokenizer", "char", "--out", str(out)]
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, hard))
    try:
        assert cli.main(argv) == 2
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert capsys.readouterr().err == (
        f"error: could not write {out}.partial (File too large); lift the file size limit (ulimit -f), "
        "then run the same command again to continue, or choose another --out\n"
    )
    assert not out.exists()
    assert cli.main(argv) == 0
    assert json.loads((out / "meta.json").read_text())["train_tokens"] > 64 << 10


def test_a_damaged_tokenizer_of_a_preparation_stopped_before_its_first_chunk_is_made_again(
    tmp_path, monkeypatch
):
    """Nothing was tokenized with it yet, so nothing is lost by making it again; once shards were
    written with it, it is one line saying to delete OUT.partial (test_cli_errors)."""
    from trickster.data import encode

    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(40):
        (texts / f"{i}.txt").write_text(f"text number {i} says something of its own.\n" * 3)

    def stopped(task):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(encode, "encode_chunk", stopped)
        with pytest.raises(KeyboardInterrupt):
            prepare(sources.text_files([str(texts)]), "char", tmp_path / "o", workers=1, progress=False)
    saved = tmp_path / "o.partial" / "tokenizer.json"
    saved.write_bytes(saved.read_bytes()[: saved.stat().st_size // 2])
    prepare(sources.text_files([str(texts)]), "char", tmp_path / "o", workers=1, progress=False)
    prepare(sources.text_files([str(texts)]), "char", tmp_path / "fresh", workers=1, progress=False)
    for name in ("tokenizer.json", "train/000000.bin", "val/000000.bin"):
        assert (tmp_path / "o" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name


def _rank(text: str) -> int:
    """The 64-bit blake2b hash of a text, by which its split is chosen (docs/data.md), computed here."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def _split_texts(out: Path) -> dict[str, str]:
    """Each split's text, decoded from its shards, documents joined by the end-of-text token's text."""
    tokenizer = load_tokenizer(out / "tokenizer.json")
    return {
        s: tokenizer.decode(
            np.concatenate([np.fromfile(p, np.uint8) for p in sorted((out / s).glob("*.bin"))]).tolist()
        )
        for s in ("train", "val")
    }


def test_ten_files_none_of_which_falls_into_validation_by_hash_move_the_nearest(tmp_path, capsys):
    """Ten notes whose hashes all fall on training's side at --val-fraction 0.1 (a third of such
    folders): preparation refused ('none of its 10 documents fell into validation'). The one whose
    hash is lowest goes to validation, the same one whatever the files are named."""
    text = EXCERPT.read_text(encoding="utf-8")
    notes = [text[i * 300 : (i + 1) * 300] for i in range(10)]
    assert all(_rank(note) >= 0.1 * 2**64 for note in notes)  # none falls into validation by hash
    nearest = min(notes, key=_rank)
    for name in ("a", "b"):
        folder = tmp_path / f"notes-{name}"
        folder.mkdir()
        for i, note in enumerate(notes):
            (folder / f"{name}{(i * 7) % 10 if name == 'b' else i}.txt").write_text(note, encoding="utf-8")
        out = tmp_path / f"d-{name}"
        assert cli.main(["data", "prepare", "text", str(folder), "--out", str(out), "--no-progress"]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[1] == (
            "validation: 1 of 10 documents (none fell there by hash at --val-fraction 0.1; the nearest was "
            "moved)"
        )
        split = _split_texts(out)
        assert nearest in split["val"] and nearest not in split["train"]
        assert all(note in split["train"] for note in notes if note != nearest)
        meta = json.loads((out / "meta.json").read_text())
        assert (meta["train_documents"], meta["val_documents"]) == (9, 1)


def test_two_files_that_both_fall_into_validation_by_hash_move_the_nearest_to_training(tmp_path, capsys):
    """At --val-fraction 0.99 two notes whose hashes both fall on validation's side: preparation was
    refused ('all 2 of its documents fell into validation'). The one whose hash is highest goes to
    training."""
    notes = [f"note number {i} about nothing in particular\n" for i in range(2)]
    assert all(_rank(note) < 0.99 * 2**64 for note in notes)  # both fall into validation by hash
    folder = tmp_path / "notes"
    folder.mkdir()
    for i, note in enumerate(notes):
        (folder / f"{i}.txt").write_text(note, encoding="utf-8")
    argv = ["data", "prepare", "text", str(folder), "--val-fraction", "0.99", "--out", str(tmp_path / "d")]
    assert cli.main([*argv, "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == (
        "training: 1 of 2 documents (all fell into validation by hash at --val-fraction 0.99; the nearest "
        "was moved)"
    )
    split = _split_texts(tmp_path / "d")
    highest = max(notes, key=_rank)
    assert highest in split["train"] and highest not in split["val"]
    assert min(notes, key=_rank) in split["val"]


def test_a_preparation_stopped_after_moving_the_nearest_continues_to_the_same_folder(tmp_path, monkeypatch):
    """Stopped while the ten notes are read again with the nearest moved (a note a chunk: chunks 11
    to 20), the same command continues to the folder an unstopped one writes."""
    from trickster.data import encode as encode_module

    from .test_data_streaming import Interrupt

    text = EXCERPT.read_text(encoding="utf-8")
    folder = tmp_path / "notes"
    folder.mkdir()
    for i in range(10):
        (folder / f"{i}.txt").write_text(text[i * 300 : (i + 1) * 300], encoding="utf-8")

    def run(out):
        texts = sources.text_files([str(folder)])
        return prepare(
            texts, "char", tmp_path / out, chunk_chars=300, shard_tokens=500, workers=1, echo=print
        )

    reference = run("ref")
    assert (reference["train_documents"], reference["val_documents"]) == (9, 1)
    monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=13))
    with pytest.raises(KeyboardInterrupt):
        run("out")
    monkeypatch.undo()
    record = json.loads((tmp_path / "out.partial" / "progress.json").read_text())
    assert record["moved"]["to"] == "val" and record["next_document"] == 3
    assert run("out")["tokens_sha256"] == reference["tokens_sha256"]
