"""Characters a Hugging Face tokenizer drops without a word: a BPE vocabulary with no unknown
token and no byte fallback (what `trickster export` writes for a char model) encodes 'Hello' as
'ello' when it lacks 'H'. The char tokenizer it came from refuses such text (UnknownCharacter);
so does its import, instead of continuing or scoring text the model never saw."""

from __future__ import annotations

from trickster.data.unknown_character import UnknownCharacter


def dropping_vocabulary(tokenizer_json: dict) -> str | None:
    """The single characters of a vocabulary that drops what it lacks, or None for one that
    cannot drop text (an unknown token, byte fallback, or byte-level pieces, as GPT-2's) or that
    changes text before it looks it up (a normalizer)."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("unk_token") is not None or model.get("byte_fallback"):
        return None
    if tokenizer_json.get("normalizer") or "ByteLevel" in repr(tokenizer_json.get("pre_tokenizer")):
        return None
    # a BPE vocabulary holds each character of its merged pieces alone; added tokens are text too
    added = "".join(str(token.get("content", "")) for token in tokenizer_json.get("added_tokens") or [])
    return "".join(dict.fromkeys([t for t in model.get("vocab", {}) if len(t) == 1] + list(added)))


def check_covered(text: str, vocabulary: str) -> None:
    """Raise UnknownCharacter for the first character of `text` that `vocabulary` lacks.
    Whitespace is let through: a pre-tokenizer may split on it by design."""
    known = set(vocabulary)
    for char in text:
        if char not in known and not char.isspace():
            raise UnknownCharacter(text, char, vocabulary)
