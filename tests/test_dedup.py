"""Duplicates in `data prepare`: exact copies dropped, near-copies kept on one side of the split (or
dropped), prompt/response records too; resumable and independent of the number of workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trickster import cli
from trickster.data import dedup, sources
from trickster.data import encode as encode_module
from trickster.data.dedup import DedupSettings
from trickster.data.loader import load_data
from trickster.data.prepare import in_validation, partial_dir, prepare, prepare_records
from trickster.data.records import Records
from trickster.data.shards import ShardWriter
from trickster.data.sources import text_files

from .conftest import EXCERPT
from .test_data_streaming import Interrupt

WORDS = (
    "river stone lantern meadow copper whistle harbor ember thistle orchard velvet falcon quarry "
    "saddle timber glacier marble pepper canyon willow beacon cobalt dune fern garnet hollow ivory "
    "juniper kettle lagoon mantle nectar oasis pebble quill raven sable tundra umber vessel wander"
).split()


def document(rng: np.random.Generator, lines: int = 30) -> str:
    """Three paragraphs of random lines: distinct documents share almost no 5-word shingle."""
    rows = [" ".join(rng.choice(WORDS, size=10)) for _ in range(lines)]
    third = lines // 3
    return (
        "\n".join(rows[:third])
        + "\n\n"
        + "\n".join(rows[third : 2 * third])
        + "\n\n"
        + "\n".join(rows[2 * third :])
        + "\n"
    )


def one_line_changed(text: str, rng: np.random.Generator) -> str:
    rows = text.split("\n")
    rows[4] = " ".join(rng.choice(WORDS, size=10))
    return "\n".join(rows)


def paragraphs_reordered(text: str) -> str:
    paragraphs = text.rstrip("\n").split("\n\n")
    return "\n\n".join(paragraphs[1:] + paragraphs[:1]) + "\n"


def write(folder, texts):
    folder.mkdir(parents=True, exist_ok=True)
    for i, text in enumerate(texts):
        (folder / f"{i:04d}.txt").write_text(text)
    return sources.text_files([str(folder)])


def rank(text: str) -> int:
    """The 64-bit blake2b hash by which a text's split is chosen (docs/data.md), computed here."""
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def split_documents(data, stream) -> list[str]:
    ids = np.asarray(stream).astype(np.int64)
    ends = np.flatnonzero(ids == data.tokenizer.eot_id) + 1
    return [data.tokenizer.decode(piece.tolist()) for piece in np.split(ids, ends) if len(piece)]


def test_exact_copies_are_counted_and_dropped(tmp_path):
    rng = np.random.default_rng(0)
    distinct = [document(rng, lines=6) for _ in range(40)]
    copies = [distinct[i] for i in range(0, 20, 4)]  # 5 verbatim
    copies += [
        "  " + distinct[i].replace("\n", " \n") + "\n\n" for i in range(1, 20, 4)
    ]  # 5 in other spacing
    texts = distinct[:20] + copies + distinct[20:]
    meta = prepare(write(tmp_path / "texts", texts), "char", tmp_path / "out", 0.2, workers=1)
    assert meta["dedup"]["exact_found"] == meta["dedup"]["exact_dropped"] == 10
    assert meta["documents_read"] == 50 and meta["documents"] == 40
    data = load_data(tmp_path / "out")
    train, val = split_documents(data, data.train), split_documents(data, data.val)
    assert sorted(train + val) == sorted(distinct)  # each kept once, as first written
    assert val == [d for d in distinct if in_validation(d, 0.2)]

    kept = prepare(
        write(tmp_path / "texts", texts), "char", tmp_path / "all", 0.2, workers=1,
        dedup_settings=DedupSettings(keep_duplicates=True),
    )  # fmt: skip
    assert kept["documents"] == 50 and kept["dedup"]["exact_dropped"] == 0
    data = load_data(tmp_path / "all")
    val = split_documents(data, data.val)
    for i in list(range(0, 20, 4)) + list(range(1, 20, 4)):  # every copy on its first copy's side
        copies_in_val = sum(dedup.fingerprint(v) == dedup.fingerprint(distinct[i]) for v in val)
        assert copies_in_val == (2 if in_validation(distinct[i], 0.2) else 0)


@pytest.fixture(scope="module")
def clusters():
    """40 documents, each followed later by a near-copy (a line changed, or paragraphs reordered)."""
    rng = np.random.default_rng(1)
    bases = [document(rng) for _ in range(40)]
    near = [one_line_changed(b, rng) if i % 2 else paragraphs_reordered(b) for i, b in enumerate(bases)]
    return bases, near


