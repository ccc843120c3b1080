"""A single text file read in blocks and tokenized in pieces (data/documents.py, textfile.text_blocks):
the folder is the one that reading the file whole gives, whatever the block size, for every
tokenizer; errors name the same byte; memory stays bounded by a block, not by the file; a stopped
preparation continues; a bar shows the reading as it goes."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import random
import tracemalloc

import numpy as np
import pytest

from trickster.data import documents, sources, textfile
from trickster.data import encode as encode_module
from trickster.data.loader import load_data
from trickster.data.new_tokenizer import build_tokenizer
from trickster.data.prepare import prepare
from trickster.data.tokenizers import BPETokenizer, HFTokenizer
from trickster.errors import Interrupted, UserError

from .conftest import EXCERPT, QUIET
from .test_data_streaming import Interrupt
from .test_tokenizers import gpt2_or_skip

ENCODE_CHUNK = encode_module.encode_chunk


def awkward_text() -> str:
    """The excerpt with what a cut could break: line endings of Windows ("\\r\\n") and old Macs
    ("\\r"), characters of 2, 3 and 4 bytes, blanks at either end of lines, blank lines, no-break
    spaces before line breaks, a byte-order mark first and another inside; and a line of 200 lines
    (cut at its spaces), runs of blanks, and a long word."""
    rng = random.Random(0)
    lines = []
    for line in EXCERPT.read_text(encoding="utf-8").split("\n")[:1500]:
        extra = rng.choice(["", "", "  ", " é中😀", "\u00a0", "\t", "\ufeffx"])
        lines.append((" " if rng.random() < 0.1 else "") + line + extra)
    long_line = "  ".join(lines[1000:1200]) + " \t " + "x" * 300 + "   \n\n \n"
    return (
        "\ufeff"
        + "\r\n".join(lines[:600])
        + "\r"
        + "\r".join(lines[600:1000])
        + "\n"
        + long_line
        + "\n".join(lines[1200:])
    )


def small_blocks(monkeypatch, size: int) -> None:
    monkeypatch.setattr(textfile, "BLOCK_BYTES", size)
    monkeypatch.setattr(documents, "BLOCK_BYTES", size)


def whole_reading(path, kind, tokenizer, val_fraction=0.1):
    """What reading the file whole gives, counted here without the pieces: the text, and each
    split's tokens ([start] text [end]) cut at the last val_fraction of its characters."""
    text = textfile.read_text(path)
    cut = int(len(text) * (1 - val_fraction))
    start, end = tokenizer.start_ids(), [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    return text, cut, [start + tokenizer.encode(part) + end for part in (text[:cut], text[cut:])]


def counting_chunks(monkeypatch) -> list[int]:
    calls = []

    def counted(task):
        calls.append(len(task.documents))
        return ENCODE_CHUNK(task)

    monkeypatch.setattr(encode_module, "encode_chunk", counted)
    return calls


def bpe_as_hf(prefix_space: bool) -> HFTokenizer:
    """An imported byte-level BPE (bpe's own tokenizer.json), with or without a space put before
    every text, which makes the tokens of a piece differ from the same text inside the whole."""
    spec = copy.deepcopy(BPETokenizer.train([EXCERPT.read_text(encoding="utf-8")], 400).tokenizer_json)
    spec["pre_tokenizer"]["add_prefix_space"] = prefix_space
    return HFTokenizer(spec, {"eos_token": "<|endoftext|>"})


KINDS = ["char", "byte", "bpe", "gpt2", "hf", "hf-prefix-space"]


@pytest.mark.parametrize(
    ("kind", "packed"), [*((kind, False) for kind in KINDS), ("char", True)], ids=[*KINDS, "char-gz"]
)
def test_a_file_read_in_small_blocks_gives_what_reading_it_whole_gave(kind, packed, tmp_path, monkeypatch):
    if kind == "gpt2":
        gpt2_or_skip()
    raw = awkward_text().encode("utf-8")
    path = tmp_path / ("text.txt.gz" if packed else "text.txt")
    path.write_bytes(gzip.compress(raw) if packed else raw)
    chosen = {"hf": bpe_as_hf(False), "hf-prefix-space": bpe_as_hf(True)}.get(kind, kind)
    size = {"vocab_size": 1000} if kind == "bpe" else {}
    whole = prepare(sources.text_files([str(path)]), chosen, tmp_path / "whole", **size, **QUIET)

    small_blocks(monkeypatch, 61)  # an odd size: "\r\n" and characters of 2-4 bytes are cut in two
    chunks = counting_chunks(monkeypatch)
    meta = prepare(
        sources.text_files([str(path)]),
        chosen,
        tmp_path / "pieces",
        workers=1,
        chunk_chars=300,
        **size,
        **QUIET,
    )
    # tokenized in many pieces, or (a tokenizer a cut could change) each split whole
    assert len(chunks) > 100 if kind != "hf-prefix-space" else chunks == [1, 1]
    data = load_data(tmp_path / "pieces")
    text, cut, (train, val) = whole_reading(path, kind, data.tokenizer)
    assert np.asarray(data.train).tolist() == train and np.asarray(data.val).tolist() == val
    if kind == "char":
        assert data.tokenizer.chars == "".join(sorted(set(text))) and "\ufeff" in data.tokenizer.chars
    if kind == "bpe":
        assert data.tokenizer.to_dict() == BPETokenizer.train([text], 1000).to_dict()
    assert documents.cuts_safely(data.tokenizer) == (kind != "hf-prefix-space")
    assert (meta["train_chars"], meta["val_chars"], meta["documents_read"]) == (cut, len(text) - cut, 2)
    assert meta["train_bytes"] + meta["val_bytes"] == meta["input_bytes"] == len(text.encode("utf-8"))
    assert meta["source_sha256"] == hashlib.sha256(raw).hexdigest()
    assert {k: v for k, v in meta.items() if k != "created"} == {
        k: v for k, v in whole.items() if k != "created"
    }
    for name in ("index.json", "tokenizer.json"):
        assert (tmp_path / "pieces" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()


def test_the_blocks_are_the_text_read_whole_and_fail_as_it_does(tmp_path):
    """Random bytes, many of them broken, read in blocks of every small size: the same text, or the
    same error line (the bad byte at its offset in the whole file, a NUL, a UTF-16 mark)."""
    rng = random.Random(1)
    parts = [b"ab", b"\r", b"\n", b"\r\n", "é".encode(), "中".encode(), "😀".encode(), b"\xef\xbb\xbf"]
    broken = [b"\xff", b"\x00", b"\xe2\x82", b"\xff\xfe"]
    path = tmp_path / "sample.txt"

    def outcome(read):
        try:
            return read()
        except UserError as err:
            return f"error: {err}"

    for trial in range(300):
        pieces = rng.choices(parts, k=rng.randint(0, 40))
        if trial % 3:
            pieces.insert(rng.randint(0, len(pieces)), rng.choice(broken))
        path.write_bytes(b"".join(pieces))
        expected = outcome(lambda: textfile.read_text(path))
        for size in (1, 4, 5, 7, 64):
            digest = hashlib.sha256()
            got = outcome(lambda: "".join(textfile.text_blocks(path, digest, size)))  # noqa: B023
            assert got == expected, (b"".join(pieces), size)
            assert digest.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("packed", [False, True], ids=["plain", "gz"])
def test_a_bad_byte_deep_in_a_later_block_is_named_by_its_offset_in_the_file(packed, tmp_path, monkeypatch):
    line = "a line of text, é and 中\n".encode()
    head = line * 2000
    offset = len(head) + 7  # the bad byte, far past the first block
    raw = head + line[:7] + b"\xff" + line * 50
    path = tmp_path / ("bad.txt.gz" if packed else "bad.txt")
    path.write_bytes(gzip.compress(raw) if packed else raw)
    small_blocks(monkeypatch, 256)
    with pytest.raises(UserError, match=rf"^{path} is not UTF-8 text \(bad byte at offset {offset}\)"):
        prepare(sources.text_files([str(path)]), "char", tmp_path / "out", **QUIET)
    late_nul = head + b"tail \0 NUL\n"  # a NUL byte late in the file: the line of the file read whole
    path.write_bytes(gzip.compress(late_nul) if packed else late_nul)
    with pytest.raises(UserError) as caught:
        prepare(sources.text_files([str(path)]), "char", tmp_path / "out", **QUIET)
    assert f"holds a NUL byte (at offset {len(head) + 5})" in str(caught.value)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


@pytest.mark.parametrize("files", [1, 2], ids=["one-file", "two-files"])
def test_a_file_that_is_no_text_leaves_nothing_to_continue_after_tokenizing(files, tmp_path, monkeypatch):
    """Tokenizing starts before the NUL near the end is read: among files (a folder holding a
    binary file), or for one file without a validation split to count first (the library's
    val_fraction=0; the command refuses it). The preparation had recorded a file or pieces when it
    failed, yet the file must change before it can succeed, and with it the settings DIR.partial
    was made for."""
    good = "a line of text\n" * 2000
    paths = [tmp_path / f"{n}.txt" for n in range(files)]
    for path in paths[:-1]:
        path.write_text(good, encoding="utf-8")
    paths[-1].write_bytes(good.encode() + b"tail \0 NUL\n")
    small_blocks(monkeypatch, 256)
    tokenized = counting_chunks(monkeypatch)
    with pytest.raises(UserError, match="holds a NUL byte"):
        source = sources.text_files([str(p) for p in paths])
        prepare(source, "byte", tmp_path / "out", val_fraction=0.0, chunk_chars=1_000, workers=1, **QUIET)
    assert tokenized, "the NUL was met before anything was tokenized: this test checks nothing"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()


def test_a_damaged_archive_leaves_nothing_to_continue_and_once_whole_it_prepares(tmp_path, monkeypatch):
    """A .gz cut short (a download that stopped) among files is met when its end is read, after the
    files before it were tokenized; it must be downloaded again, which changes the settings
    DIR.partial was made for: that was kept, and the same command then refused to go on ('holds
    an unfinished preparation with other settings') until DIR.partial was deleted by hand. (A
    single file meets it in its counting pass, before tokenizing: nothing is kept.)"""
    good = [f"line {n} of a text\n" * 500 for n in range(8)]
    paths = [tmp_path / f"{n}.txt" for n in range(len(good))] + [tmp_path / "last.txt.gz"]
    for path, text in zip(paths[:-1], good, strict=True):
        path.write_text(text, encoding="utf-8")
    whole = gzip.compress(("the last file\n" * 4000).encode())
    paths[-1].write_bytes(whole[: len(whole) * 3 // 4])
    tokenized = counting_chunks(monkeypatch)

    def run():
        source = sources.text_files([str(p) for p in paths])
        return prepare(source, "byte", tmp_path / "out", chunk_chars=1_000, workers=1, **QUIET)

    with pytest.raises(UserError, match=f"^{paths[-1]} cannot be decompressed"):
        run()
    assert tokenized, "the archive's end was met before anything was tokenized: this test checks nothing"
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.partial").exists()
    paths[-1].write_bytes(whole)  # downloaded again
    meta = run()
    assert meta["train_documents"] + meta["val_documents"] == len(paths)


def test_memory_is_bounded_by_a_block_not_by_the_file(tmp_path, monkeypatch):
    import tqdm  # noqa: F401  (imported before the count: only the preparation's memory is measured)

    from trickster.data import summary  # noqa: F401  (imported by prepare at the end)

    text = EXCERPT.read_text(encoding="utf-8")
    path = tmp_path / "big.txt"
    path.write_text(text * 50, encoding="utf-8")  # 6 MB: 192 blocks of 32 KiB
    small_blocks(monkeypatch, 32 << 10)
    tracemalloc.start()
    try:
        meta = prepare(
            sources.text_files([str(path)]), "char", tmp_path / "out", workers=1, chunk_chars=32_000, **QUIET
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert meta["train_chars"] + meta["val_chars"] == len(text) * 50
    # read whole: 6 MB of bytes, as much again decoded, and its ids a list of 8 bytes each (142 MB)
    size = path.stat().st_size
    assert peak < size / 2, f"peak {peak:,} bytes of Python memory for a {size:,}-byte file"


def test_a_stopped_preparation_of_one_file_continues_from_its_last_piece(tmp_path, monkeypatch, capsys):
    path = tmp_path / "text.txt"
    path.write_bytes(awkward_text().encode("utf-8"))
    small_blocks(monkeypatch, 997)
    settings = {"shard_tokens": 5_000, "chunk_chars": 1_000, "workers": 1}
    whole = prepare(sources.text_files([str(path)]), "byte", tmp_path / "whole", **settings, **QUIET)

    out = tmp_path / "out"
    monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=20))
    with pytest.raises(Interrupted, match="finished shard"):
        prepare(sources.text_files([str(path)]), "byte", out, **settings, **QUIET)
    record = json.loads((tmp_path / "out.partial" / "progress.json").read_text())
    assert record["next_document"] == 0 and record["next_piece"] > 20  # inside the training split
    rest = Interrupt(after=None)
    monkeypatch.setattr(encode_module, "encode_chunk", rest)
    meta = prepare(sources.text_files([str(path)]), "byte", out, **settings, echo=print)
    pieces = f"{record['next_piece']:,} piece{'' if record['next_piece'] == 1 else 's'}"
    assert f"0 documents and {pieces} of the next done" in capsys.readouterr().out
    everything = Interrupt(after=None)
    monkeypatch.setattr(encode_module, "encode_chunk", everything)
    prepare(sources.text_files([str(path)]), "byte", tmp_path / "again", **settings, **QUIET)
    assert rest.calls + 20 == everything.calls  # no piece tokenized twice
    assert meta["tokens_sha256"] == whole["tokens_sha256"]
    assert (out / "index.json").read_bytes() == (tmp_path / "whole" / "index.json").read_bytes()


def test_worker_processes_tokenize_the_pieces_of_one_file_alike(tmp_path, monkeypatch):
    path = tmp_path / "text.txt"
    path.write_bytes(awkward_text().encode("utf-8"))
    one = prepare(sources.text_files([str(path)]), "byte", tmp_path / "one", workers=1, **QUIET)
    small_blocks(monkeypatch, 4096)
    pools = []
    real = encode_module.multiprocessing.get_context
    monkeypatch.setattr(
        encode_module.multiprocessing, "get_context", lambda how: pools.append(how) or real(how)
    )
    two = prepare(
        sources.text_files([str(path)]), "byte", tmp_path / "two", workers=2, chunk_chars=4000, **QUIET
    )
    assert pools == ["spawn"] and two["tokens_sha256"] == one["tokens_sha256"]


def test_the_bars_show_the_one_file_read_and_tokenized_as_it_goes(tmp_path, monkeypatch):
    import tqdm

    bars = []

    class Recorded(tqdm.tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = False  # as on a terminal
            super().__init__(*args, **{**kwargs, "file": open(tmp_path / "bars", "a")})  # noqa: SIM115
            self.steps = []
            bars.append(self)

        def update(self, n=1):
            self.steps.append(n)
            return super().update(n)

    monkeypatch.setattr(tqdm, "tqdm", Recorded)
    path = tmp_path / "text.txt"
    path.write_bytes(awkward_text().encode("utf-8"))
    small_blocks(monkeypatch, 1024)
    meta = prepare(
        sources.text_files([str(path)]), "char", tmp_path / "out", chunk_chars=1000, progress=True, **QUIET
    )
    seen = {bar.desc: bar.steps for bar in bars}
    assert set(seen) == {"reading for the char tokenizer", "counting characters", "tokenizing"}
    size = path.stat().st_size
    assert meta["input_bytes"] < size  # the text's "\r\n" read as "\n"
    for desc, steps in seen.items():
        assert len(steps) > 20, desc  # many steps, not one at the end
        # each step the text read; the last the rest of the file's size, when the pass is done
        assert sum(steps[:-1]) == meta["input_bytes"] and sum(steps) == size, desc
    assert all(bar.total == size for bar in bars)


ADDED = {"id": 400, "content": "<x>", "single_word": False, "lstrip": False, "rstrip": False}
ADDED |= {"normalized": False, "special": False}


def test_a_tokenizer_that_a_cut_would_change_is_given_each_split_whole():
    assert documents.cuts_safely(build_tokenizer("byte", [], False))
    assert documents.cuts_safely(bpe_as_hf(False)) and not documents.cuts_safely(bpe_as_hf(True))
    spec = bpe_as_hf(False).tokenizer_json
    for change in (
        {"normalizer": {"type": "NFC"}},
        {"added_tokens": [*spec["added_tokens"], {**ADDED, "content": ".\n"}]},
        {"added_tokens": [*spec["added_tokens"], {**ADDED, "rstrip": True}]},
        {"added_tokens": [*spec["added_tokens"], {**ADDED, "content": "of the"}]},  # a long line's cut
        {"pre_tokenizer": {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}},
    ):
        assert not documents.cuts_safely(HFTokenizer({**spec, **change}, {})), change


def test_an_added_token_holding_a_space_keeps_its_ids_where_a_long_line_is_cut_at_its_spaces():
    """A line longer than a block is cut before a space: an added token "of the" that a cut falls
    inside is one id in the whole text, and two pieces' ids apart. cuts_safely says so, or the ids
    of the pieces joined are the whole text's."""
    spec = bpe_as_hf(False).tokenizer_json
    tokenizer = HFTokenizer(
        {**spec, "added_tokens": [*spec["added_tokens"], {**ADDED, "content": "of the"}]}, {}
    )
    text = EXCERPT.read_text(encoding="utf-8").replace("\n", " ")[:20_000]
    for size in (61, 97, 131, 257):
        pieces = documents.cut_pieces(text[i : i + size] for i in range(0, len(text), size))
        joined = [i for piece in pieces for i in tokenizer.encode(piece)]
        assert not documents.cuts_safely(tokenizer) or joined == tokenizer.encode(text), size


def test_a_line_longer_than_a_block_is_cut_at_its_spaces_and_a_text_without_blanks_is_held():
    line = EXCERPT.read_text(encoding="utf-8").replace("\n", " ")
    pieces = list(documents.cut_pieces(line[i : i + 100] for i in range(0, len(line), 100)))
    assert "".join(pieces) == line and len(pieces) > len(line) / 200
    assert max(map(len, pieces)) < 200 and all(p[0] == " " and p[-1] != " " for p in pieces[1:-1])
    word = "x" * 1000  # nowhere to cut: held whole, as one piece
    assert list(documents.cut_pieces(word[i : i + 100] for i in range(0, 1000, 100))) == [word]


def test_cuts_fall_only_where_gpt2_and_bpe_split_the_text_anyway():
    """Every place cut_pieces may cut, in random text of letters, blanks of all kinds, digits,
    marks and punctuation: the ids of the two sides joined are the ids of the whole."""
    rng = random.Random(2)
    alphabet = [*"ab  \n\n\t.1's中é", "\u00a0", "\u2028", "\u0301", "\u3000", "\x1c", "\x85", "ll", "\u200b"]
    texts = ["".join(rng.choices(alphabet, k=rng.randint(1, 30))) for _ in range(1500)]
    checked = [BPETokenizer.train(texts, 300)]
    try:
        checked.append(gpt2_or_skip())
    except pytest.skip.Exception:  # without tiktoken's cache, bpe alone
        pass
    cuts = 0
    for text in texts:
        pieces = list(documents.cut_pieces(text[i : i + 3] for i in range(0, len(text), 3)))
        assert "".join(pieces) == text
        for at in np.cumsum([len(p) for p in pieces[:-1]]):
            cuts += 1
            for tokenizer in checked:
                apart = tokenizer.encode(text[:at]) + tokenizer.encode(text[at:])
                assert tokenizer.encode(text) == apart, (tokenizer.kind, text, at)
    assert cuts > 300
