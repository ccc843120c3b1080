"""Several text files, each larger than a block read in blocks and tokenized in pieces
(documents.large_pieces, pending.py): the folder is the one that reading each file whole gives
(splits, exact and near copies, blanks, tokens, counts), for every tokenizer; memory stays bounded
by a block; a preparation stopped inside a file continues to the same folder; bpe learns from the
first characters of a single file as of several."""

from __future__ import annotations

import gzip
import json
import random
import tracemalloc

import pytest

from trickster.data import dedup, documents, sources, textfile
from trickster.data import encode as encode_module
from trickster.data import prepare as prepare_module
from trickster.data.encode import in_validation
from trickster.data.prepare import prepare
from trickster.data.tokenizers import BPETokenizer
from trickster.errors import Interrupted

from .conftest import EXCERPT, QUIET
from .test_data_pieces import KINDS, awkward_text, bpe_as_hf, counting_chunks, small_blocks
from .test_data_streaming import Interrupt
from .test_tokenizers import gpt2_or_skip

GREEK = "ΟΔΥΣΣΕΥΣ ΚΑΙ ΑΧΙΛΛΕΥΣ ΛΟΓΟΣ\nΣΟΦΙΑΣ ΤΕΛΟΣ, Ὀδυσσεύς.\n"


def several_files(folder) -> list[str]:
    """Large files (awkward text with "\\r\\n" and characters cut by blocks, a .gz, an exact copy
    with other blanks, a near-copy, blanks only, Greek capitals whose final sigma lower() changes)
    among small ones (an empty file, short notes)."""
    folder.mkdir()
    text = awkward_text()
    lines = EXCERPT.read_text(encoding="utf-8").split("\n")
    other = "\n".join(lines[1500:2600]) + "\n"
    near = other.split("\n")
    near[300] = "a line that only the near-copy has"
    rng = random.Random(3)
    files = {
        "a.txt": text.encode("utf-8"),
        "b.txt.gz": gzip.compress(other.encode("utf-8")),
        "c.txt": b"a short note\r\n",
        "d.txt": ("  ".join(text.split()) + " \n").encode("utf-8"),  # a's words: an exact copy
        "e.txt": "\n".join(near).encode("utf-8"),  # a near-copy of b
        "f.txt": b" \n\t \r\n" * 300,  # blanks only: no text to learn
        "g.txt": b"",
        "h.txt": (GREEK * 40).encode("utf-8"),
    }
    for n in range(12):
        files[f"note{n:02d}.txt"] = "\n".join(rng.sample(lines, 5)).encode("utf-8")
    for name, raw in files.items():
        (folder / name).write_bytes(raw)
    return [str(folder)]


def meta_without_date(meta: dict) -> dict:
    return {k: v for k, v in meta.items() if k != "created"}