def near_pairs_corpus(tmp_path, clusters):
    bases, near = clusters
    return write(tmp_path / "texts", bases + near)


def test_near_copies_never_straddle_the_split(tmp_path, clusters):
    bases, near = clusters
    straddling = sum(in_validation(b, 0.3) != in_validation(n, 0.3) for b, n in zip(bases, near, strict=True))
    assert straddling >= 5  # without grouping, that many pairs would be split across train and val
    meta = prepare(near_pairs_corpus(tmp_path, clusters), "char", tmp_path / "out", 0.3, workers=1)
    d = meta["dedup"]
    assert d["near_found"] == 40 and d["near_dropped"] == 0 and d["near_moved"] == straddling
    data = load_data(tmp_path / "out")
    val = set(split_documents(data, data.val))
    train = set(split_documents(data, data.train))
    assert train | val == set(bases + near) and not train & val
    for base, copy in zip(bases, near, strict=True):
        assert (base in val) == (copy in val) == in_validation(base, 0.3)  # the first member decides


def test_dedup_near_drops_near_copies_and_keeps_distinct_documents(tmp_path, clusters):
    bases, _ = clusters
    settings = DedupSettings(mode="near")
    meta = prepare(
        near_pairs_corpus(tmp_path, clusters),
        "char",
        tmp_path / "out",
        0.3,
        workers=1,
        dedup_settings=settings,
    )
    assert meta["dedup"]["near_dropped"] == 40 and meta["documents"] == 40
    data = load_data(tmp_path / "out")
    assert sorted(split_documents(data, data.train) + split_documents(data, data.val)) == sorted(bases)
    exact = prepare(
        near_pairs_corpus(tmp_path, clusters), "char", tmp_path / "exact", 0.3, workers=1,
        dedup_settings=DedupSettings(mode="exact"),
    )  # fmt: skip
    assert exact["documents"] == 80 and exact["dedup"]["near_found"] == 0  # not looked for


def test_the_estimated_similarity_follows_the_shingles():
    rng = np.random.default_rng(2)
    a, b = document(rng), document(rng)
    same = np.mean(dedup.signature(a) == dedup.signature(one_line_changed(a, rng)))
    other = np.mean(dedup.signature(a) == dedup.signature(b))
    sa, sb = set(dedup.shingle_hashes(a)), set(dedup.shingle_hashes(one_line_changed(a, rng)))
    assert abs(same - len(sa & sb) / len(sa | sb)) < 0.1  # MinHash estimates the Jaccard similarity
    assert same > 0.8 and other < 0.1
    assert len(dedup.shingle_hashes("one two three")) == 1  # fewer than 5 words: the whole text
    assert np.array_equal(dedup.shingle_hashes("One  two\nthree"), dedup.shingle_hashes("one two three"))


def test_signatures_are_datasketchs_minhash_for_a_chunk_at_once(monkeypatch):
    from datasketch import MinHash

    rng = np.random.default_rng(3)
    docs = [document(rng, lines=int(rng.integers(1, 40))) for _ in range(30)]
    docs += ["", "  ", "two words", ("A prompt?", "and its response.")]
    assert (dedup.signatures([" \n", "\n\n"]) == np.iinfo(np.uint32).max).all()  # no shingle at all

    def theirs(doc) -> np.ndarray:  # datasketch's own MinHash, one document at a time
        minhash = MinHash(dedup.NUM_PERM, seed=1, hashfunc=int, scheme="affine32")
        shingles = dedup.shingle_hashes("\n".join(doc) if isinstance(doc, tuple) else doc)
        if len(shingles):
            minhash.update_batch(shingles.tolist())
        return minhash.hashvalues

    assert np.array_equal(dedup.signatures(docs), np.stack([theirs(d) for d in docs]))
    long = " ".join(docs[:20])
    whole = dedup.signature(long)
    monkeypatch.setattr(dedup, "PIECE_CHARS", 64)  # a long document hashed in overlapping pieces
    assert np.array_equal(dedup.signature(long), whole)


def test_permutations_are_datasketchs():
    """The workers draw MinHash's permutations themselves, so as not to import datasketch."""
    from datasketch import MinHash

    a, b = dedup.permutations()
    theirs = MinHash(dedup.NUM_PERM, seed=1, scheme="affine32").permutations
    assert np.array_equal(np.stack([a.ravel(), b.ravel()]), theirs) and a.dtype == theirs.dtype


