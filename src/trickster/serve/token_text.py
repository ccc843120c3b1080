"""The text each token adds, as logprobs name it: the chosen token's and each alternative's.

A token's text depends on what comes before it: SentencePiece's "▁the" is " the" after a word
but "the" when decoded alone, which made the joined tokens differ from the text and `text_offset`
drift. So a token's text is what it adds to the last few ids before it (WINDOW), as incremental
detokenizers (vLLM's) decode.

Some tokens are not whole text at all: a byte of "é" (the byte tokenizer's, a piece of GPT-2's, a
SentencePiece byte-fallback <0xC3>). Alone each decodes to "\\ufffd", so alternatives that are
different bytes shared one key of `top_logprobs`. Such a token is named by its bytes as OpenAI's
legacy completions name them: "bytes:" and each byte escaped, "bytes:\\xc3".
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable

from trickster.data.tokenizers import EOT_TEXT, ByteTokenizer, GPT2Tokenizer, HFTokenizer, Tokenizer
from trickster.export import byte_level

# ids of context: a piece's leading space needs one before it, a character's last byte its 3 others
WINDOW = 6
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


class TokenTexts:
    """The texts of tokens at the next position of one sequence; `advance` moves past the chosen."""

    def __init__(self, tokenizer: Tokenizer, context: Iterable[int]):
        self.tokenizer = tokenizer
        self.window = list(context)[-WINDOW:]
        self.before: str | None = None  # decode(window), once per position

    def text(self, token: int) -> str:
        if self.before is None:
            self.before = self.tokenizer.decode(self.window)
        after = self.tokenizer.decode([*self.window, token])
        added = after[len(self.before) :]
        # a character finished by this token rewrites the "\ufffd" that stood for its first bytes
        if after.startswith(self.before) and added and "\ufffd" not in added:
            return added
        raw = token_bytes(self.tokenizer, token)
        if raw:
            return _byte_name(raw)
        return added or special_name(self.tokenizer, token)

    def names(self, tokens: Iterable[int]) -> list[str]:
        """The texts of alternatives at this position, likeliest first, each a key of its own: one
        that a likelier token has already (Llama's "t" and its byte token <0x74>) is named by its
        bytes, or failing that by its id as vLLM names ids ("token_id:116")."""
        names: list[str] = []
        for token in tokens:
            name = self.text(token)
            if name in names:
                name = _byte_name(token_bytes(self.tokenizer, token))
            if name in names or name == "bytes:":
                name = f"token_id:{token}"
            names.append(name)
        return names

    def advance(self, token: int) -> None:
        self.window = [*self.window[1 - WINDOW :], token]
        self.before = None


def token_bytes(tokenizer: Tokenizer, token: int) -> bytes:
    """The UTF-8 bytes one id stands for; nothing for a special id."""
    if isinstance(tokenizer, ByteTokenizer):
        return bytes([token]) if 0 <= token < 256 else b""
    if isinstance(tokenizer, GPT2Tokenizer):
        return tokenizer.token_bytes(token)
    if isinstance(tokenizer, HFTokenizer):
        return _hf_token_bytes(tokenizer, token)
    return tokenizer.decode([token]).encode("utf-8")  # a char tokenizer's ids are whole characters


def _byte_name(raw: bytes) -> str:
    return "bytes:" + "".join(f"\\x{byte:02x}" for byte in raw)


def special_name(tokenizer: Tokenizer, token: int) -> str:
    """What a token that stands for no text is called: "</s>", "<|endoftext|>"."""
    if isinstance(tokenizer, HFTokenizer):
        return tokenizer.backend.id_to_token(token) or ""
    return EOT_TEXT if token == tokenizer.eot_id else ""


def _hf_token_bytes(tokenizer: HFTokenizer, token: int) -> bytes:
    piece = tokenizer.backend.id_to_token(token)
    if piece is None or token in _special_ids(tokenizer):
        return b""
    fallback = _BYTE_FALLBACK.fullmatch(piece)
    if fallback:
        return bytes.fromhex(fallback.group(1))
    if "ByteLevel" in _decoder_types(tokenizer.tokenizer_json.get("decoder")):
        unbyte = _byte_level_bytes()
        if all(char in unbyte for char in piece):
            return bytes(unbyte[char] for char in piece)
    return piece.replace("\u2581", " ").encode("utf-8")  # SentencePiece's space


def _special_ids(tokenizer: HFTokenizer) -> set[int]:
    added = tokenizer.tokenizer_json.get("added_tokens") or []
    return {entry["id"] for entry in added if entry.get("special")}


def _decoder_types(decoder: dict | None) -> set[str]:
    if not decoder:
        return set()
    inner = decoder.get("decoders") or []
    return {decoder.get("type", ""), *(kind for d in inner for kind in _decoder_types(d))}


@functools.cache
def _byte_level_bytes() -> dict[str, int]:
    """GPT-2's byte-level alphabet read back: character -> byte."""
    return {char: byte for byte, char in byte_level.bytes_to_unicode().items()}
