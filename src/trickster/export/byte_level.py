"""The byte-level BPE of our `bpe` and `gpt2` tokenizers as GPT-2's own files spell it: a token text
per id in GPT-2's byte alphabet (each byte written as a printable stand-in character,
`bytes_to_unicode`), and the merges in the order BPE applies them. The Hugging Face export builds
its tokenizer.json from these, and the GGUF export llama.cpp's "gpt2" vocabulary.

A `bpe` tokenizer already holds them (a `tokenizers` BPE model over GPT-2's pre-tokenizer). tiktoken's
ranks for `gpt2` hold no merges: the merge that makes the token of rank r is the two pieces that BPE
leaves of its bytes when only ranks below r may merge (the recovery that transformers' and llama.cpp's
converters use). Applying those merges by rank gives tiktoken's ids (the tests compare them).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from trickster.data.hf_tokens import require_tokenizers
from trickster.data.tokenizers import EOT_TEXT, BPETokenizer, GPT2Tokenizer, Tokenizer
from trickster.errors import UserError


@dataclass(frozen=True)
class ByteLevelBPE:
    tokens: list[str]  # the text of every id: GPT-2's byte alphabet, special tokens as written
    merges: list[tuple[str, str]]  # the pairs BPE joins, the first to apply first
    special_ids: frozenset[int]  # end-of-text (and bpe's pad): never the result of a merge


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's printable stand-in character for each byte, as the `tokenizers` ByteLevel step uses."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b], extra = chr(256 + extra), extra + 1
    return dict(sorted(chars.items()))


def byte_level_bpe(tokenizer: Tokenizer) -> ByteLevelBPE:
    """The vocabulary and merges of a `bpe` or `gpt2` tokenizer."""
    if isinstance(tokenizer, GPT2Tokenizer):
        return gpt2_bpe()
    if isinstance(tokenizer, BPETokenizer):
        return _trained_bpe(tokenizer)
    raise ValueError(f"a {tokenizer.kind!r} tokenizer is not a byte-level BPE")


def _trained_bpe(tokenizer: BPETokenizer) -> ByteLevelBPE:
    spec = tokenizer.tokenizer_json
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    gpt2_style = (
        model.get("type") == "BPE"
        and not model.get("continuing_subword_prefix")
        and not model.get("end_of_word_suffix")
        and not model.get("ignore_merges")
        and spec.get("normalizer") is None
        and pre.get("type") == "ByteLevel"
        and pre.get("use_regex", True)
        and not pre.get("add_prefix_space")
    )
    if not gpt2_style:  # every bpe tokenizer this package trains is; a hand-edited file may not be
        raise UserError(
            "this bpe tokenizer is not GPT-2's byte-level BPE (its tokenizer.json was changed), so it "
            "cannot be written as a byte-level vocabulary; use --format hf"
        )
    vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
    tokens = [""] * tokenizer.vocab_size
    for text, token in vocab.items():
        tokens[token] = text
    # tokenizers writes each merge as "a b" (before 0.20) or as ["a", "b"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return ByteLevelBPE(tokens, merges, frozenset({tokenizer.eot_id, tokenizer.pad_id}))


@functools.cache
def gpt2_bpe() -> ByteLevelBPE:
    """GPT-2's 50,257 tokens and 50,000 merges, from tiktoken's ranks (the ids are the ranks)."""
    tokenizer = GPT2Tokenizer()
    ranks = {tokenizer.token_bytes(token): token for token in range(tokenizer.eot_id)}
    to_char = bytes_to_unicode()

    def text(piece: bytes) -> str:
        return "".join(to_char[b] for b in piece)

    tokens = [text(piece) for piece in ranks] + [EOT_TEXT]
    merged = (piece for piece in ranks if len(piece) > 1)  # rank order: the merges' own order
    merges = [tuple(map(text, _last_merge(piece, ranks[piece], ranks))) for piece in merged]
    return ByteLevelBPE(tokens, merges, frozenset({tokenizer.eot_id}))


def _last_merge(piece: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The two pieces whose merge makes `piece`: BPE on its bytes with the ranks below its own,
    each step joining the adjacent pair of lowest rank (the leftmost of equals), as tiktoken does."""
    parts = [bytes([b]) for b in piece]
    while len(parts) > 2:
        pair_ranks = [ranks.get(a + b, rank) for a, b in zip(parts, parts[1:], strict=False)]
        best = min(range(len(pair_ranks)), key=pair_ranks.__getitem__)
        if pair_ranks[best] >= rank:
            break
        parts[best : best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"rank {rank} ({piece!r}) is not one merge of two lower-ranked tokens")
    return parts[0], parts[1]


def hf_backend(bpe: ByteLevelBPE):
    """A `tokenizers` Tokenizer of GPT-2's shape (ByteLevel pre-tokenizer with GPT-2's split, no
    prefix space) over this vocabulary; special tokens are added by the caller."""
    tokenizers = require_tokenizers()
    vocab = {text: token for token, text in enumerate(bpe.tokens)}
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=bpe.merges))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = tokenizers.decoders.ByteLevel()
    return backend