WORKER = """
import json, sys, tempfile
from trickster.data import encode
with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    json.dump({"kind": "byte", "eot": True}, f)
encode.start_pool_worker(f.name)
chunk = encode.Chunk(["one two three four five six", "seven"], [None, None], 0.1, "uint16", True, True)
assert encode.encode_chunk(chunk).signatures.shape == (2, 128)
print(" ".join(name for name in ("datasketch", "scipy") if name in sys.modules))
"""


def test_a_worker_imports_neither_datasketch_nor_scipy():
    """A pool worker is a fresh interpreter (spawn): each such import is about 80 MiB per worker."""
    src = str(Path(dedup.__file__).parents[2])  # the trickster these tests import
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", WORKER], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


PREPARE = """
import sys
from trickster import cli
code = cli.main(["data", "prepare", "text", sys.argv[1], "--out", sys.argv[2], "--no-progress"])
print(code, " ".join(name for name in ("datasketch", "scipy") if name in sys.modules))
"""


def test_preparing_with_near_copy_search_imports_neither_datasketch_nor_scipy(tmp_path):
    """The main process tunes the bands itself (near_index.tuned_bands): importing datasketch and
    scipy for that cost it about 40 MiB and a second of start-up."""
    rng = np.random.default_rng(11)
    originals = [document(rng) for _ in range(20)]
    write(tmp_path / "texts", originals + [one_line_changed(text, rng) for text in originals[:5]])
    src = str(Path(dedup.__file__).parents[2])  # the trickster these tests import
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    argv = [sys.executable, "-c", PREPARE, str(tmp_path / "texts"), str(tmp_path / "out")]
    result = subprocess.run(argv, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "0 "  # prepared (the summary above), nothing imported
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["dedup"]["near_found"] == 5  # near-copies were looked for, and found


def test_copies_of_one_text_prepare_as_one_document(tmp_path):
    """The issue's 18 copies of Tiny Shakespeare in a folder, at a smaller scale."""
    folder = tmp_path / "copies"
    folder.mkdir()
    for i in range(6):
        (folder / f"copy{i}.txt").write_bytes(EXCERPT.read_bytes())
    out = tmp_path / "out"
    argv = ["data", "prepare", "text", str(folder), "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["documents"] == 1 and meta["dedup"]["exact_dropped"] == 5
    data = load_data(out)
    text = EXCERPT.read_text()
    assert data.tokenizer.decode(np.asarray(data.train)) + data.tokenizer.decode(np.asarray(data.val)) == text
    assert len(data.val) == len(text) + 1 - int((len(text) + 1) * 0.9)  # the last 10% (with end-of-text)
    # keeping the copies puts them all on one side: what the issue ran into
    assert cli.main([*argv[:-3], "--out", str(tmp_path / "kept"), "--keep-duplicates"]) == 2


@pytest.mark.parametrize("interrupted_write", [1, 2])
def test_an_interrupted_cut_of_the_one_distinct_document_continues(tmp_path, monkeypatch, interrupted_write):
    """Copies of one text are cut like one document once every copy is read: its shards are
    rewritten as train and val. Ctrl-C during that rewrite, and the same command continues to the
    folder an uninterrupted run writes (it said the shards were shorter than progress.json)."""
    folder = tmp_path / "copies"
    folder.mkdir()
    for i in range(3):
        (folder / f"copy{i}.txt").write_bytes(EXCERPT.read_bytes())

    def run(out):
        return prepare(text_files([str(folder)]), "byte", out, shard_tokens=700, workers=1, echo=print)

    writes, stop_at = [], [None]
    add = ShardWriter.add

    def counted_add(self, tokens, mask=None):
        writes.append(self.split)
        if len(writes) == stop_at[0]:
            raise KeyboardInterrupt
        return add(self, tokens, mask)

    monkeypatch.setattr(ShardWriter, "add", counted_add)
    reference = run(tmp_path / "ref")
    assert reference["documents"] == 1 and writes[-2:] == ["train", "val"]  # the rewrite: its last 2
    stop_at[0] = len(writes) - 2 + interrupted_write
    writes.clear()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "out")
    monkeypatch.undo()
    resumed = run(tmp_path / "out")
    assert resumed["tokens_sha256"] == reference["tokens_sha256"]
    data, text = load_data(tmp_path / "out"), EXCERPT.read_text()
    assert data.tokenizer.decode(np.asarray(data.train)) + data.tokenizer.decode(np.asarray(data.val)) == text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(
        p.name for p in (tmp_path / "ref").iterdir()
    )


def test_prompt_response_records_are_deduplicated(tmp_path):
    pairs = [(f"question {i}?\n", f"answer {i}.\n") for i in range(30)]
    pairs += [pairs[3], pairs[7], ("question 3?\n", "another answer.\n")]  # 2 copies, 1 new response
    meta = prepare_records(Records("jsonl", pairs), "char", tmp_path / "out", 0.1)
    assert meta["dedup"]["exact_dropped"] == 2 and meta["documents"] == 31
    assert meta["train_records"] + meta["val_records"] == 31


@pytest.mark.slow
def test_an_interrupted_preparation_with_dedup_continues_to_the_same_result(tmp_path, clusters, monkeypatch):
    bases, near = clusters
    texts = [t for pair in zip(bases, near, bases[::-1], strict=True) for t in pair]  # copies, near-copies
    source = write(tmp_path / "texts", texts)

    def run(out, workers=1):
        return prepare(
            source, "char", out, 0.3, shard_tokens=2000, chunk_chars=3000, workers=workers, echo=print
        )

    reference = run(tmp_path / "ref")
    assert reference["dedup"]["exact_dropped"] > 0 and reference["dedup"]["near_found"] > 0
    monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=5))
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "out")
    record = json.loads((partial_dir(tmp_path / "out") / "progress.json").read_text())
    assert 0 < record["dedup"]["kept"] < reference["dedup"]["kept"]
    monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=None))
    resumed = run(tmp_path / "out")
    monkeypatch.undo()
    pooled = run(tmp_path / "pool", workers=2)
    for meta in (resumed, pooled):
        assert meta["tokens_sha256"] == reference["tokens_sha256"]
        assert meta["dedup"] == reference["dedup"]


