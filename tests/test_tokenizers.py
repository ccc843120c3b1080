import json
import random
import subprocess
import sys
import time

import pytest

from trickster.data import tokenizers
from trickster.data.new_tokenizer import build_tokenizer
from trickster.data.tokenizers import (
    EOT_TEXT,
    ByteTokenizer,
    CharTokenizer,
    from_dict,
    load_tokenizer,
    tiktoken_cache_file,
)
from trickster.errors import UserError

from .conftest import EXCERPT


def test_char_vocabulary_is_the_sorted_corpus_characters():
    text = EXCERPT.read_text()
    tok = CharTokenizer.from_texts([text])
    assert tok.chars == "".join(sorted(set(text)))
    assert tok.vocab_size == len(set(text))
    assert tok.decode(tok.encode(text[:500])) == text[:500]


def test_char_eot_is_an_extra_id_that_decodes_to_nothing():
    tok = CharTokenizer.from_texts(["ab", "ba"], with_eot=True)
    assert tok.vocab_size == 3 and tok.eot_id == 2
    assert tok.decode([0, 2, 1]) == "ab"


def test_char_rejects_unknown_characters_with_a_clear_error():
    tok = CharTokenizer.from_texts(["hello"])
    with pytest.raises(UserError, match="'x' is not in this model's character vocabulary"):
        tok.encode("hex")


def test_byte_roundtrips_any_text():
    tok = ByteTokenizer()
    text = "naïve 日本語 🎭\n"
    assert tok.vocab_size == 256
    assert tok.decode(tok.encode(text)) == text


def test_byte_decoding_invalid_sequences_does_not_crash():
    tok = ByteTokenizer()
    assert tok.decode([0xFF, 0xFE, ord("a")]) == "\ufffd\ufffda"
    assert tok.decode([0xE6, 0x97]) == "\ufffd"  # a truncated 3-byte character


def test_byte_stream_decoder_waits_for_a_complete_character():
    tok = ByteTokenizer()
    decode_next = tok.stream_decoder()
    pieces = [decode_next(b) for b in "日".encode()]
    assert pieces == ["", "", "日"]


def test_out_of_range_ids_never_crash_decoding():
    assert CharTokenizer("ab").decode([0, 7, 1]) == "a\ufffdb"
    assert ByteTokenizer().decode([97, 300]) == "a"


@pytest.mark.parametrize("kind", ["char", "byte", "bpe"])
def test_save_and_load_roundtrip(tmp_path, kind):
    tok = build_tokenizer(kind, ["To be, or not to be"], with_eot=True)
    tok.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.to_dict() == tok.to_dict()
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode("not to be") == tok.encode("not to be")
    assert tok.eot_id is not None and loaded.eot_id == tok.eot_id
    assert loaded.decode([*tok.encode("not"), tok.eot_id, *tok.encode(" to be")]) == "not to be"


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_end_of_text_is_one_more_id_and_part_of_what_is_saved(tmp_path, kind):
    plain = build_tokenizer(kind, ["To be, or not to be"], with_eot=False)
    with_eot = build_tokenizer(kind, ["To be, or not to be"], with_eot=True)
    size = 256 if kind == "byte" else len(set("To be, or not to be"))
    assert (plain.vocab_size, plain.eot_id) == (size, None)
    assert (with_eot.vocab_size, with_eot.eot_id) == (size + 1, size)
    assert plain.fingerprint() != with_eot.fingerprint()
    plain.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert (loaded.vocab_size, loaded.eot_id) == (size, None)


def test_bytes_are_counted_per_id_and_ids_outside_the_vocabulary_count_none():
    """Bits per byte divides by these: 'é' is two UTF-8 bytes; an id past the vocabulary (a padded
    embedding row) or a negative one (the -100 of a masked target) stands for no text."""
    tok = CharTokenizer("aé", with_eot=True)
    assert tok.count_bytes([0, 1, 1]) == 5
    assert tok.count_bytes([0, 2, 1, 7, -100, -1]) == 3
    assert ByteTokenizer(with_eot=True).count_bytes([*"é!".encode(), 256, 300, -100]) == 3


def test_the_bpe_trainer_sees_every_character_of_a_text_with_long_runs():
    """Runs over LONGEST_RUN are cut for the trainer: the pieces still join to the whole text."""
    cut = tokenizers.LONGEST_RUN
    texts = ["a" * (2 * cut + 7) + " end", "x" + " " * (3 * cut) + "yz", "short", "q" * cut]
    for text in texts:
        pieces = list(tokenizers._short_runs([text]))
        assert "".join(pieces) == text
        assert max(len(p) for p in pieces) <= cut + len(" end")