@pytest.mark.parametrize("kind", KINDS)
def test_files_read_in_small_blocks_give_what_reading_each_whole_gave(kind, tmp_path, monkeypatch):
    if kind == "gpt2":
        gpt2_or_skip()
    paths = several_files(tmp_path / "texts")
    chosen = {"hf": bpe_as_hf(False), "hf-prefix-space": bpe_as_hf(True)}.get(kind, kind)
    settings = {"val_fraction": 0.3, "workers": 1, "chunk_chars": 300, **QUIET}
    settings |= {"vocab_size": 1000} if kind == "bpe" else {}
    whole = prepare(sources.text_files(paths), chosen, tmp_path / "whole", **settings)  # each < 1 MiB

    small_blocks(monkeypatch, 61)  # an odd size: "\r\n" and characters of 2-4 bytes are cut in two
    chunks = counting_chunks(monkeypatch)
    meta = prepare(sources.text_files(paths), chosen, tmp_path / "pieces", **settings)
    # in many pieces, or (a tokenizer a cut could change) each file whole, a chunk or so each
    assert len(chunks) > 300 if kind != "hf-prefix-space" else len(chunks) < 30
    assert meta_without_date(meta) == meta_without_date(whole)
    for name in ("index.json", "tokenizer.json"):
        assert (tmp_path / "pieces" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    found = meta["dedup"]
    assert (found["exact_dropped"], found["near_found"], found["blank_dropped"]) == (1, 1, 1)
    assert meta["documents_read"] == 19 and meta["val_documents"] > 0


@pytest.mark.parametrize("mode", ["near", "exact", "keep"])
def test_every_dedup_mode_decides_a_file_in_pieces_as_the_file_whole(mode, tmp_path, monkeypatch):
    paths = several_files(tmp_path / "texts")
    keep = mode == "keep"
    chosen = dedup.DedupSettings("exact" if keep else mode, keep_duplicates=keep)
    settings = {"val_fraction": 0.3, "workers": 1, "chunk_chars": 500, "dedup_settings": chosen, **QUIET}
    whole = prepare(sources.text_files(paths), "byte", tmp_path / "whole", **settings)
    small_blocks(monkeypatch, 97)
    meta = prepare(sources.text_files(paths), "byte", tmp_path / "pieces", **settings)
    assert meta_without_date(meta) == meta_without_date(whole)
    assert meta["dedup"]["exact_found"] == 1


def test_a_file_in_pieces_lands_where_its_whole_text_says(tmp_path, monkeypatch):
    """Counted here from the texts: the split by the hash of each whole text, the copies dropped."""
    paths = several_files(tmp_path / "texts")
    small_blocks(monkeypatch, 61)
    source = sources.text_files(paths)
    meta = prepare(source, "byte", tmp_path / "out", val_fraction=0.3, chunk_chars=300, **QUIET)
    texts = {p.name: textfile.read_text(p) for p in sorted((tmp_path / "texts").iterdir())}
    kept = {name: t for name, t in texts.items() if t.strip() and name not in ("d.txt", "e.txt")}
    val = [t for t in kept.values() if in_validation(t, 0.3)]
    b_side = in_validation(texts["b.txt.gz"], 0.3)  # the near-copy e follows b
    assert meta["val_documents"] == len(val) + b_side
    assert meta["val_chars"] == sum(map(len, val)) + b_side * len(texts["e.txt"])
    assert meta["train_documents"] + meta["val_documents"] == len(kept) + 1


def test_pieces_carry_the_whole_text_s_split_fingerprint_and_signature(tmp_path, monkeypatch):
    """Random texts of few and many words, in blocks of every small size: the last piece's split
    and fingerprint, and the minimum of the pieces' signatures, are those of the text whole."""
    rng = random.Random(4)
    words = ["ΟΔΟΣ", "λόγος", "a", "b's", "中文", "x" * 30, "é", "ΣΑΣ.", "1.5"]
    blanks = [" ", "  ", "\n", " \n", "\t", "\u00a0", "\u3000 "]
    path = tmp_path / "t.txt"
    for trial in range(150):
        n = rng.choice([0, 1, 3, 4, 5, 6, 12, 60])
        text = "".join(rng.choice(words) + rng.choice(blanks) for _ in range(n))
        text = rng.choice(["", " ", "\n"]) + text + rng.choice(["", "\n\n  "])
        path.write_text(text, encoding="utf-8", newline="")
        small_blocks(monkeypatch, rng.choice([4, 7, 16, 33]))
        pieces = list(documents.large_pieces(textfile.LargeText(path)))
        read = textfile.read_text(path)
        if not read:
            assert pieces == []
            continue
        assert "".join(p.text for p, _ in pieces) == read
        last, split = pieces[-1]
        assert last.last and all(not p.last for p, _ in pieces[:-1]) and pieces[0][0].first
        assert split is None and (last.rank < 2**63) == in_validation(read, 0.5)  # decided with the others
        assert last.fingerprint == dedup.fingerprint(read)
        signed = dedup.signatures([encode_module._shingled(p) for p, _ in pieces]).min(axis=0)
        assert (signed == dedup.signature(read)).all(), (trial, text)


def test_memory_is_bounded_by_a_block_among_several_files(tmp_path, monkeypatch):
    import tqdm  # noqa: F401  (imported before the count: only the preparation's memory is measured)

    from trickster.data import summary  # noqa: F401  (imported by prepare at the end)

    lines = EXCERPT.read_text(encoding="utf-8").split("\n")
    folder = tmp_path / "texts"
    folder.mkdir()
    # 6 MB each, 192 blocks of 32 KiB; --dedup exact: MinHash's temporaries (8 MB) are not the reading's
    for n in range(2):
        shuffled = random.Random(n).choices(lines, k=len(lines) * 50)
        (folder / f"big{n}.txt").write_text("\n".join(shuffled), encoding="utf-8")
    for n in range(10):  # some on either side of the split
        (folder / f"small{n}.txt").write_text("\n".join(lines[n * 10 : n * 10 + 10]), encoding="utf-8")
    small_blocks(monkeypatch, 32 << 10)
    tracemalloc.start()
    try:
        meta = prepare(
            sources.text_files([str(folder)]), "char", tmp_path / "out", workers=1, chunk_chars=32_000,
            val_fraction=0.5, dedup_settings=dedup.DedupSettings("exact"), **QUIET,
        )  # fmt: skip
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert meta["documents_read"] == 12
    size = (folder / "big0.txt").stat().st_size
    assert peak < size / 2, f"peak {peak:,} bytes of Python memory for files of {size:,} bytes"


def test_a_preparation_stopped_inside_a_file_continues_to_the_same_folder(tmp_path, monkeypatch, capsys):
    paths = several_files(tmp_path / "texts")
    small_blocks(monkeypatch, 997)
    settings = {"val_fraction": 0.3, "shard_tokens": 5_000, "chunk_chars": 1_000, "workers": 1}
    whole = prepare(sources.text_files(paths), "byte", tmp_path / "whole", **settings, **QUIET)

    out = tmp_path / "out"
    # inside a.txt; inside b.txt.gz, begun in the chunk that ended a.txt (its tokens after a's in
    # pending.bin); inside d.txt, a's copy, dropped at its last piece
    for after in (15, 10, 30):  # chunks: 15, 25, 55 in all
        monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=after))
        with pytest.raises(Interrupted, match="finished shard"):
            prepare(sources.text_files(paths), "byte", out, **settings, **QUIET)
        record = json.loads((tmp_path / "out.partial" / "progress.json").read_text())
        assert record["pending"]["tokens"] > 0 and record["next_piece"] > 0
    rest = Interrupt(after=None)
    monkeypatch.setattr(encode_module, "encode_chunk", rest)
    hashed, large_pieces = {}, documents.large_pieces

    def recorded(text, facts=True):
        hashed[text.path.name] = facts
        return large_pieces(text, facts)

    monkeypatch.setattr(documents, "large_pieces", recorded)
    meta = prepare(sources.text_files(paths), "byte", out, **settings, echo=print)
    # the files decided before the stop are read again (to skip them) but not hashed
    later = dict.fromkeys(["d.txt", "e.txt", "f.txt", "h.txt"], True)  # d.txt: stopped inside it
    assert hashed == {"a.txt": False, "b.txt.gz": False} | later
    monkeypatch.setattr(documents, "large_pieces", large_pieces)
    pieces = f"{record['next_piece']:,} piece{'' if record['next_piece'] == 1 else 's'}"
    assert f"{pieces} of the next done" in capsys.readouterr().out
    everything = Interrupt(after=None)
    monkeypatch.setattr(encode_module, "encode_chunk", everything)
    prepare(sources.text_files(paths), "byte", tmp_path / "again", **settings, **QUIET)
    assert rest.calls + 55 == everything.calls  # no piece tokenized twice
    assert meta_without_date(meta) == meta_without_date(whole)
    assert (out / "index.json").read_bytes() == (tmp_path / "whole" / "index.json").read_bytes()
    assert not (out / "pending.bin").exists()