def test_documents_of_whitespace_only_are_dropped_as_blank(tmp_path):
    rng = np.random.default_rng(5)
    kept = [document(rng, lines=6) for _ in range(6)]
    texts = kept[:2] + ["   \n\n  "] + kept[2:4] + ["\t\n"] + kept[4:] + [kept[3]]
    meta = prepare(write(tmp_path / "texts", texts), "char", tmp_path / "out", 0.2, workers=1)
    assert meta["dedup"]["blank_dropped"] == 2 and meta["dedup"]["exact_dropped"] == 1
    assert meta["documents_read"] == 9 and meta["documents"] == 6
    assert meta["dedup"]["examples"] == [[8, 4]]  # document 8 copies document 4 (kept[3]), by number
    data = load_data(tmp_path / "out")
    assert sorted(split_documents(data, data.train) + split_documents(data, data.val)) == sorted(kept)


def test_records_whose_prompt_and_response_join_to_one_text_are_not_copies(tmp_path):
    """Where the prompt ends matters: ("Is it s", "o?") and ("Is it so", "?") teach different
    responses, though their texts run together alike."""
    pairs = [(f"question {i}?\n", f"answer {i}.\n") for i in range(20)]
    pairs += [("Is it s", "o?"), ("Is it so", "?"), ("Is it s", "o?")]  # the third is a copy
    meta = prepare_records(Records("jsonl", pairs), "char", tmp_path / "out", 0.1)
    assert meta["dedup"]["exact_found"] == meta["dedup"]["exact_dropped"] == 1
    assert meta["documents"] == 22


def deduper(tmp_path, threshold: float) -> dedup.Deduper:
    return dedup.Deduper(DedupSettings(threshold=threshold), tmp_path, {})


def changed(sig: np.ndarray, positions: slice) -> np.ndarray:
    """`sig` with the values at `positions` replaced by values it never holds there."""
    other = sig.copy()
    other[positions] = ~sig[positions]
    return other


def test_a_near_copy_of_documents_on_both_sides_of_the_split_is_dropped(tmp_path):
    """A agrees with B on 88 of 128 MinHash values (0.69, no near-copy at 0.8); C lies between
    them (108 of 128 with each, 0.84): kept, it would be a near-copy of a training document in
    validation, or of a validation document in training."""
    a = dedup.signature(" ".join(WORDS))
    b = changed(a, slice(0, 40))
    c = a.copy()
    c[:20] = b[:20]
    d = deduper(tmp_path, 0.8)
    assert d.decide(0, dedup.fingerprint("a"), a, "train") == "train"
    assert d.decide(1, dedup.fingerprint("b"), b, "val") == "val"
    assert d.decide(2, dedup.fingerprint("c"), c, "train") is None
    assert (d.counts.near_found, d.counts.near_dropped, d.counts.kept) == (1, 1, 2)
    assert d.decide(3, dedup.fingerprint("d"), changed(b, slice(0, 4)), "train") == "val"  # B's alone
    assert d.counts.near_moved == 1


