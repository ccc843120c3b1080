"""A new tokenizer for a corpus (`data prepare --tokenizer`): char and byte from what the corpus
holds, bpe trained on it, gpt2 as it is."""

from __future__ import annotations

from collections.abc import Iterable

from trickster.data.tokenizers import BPETokenizer, ByteTokenizer, CharTokenizer, GPT2Tokenizer, Tokenizer
from trickster.errors import UserError


def build_tokenizer(
    kind: str, texts: Iterable[str], with_eot: bool, vocab_size: int | None = None
) -> Tokenizer:
    """A new tokenizer for a corpus. `texts` is read at most once (a generator will do).

    `with_eot` applies to char and byte; bpe and gpt2 always have end-of-text. `vocab_size` is
    the size bpe trains up to (default 4096); the other kinds have a fixed or corpus-given size.
    """
    if vocab_size is not None and kind != "bpe":
        raise UserError(f"--vocab-size applies to the bpe tokenizer only (got --tokenizer {kind})")
    if kind == "char":
        return CharTokenizer.from_texts(texts, with_eot)
    if kind == "byte":
        return ByteTokenizer(with_eot)
    if kind == "bpe":
        return BPETokenizer.train(texts, vocab_size)
    if kind == "gpt2":
        return GPT2Tokenizer()
    raise UserError(f"unknown tokenizer '{kind}'; choose char, byte, bpe or gpt2")