@pytest.mark.parametrize("files", [1, 3], ids=["one-file", "several-files"])
def test_bpe_learns_from_the_first_characters_of_one_file_as_of_several(files, tmp_path, monkeypatch):
    text = EXCERPT.read_text(encoding="utf-8")
    folder = tmp_path / "texts"
    folder.mkdir()
    for n in range(files):
        (folder / f"{n}.txt").write_text(text, encoding="utf-8")
    small_blocks(monkeypatch, 4096)
    monkeypatch.setattr(prepare_module, "TOKENIZER_SAMPLE_CHARS", 30_000)
    seen = []
    train = BPETokenizer.train

    def recorded(texts, vocab_size=None):
        texts = list(texts)
        seen.append(texts)
        return train(texts, vocab_size)

    monkeypatch.setattr(BPETokenizer, "train", recorded)
    prepare(sources.text_files([str(folder)]), "bpe", tmp_path / "out", vocab_size=300, **QUIET)
    learned = "".join(seen[0])
    assert text.startswith(learned) and 30_000 <= len(learned) < 30_000 + 2 * 4096
    if files == 1:  # under the sample's size, all of it, as before
        monkeypatch.setattr(prepare_module, "TOKENIZER_SAMPLE_CHARS", len(text))
        prepare(sources.text_files([str(folder)]), "bpe", tmp_path / "all", vocab_size=300, **QUIET)
        assert "".join(seen[1]) == text