def test_signatures_that_agree_on_exactly_the_threshold_are_near_copies(tmp_path):
    a = dedup.signature(" ".join(WORDS))
    d = deduper(tmp_path, 0.5)
    assert d.decide(0, dedup.fingerprint("a"), a, "train") == "train"
    assert d.decide(1, dedup.fingerprint("b"), changed(a, slice(0, 64)), "val") == "train"  # 64 of 128
    assert d.decide(2, dedup.fingerprint("c"), changed(a, slice(63, 128)), "val") == "val"  # 63 of 128
    assert (d.counts.near_found, d.counts.near_moved) == (1, 1)


@pytest.mark.slow
def test_a_preparation_with_dedup_interrupted_twice_continues_to_the_same_result(
    tmp_path, clusters, monkeypatch
):
    """Each continuation reads back the kept documents' rows and appends only the new ones: a
    second interruption must find every document the first continuation kept."""
    bases, near = clusters
    texts = [t for pair in zip(bases, near, bases[::-1], strict=True) for t in pair]
    source = write(tmp_path / "texts", texts)

    def run(out):
        return prepare(source, "char", out, 0.3, shard_tokens=2000, chunk_chars=3000, workers=1, echo=print)

    reference = run(tmp_path / "ref")
    for _ in range(2):
        monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=4))
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "out")
    monkeypatch.undo()
    resumed = run(tmp_path / "out")
    assert resumed["tokens_sha256"] == reference["tokens_sha256"]
    assert resumed["dedup"] == reference["dedup"]


def test_near_copies_are_blamed_for_an_empty_validation_only_when_they_emptied_it(tmp_path, capsys):
    """Twelve documents whose hashes all chose training, one with a near-copy that chose training too:
    the error said 'no document fell into validation, because 1 near-copies follow their first
    copy's side; pass --dedup near', which then failed the same way. Grouping moved nothing: the
    fraction is why, and the document nearest validation's side is moved there (with its near-copy,
    if it has one). Near-copies of a single document are why (--dedup near keeps one to cut)."""
    rng = np.random.default_rng(7)
    train_side: list[str] = []
    while len(train_side) < 12:
        text = document(rng)
        train_side += [] if in_validation(text, 0.1) else [text]
    near = one_line_changed(train_side[0], rng)
    assert not in_validation(near, 0.1)

    def prepare_cli(name: str, texts: list[str], *options: str, status: int = 2) -> str:
        write(tmp_path / name, texts)
        argv = ["data", "prepare", "text", str(tmp_path / name), "--out", str(tmp_path / f"{name}-out")]
        assert cli.main([*argv, "--no-progress", "--workers", "1", *options]) == status
        return capsys.readouterr().err

    assert prepare_cli("many", [*train_side, near], status=0) == ""
    data = load_data(tmp_path / "many-out")
    nearest = min(train_side, key=rank)  # of those that chose their side themselves (not `near`)
    assert nearest != train_side[0] and split_documents(data, data.val) == [nearest]
    assert len(split_documents(data, data.train)) == 12
    # the nearest with a near-copy of its own: the two move together, the copy never chosen itself
    its_near = one_line_changed(nearest, rng)
    assert not in_validation(its_near, 0.1)
    assert prepare_cli("group", [*train_side, its_near], status=0) == ""
    data = load_data(tmp_path / "group-out")
    assert split_documents(data, data.val) == [nearest, its_near]
    assert len(split_documents(data, data.train)) == 11
    copies = [train_side[0], near, paragraphs_reordered(train_side[0])]
    assert not any(in_validation(text, 0.1) for text in copies)
    assert prepare_cli("one", copies) == (
        "error: corpus 'text': no document fell into validation, because 2 near-copies follow their "
        "first copy's side of the split; pass --dedup near to keep one of each, or add documents\n"
    )
    assert cli.main(["data", "prepare", "text", str(tmp_path / "one"), "--out", str(tmp_path / "near"),
                     "--dedup", "near", "--no-progress"]) == 0  # fmt: skip
