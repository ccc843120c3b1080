import json

import pytest

from trickster.errors import UserError
from trickster.tokenizers import ByteTokenizer, CharTokenizer, build_tokenizer, load_tokenizer

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


@pytest.mark.parametrize("kind", ["char", "byte"])
def test_save_and_load_roundtrip(tmp_path, kind):
    tok = build_tokenizer(kind, ["To be, or not to be"], with_eot=True)
    tok.save(tmp_path / "tokenizer.json")
    loaded = load_tokenizer(tmp_path / "tokenizer.json")
    assert loaded.to_dict() == tok.to_dict()
    assert loaded.fingerprint() == tok.fingerprint()
    assert loaded.encode("not to be") == tok.encode("not to be")


def test_damaged_tokenizer_file_is_a_user_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text(json.dumps({"kind": "wordpiece"}))
    with pytest.raises(UserError, match="unknown tokenizer kind"):
        load_tokenizer(tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="not a valid tokenizer"):
        load_tokenizer(tmp_path / "tokenizer.json")