def test_damaged_tokenizer_file_is_a_user_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "wordpiece"}))
    with pytest.raises(UserError, match="tokenizer.json is not a valid tokenizer .unknown tokenizer kind"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{}")  # said 'unknown tokenizer kind None', naming no file
    wanted = "tokenizer.json is not a valid tokenizer .unknown tokenizer kind None;"
    with pytest.raises(UserError, match=wanted):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer"):
        load_tokenizer(tmp_path / "tokenizer.json")


# --------------------------------------------------------------------------- bpe (trained here)

LINES = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
] * 5


@pytest.fixture(scope="module")
def bpe():
    return build_tokenizer("bpe", (line for line in LINES), with_eot=False, vocab_size=400)


def test_bpe_learns_merges_up_to_the_requested_vocabulary(bpe):
    assert 258 < bpe.vocab_size <= 400  # 256 bytes + 2 specials + merges learned from the lines
    assert (bpe.eot_id, bpe.pad_id) == (0, 1)
    text = "To be, or not to be"
    ids = bpe.encode(text)
    assert len(ids) == 7  # each word (with its leading space) and the comma became one token
    assert bpe.decode(ids) == text


def test_bpe_encodes_any_text_even_unseen_bytes(bpe):
    text = "naïve 日本語 🎭\n\ttabs"
    assert bpe.decode(bpe.encode(text)) == text


def test_bpe_reads_literal_end_of_text_as_plain_text(bpe):
    ids = bpe.encode(f"a{EOT_TEXT}b")
    assert bpe.eot_id not in ids
    assert bpe.decode([*bpe.encode("a"), bpe.eot_id, *bpe.encode("b")]) == "ab"  # eot decodes to nothing


def test_bpe_batch_encoding_and_rebuilt_copy_match(bpe):
    texts = ["To be, or not", "", "sea of troubles 日本"]
    assert bpe.encode_batch(texts) == [bpe.encode(t) for t in texts]
    copy = from_dict(bpe.to_dict())  # what a data worker process does
    assert copy.encode_batch(texts) == bpe.encode_batch(texts)
    assert copy.fingerprint() == bpe.fingerprint()


def test_bpe_stream_decoder_matches_decode(bpe):
    ids = bpe.encode("outrageous 日本 fortune")
    decode_next = bpe.stream_decoder()
    assert "".join(decode_next(i) for i in ids) + decode_next(None) == "outrageous 日本 fortune"


def test_bpe_vocab_size_below_the_byte_alphabet_is_a_user_error():
    with pytest.raises(UserError, match="--vocab-size 100 is too small for bpe"):
        build_tokenizer("bpe", LINES, with_eot=False, vocab_size=100)
    with pytest.raises(UserError, match="--vocab-size applies to the bpe tokenizer only"):
        build_tokenizer("char", LINES, with_eot=False, vocab_size=400)


def test_bpe_learns_from_a_long_run_without_spaces_in_seconds():
    """One pre-tokenized word of 300,000 letters (DNA, base64) and 100,000 blanks: the trainer's time
    grows with the square of a word's length, and this took it over 54 s (2 MB never ended). It
    learns from the runs cut to 1,000 characters; encoding still takes each run whole."""
    rng = random.Random(0)
    dna = "".join(rng.choice("acgt") for _ in range(300_000))
    text = f"{dna}{' ' * 100_000}the end"
    start = time.perf_counter()
    tok = build_tokenizer("bpe", ["some words here", text], with_eot=False, vocab_size=300)
    assert time.perf_counter() - start < 20  # under a second on one free core
    assert tok.vocab_size == 300
    assert tok.decode(tok.encode(text)) == text


@pytest.mark.parametrize(("template", "bos"), [("<s> $A", 0), ("$A </s>", None), ("<s> $A </s>", 0)])
def test_an_hf_tokenizer_has_a_bos_only_where_its_template_puts_one_first(template, bos):
    """A template that only appends </s> starts no sequence with a special id."""
    hf = pytest.importorskip("tokenizers")
    backend = hf.Tokenizer(hf.models.WordLevel({"<s>": 0, "</s>": 1, "a": 2, "b": 3}, unk_token="a"))
    backend.pre_tokenizer = hf.pre_tokenizers.Whitespace()
    backend.post_processor = hf.processors.TemplateProcessing(
        single=template, special_tokens=[("<s>", 0), ("</s>", 1)]
    )
    tok = tokenizers.HFTokenizer(json.loads(backend.to_str()))
    assert tok.bos_id == bos and tok.encode("b a") == [3, 2]
    assert tok.start_ids() == ([] if bos is None else [bos])


