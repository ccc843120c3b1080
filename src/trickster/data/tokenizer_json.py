"""A Hugging Face tokenizer.json read by the `tokenizers` package, with what it cannot refuse itself
refused first, in one line.

Its Rust code builds a BPE model's merge table in a buffer as long as the longest vocabulary entry,
and cuts `continuing_subword_prefix` off each merge's second piece by length, unchecked (tokenizers
0.23, bpe/model.rs). A merge whose result is longer than every entry, or whose second piece does not
start with the prefix, panics: a PanicException (a BaseException, which `except Exception` misses)
after a Rust backtrace on stderr, or an abort of the whole interpreter when the cut falls inside a
character. A consistent file (every merge's result in the vocabulary; with a prefix, as its own
trainer writes them, "a" + "##b" -> "ab") meets neither, and loads.
"""

from __future__ import annotations

import json

from trickster.data.hf_tokens import require_tokenizers

LARGEST_VOCABULARY = 2**24  # ids: 64 times Gemma's 262,144 (as tokenizers.LARGEST_BPE_VOCAB)


class TokenizerJsonError(ValueError):
    """A tokenizer.json the `tokenizers` package would crash on or refuse; the message says why."""


def backend_of(spec: dict):
    """The `tokenizers` Tokenizer of a tokenizer.json's content (its parsed JSON)."""
    tokenizers = require_tokenizers()
    model = spec.get("model") if isinstance(spec, dict) else None
    if isinstance(model, dict) and model.get("type", "BPE") == "BPE" and "merges" in model:
        _check_merges(model)
    try:
        return tokenizers.Tokenizer.from_str(json.dumps(spec))
    except Exception as err:  # the Rust side raises plain Exception for any malformed field
        raise TokenizerJsonError(f"not a Hugging Face tokenizer.json ({err})") from None
    except BaseException as err:  # a panic this module does not foresee: still one line
        if type(err).__name__ != "PanicException":
            raise
        raise TokenizerJsonError(f"the tokenizers package cannot read this tokenizer.json ({err})") from None


def id_count(backend) -> int:
    """How many ids a model needs rows for: the vocabulary's size, or one past its highest id where a
    hand-edited or damaged file leaves holes among them (a token encoded past the rows was an
    IndexError in the model). An id past LARGEST_VOCABULARY is refused: no model is built that big."""
    vocab = backend.get_vocab(with_added_tokens=True)
    token, highest = max(vocab.items(), key=lambda item: item[1], default=("", -1))
    if highest >= LARGEST_VOCABULARY:
        raise TokenizerJsonError(
            f"its vocabulary gives {token!r} the id {highest:,}, past the {LARGEST_VOCABULARY:,} ids a "
            "model is built for"
        )
    return max(backend.get_vocab_size(with_added_tokens=True), highest + 1)


def _check_merges(model: dict) -> None:
    vocab, merges, prefix = model.get("vocab"), model.get("merges"), model.get("continuing_subword_prefix")
    prefix = prefix or ""
    if not isinstance(vocab, dict) or not isinstance(merges, list) or not isinstance(prefix, str):
        return  # the package refuses these wrong types with an error of its own
    legacy = (m for m in merges if not (isinstance(m, str) and m.startswith("#version")))
    for number, merge in enumerate(legacy, start=1):
        pair = merge.split(" ") if isinstance(merge, str) else merge
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
            return  # refused by the package (a merge must be two pieces)
        first, second = pair
        if first not in vocab or second not in vocab:
            return  # refused by the package (a piece out of the vocabulary), before any cut
        if not second.startswith(prefix):
            raise TokenizerJsonError(
                f"BPE merge {number} ({first!r}, {second!r}): the second piece does not start with the "
                f"model's continuing_subword_prefix {prefix!r}"
            )
        if first + second[len(prefix) :] not in vocab:
            raise TokenizerJsonError(
                f"BPE merge {number} ({first!r}, {second!r}) makes {first + second[len(prefix) :]!r}, "
                "which is not in the vocabulary"
            )