def test_an_hf_tokenizers_other_end_ids_are_saved_and_checked(tmp_path):
    """The ids beside eos that end a text (an imported Llama 3.1's) come back with the tokenizer;
    without any, it saves as before (the same fingerprint); ids it has not are a damaged file."""
    hf = pytest.importorskip("tokenizers")
    backend = hf.Tokenizer(hf.models.WordLevel({"</s>": 0, "<|eot|>": 1, "a": 2}, unk_token="a"))
    tok = tokenizers.HFTokenizer(json.loads(backend.to_str()), {"eos_token": "</s>"})
    assert tok.stop_ids == {0} and "eos_ids" not in tok.to_dict()
    ended = tokenizers.HFTokenizer(tok.tokenizer_json, tok.config, [1])
    assert ended.stop_ids == {0, 1} and ended.fingerprint() != tok.fingerprint()
    ended.save(tmp_path / "tokenizer.json")
    assert load_tokenizer(tmp_path / "tokenizer.json").stop_ids == {0, 1}
    for bad in ([3], [True], ["1"], 1):
        (tmp_path / "tokenizer.json").write_text(json.dumps({**ended.to_dict(), "eos_ids": bad}))
        with pytest.raises(UserError, match="not a valid tokenizer"):
            load_tokenizer(tmp_path / "tokenizer.json")


def test_an_hf_bpe_with_a_subword_prefix_loads_as_its_own_trainer_writes_it():
    """continuing_subword_prefix is supported: each merge's second piece carries the prefix."""
    hf = pytest.importorskip("tokenizers")
    backend = hf.Tokenizer(hf.models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
    backend.pre_tokenizer = hf.pre_tokenizers.Whitespace()
    backend.decoder = hf.decoders.WordPiece(prefix="##")
    trainer = hf.trainers.BpeTrainer(
        vocab_size=150, special_tokens=["[UNK]"], continuing_subword_prefix="##", show_progress=False
    )
    backend.train_from_iterator([EXCERPT.read_text()[:5000]], trainer)
    tok = tokenizers.HFTokenizer(json.loads(backend.to_str()))
    ids = tok.encode("the king is here")
    assert ids == backend.encode("the king is here", add_special_tokens=False).ids
    assert len(ids) < len("thekingishere") and tok.decode(ids) == "the king is here"


def _bpe_file(tmp_path, vocab: dict, merges: list, **model) -> str:
    spec = {"version": "1.0", "model": {"type": "BPE", "vocab": vocab, "merges": merges, **model}}
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "hf", "tokenizer": spec}))
    return str(tmp_path / "tokenizer.json")


@pytest.mark.parametrize(
    ("vocab", "merges", "prefix", "problem"),
    [  # each made the tokenizers package panic (a PanicException, which is no Exception)
        ({"a": 0, "b": 1, "ab": 2}, [["a", "b"]], "##", "second piece does not start with the model's"),
        ({"aaa": 0, "bbb": 1}, ["aaa bbb"], None, r"makes 'aaabbb', which is not in the vocabulary"),
        ({"aa": 0, "bbb": 1}, [["aa", "bbb"]], "b", r"makes 'aabb', which is not in the vocabulary"),
    ],
)
def test_a_bpe_merge_the_tokenizers_package_panics_on_is_one_line(tmp_path, vocab, merges, prefix, problem):
    file = _bpe_file(tmp_path, vocab, merges, continuing_subword_prefix=prefix)
    with pytest.raises(UserError, match=f"is not a valid tokenizer .BPE merge 1 .*{problem}"):
        load_tokenizer(file)


def test_a_bpe_merge_cut_inside_a_character_is_one_line_not_an_abort(tmp_path):
    """The prefix "#" cut off "é" (two bytes) split the character: the tokenizers package panicked
    while it panicked and aborted the interpreter (SIGABRT), so this runs in a child process."""
    file = _bpe_file(tmp_path, {"a": 0, "é": 1}, [["a", "é"]], continuing_subword_prefix="#")
    load = f"from trickster.data.tokenizers import load_tokenizer; load_tokenizer({file!r})"
    child = subprocess.run([sys.executable, "-c", load], capture_output=True, text=True, timeout=120)
    assert child.returncode == 1 and "panicked" not in child.stderr
    assert "UserError: " in child.stderr and "the second piece does not start with" in child.stderr


def test_a_bpe_whose_ids_leave_holes_counts_up_to_its_highest_id(bpe, tmp_path):
    """A hand-edited tokenizer.json gives "R" an id past the others: the model it sizes has a row for
    it (its vocab_size said how many entries there were, and training stopped on an IndexError);
    an id past any model's size is a damaged file, said in one line."""
    spec = json.loads(json.dumps(bpe.tokenizer_json))
    spec["model"]["vocab"]["R"] = bpe.vocab_size + 100
    edited = from_dict({"kind": "bpe", "tokenizer": spec})
    assert max(edited.encode("ROMEO")) == bpe.vocab_size + 100 < edited.vocab_size
    assert edited.byte_lengths()[bpe.vocab_size + 100] == 1
    assert edited.count_bytes(edited.encode("ROMEO")) == 5
    spec["model"]["vocab"]["R"] = 2**32 - 1
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "bpe", "tokenizer": spec}))
    with pytest.raises(UserError, match=r"valid tokenizer \(its vocabulary gives 'R' the id 4,294,967,295"):
        load_tokenizer(tmp_path / "tokenizer.json")


def test_a_panic_the_checks_do_not_foresee_is_still_one_line(monkeypatch):
    """pyo3's PanicException derives from BaseException: `except Exception` let it through."""
    from trickster.data import tokenizer_json

    panic = type("PanicException", (BaseException,), {})  # pyo3_runtime's cannot be imported
    raised = [panic("index out of bounds")]

    class Panicking:
        @staticmethod
        def from_str(text):
            raise raised[0]

    monkeypatch.setattr(tokenizer_json, "require_tokenizers", lambda: type("T", (), {"Tokenizer": Panicking}))
    with pytest.raises(ValueError, match=r"cannot read this tokenizer.json \(index out of bounds\)"):
        tokenizers.HFTokenizer({"version": "1.0", "model": {"type": "WordLevel", "vocab": {}}})
    raised[0] = KeyboardInterrupt()  # any other BaseException goes on
    with pytest.raises(KeyboardInterrupt):
        tokenizers.HFTokenizer({"version": "1.0", "model": {"type": "WordLevel", "vocab": {}}})


# --------------------------------------------------------------------------- gpt2 (tiktoken)


def gpt2_or_skip():
    pytest.importorskip("tiktoken")
    if not tiktoken_cache_file().is_file():
        pytest.skip(
            f"GPT-2's ranks are not in tiktoken's cache ({tiktoken_cache_file()}); "
            "seed it with scripts/seed_tiktoken_cache.py"
        )
    return build_tokenizer("gpt2", [], with_eot=False)


def test_gpt2_matches_the_published_ids():
    tok = gpt2_or_skip()
    assert (tok.vocab_size, tok.eot_id) == (50257, 50256)
    assert tok.encode("Hello world") == [15496, 995]  # GPT-2's well-known ids
    assert tok.encode(EOT_TEXT) != [50256]  # literal text is never the special id
    assert tok.decode([15496, 50256, 995]) == "Hello world"


def test_gpt2_roundtrips_and_streams_split_characters():
    tok = gpt2_or_skip()
    text = "naïve 日本語 🎭"
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    decode_next = tok.stream_decoder()
    pieces = [decode_next(i) for i in ids] + [decode_next(None)]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert tok.encode_batch(["Hello world", text]) == [[15496, 995], ids]
    assert tok.to_dict() == {"kind": "gpt2"} and from_dict(tok.to_dict()).encode(text) == ids


def test_gpt2_offline_without_cache_is_a_user_error(tmp_path, monkeypatch):
    pytest.importorskip("tiktoken")
    import tiktoken.load
    import tiktoken.registry

    def offline(url):
        raise ConnectionError(f"cannot reach {url}")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(tiktoken.load, "read_file", offline)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})  # forget an encoding loaded earlier
    tokenizers._gpt2_encoding.cache_clear()
    try:
        with pytest.raises(UserError, match="TIKTOKEN_CACHE_DIR") as err:
            build_tokenizer("gpt2", [], with_eot=False)
        assert str(tmp_path / "empty-cache") in str(err.value)
    finally:
        tokenizers._gpt2_encoding.cache_clear()


def test_bpe_says_the_vocabulary_it_reached_when_the_corpus_allows_fewer_ids_than_asked(tmp_path, capsys):
    """The `tokenizers` trainer stops without a word once no pair is left to merge: --vocab-size
    2000 on a small corpus gave a few hundred ids, said only as 'vocabulary N' in passing."""
    pytest.importorskip("tokenizers")
    from trickster import cli

    rng = random.Random(5)
    words = ["river", "stone", "lantern", "orchard", "whisper", "harbour", "meadow", "ember"]
    (tmp_path / "a.txt").write_text("\n".join(" ".join(rng.choices(words, k=12)) for _ in range(40)))
    out = tmp_path / "out"
    flags = ["--tokenizer", "bpe", "--out", str(out), "--no-progress"]
    assert cli.main(["data", "prepare", "text", str(tmp_path / "a.txt"), "--vocab-size", "2000", *flags]) == 0
    saved = json.loads((out / "tokenizer.json").read_text())["tokenizer"]
    reached = len(set(saved["model"]["vocab"].values()) | {t["id"] for t in saved["added_tokens"]})
    assert 258 < reached < 2000
    said = capsys.readouterr().out
    assert f"note: bpe stopped at a vocabulary of {reached:,}, short of the 2,000 asked" in said, said

    assert cli.main(["data", "prepare", "text", str(tmp_path / "a.txt"), "--vocab-size", "260", *flags]) == 0
    assert "note: bpe" not in capsys.readouterr().out  # the size asked, reached
