"""Tokenizers behind one small interface: `encode`, `decode`, a streaming decoder, save and load.

- `char`: one id per character seen in the corpus (65 for Tiny Shakespeare).
- `byte`: one id per UTF-8 byte (256); decodes any byte sequence, invalid ones as U+FFFD.
- `bpe`: a byte-level BPE trained on the corpus with Hugging Face `tokenizers` (GPT-2's
  pre-tokenizer, so any text encodes); always carries `<|endoftext|>` (id 0) and `<|pad|>` (id 1).
- `gpt2`: GPT-2's own BPE through `tiktoken` (50257 ids, end-of-text 50256). tiktoken fetches its
  ranks file once and caches it (TIKTOKEN_CACHE_DIR); only {"kind": "gpt2"} is saved.
- `hf`: a Hugging Face `tokenizer.json` (BPE, SentencePiece-style, ...), as brought in by
  `trickster import hf`; needs the `tokenizers` package (`pip install 'nano-trickster[hf]'`).

char and byte may carry an end-of-text token (the id after the last symbol) when the corpus has
several documents. A tokenizer is saved as `tokenizer.json` next to the data and inside
every checkpoint. `bos_id` is the id that starts every sequence (documents, prompts), for the
tokenizers that have one (Llama's `<s>`); char and byte have none.
"""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from trickster.atomic import replace_file
from trickster.data.hf_coverage import check_covered, dropping_vocabulary
from trickster.data.hf_tokens import require_tokenizers, special_token_text
from trickster.data.tokenizer_json import TokenizerJsonError, backend_of, id_count
from trickster.data.unknown_character import UnknownCharacter
from trickster.errors import UserError

EOT_TEXT = "<|endoftext|>"
PAD_TEXT = "<|pad|>"
KINDS = ("char", "byte", "bpe", "gpt2", "hf")
DEFAULT_BPE_VOCAB = 4096
LARGEST_BPE_VOCAB = 2**24  # 64 times Gemma's 262,144
SMALLEST_BPE_VOCAB = 258  # the 256 bytes of its alphabet, end-of-text and pad
LONGEST_RUN = 1000  # characters of a run the BPE trainer sees: 300,000 letters took 54 s, 2 MB hung
_LONG_RUN = re.compile(rf"\S{{{LONGEST_RUN},}}|\s{{{LONGEST_RUN},}}")
# GPT-2's BPE: tiktoken's r50k_base holds exactly GPT-2's ranks, pattern and <|endoftext|> = 50256,
# in one file (its "gpt2" encoding fetches the same ranks as two older files)
GPT2_ENCODING = "r50k_base"
GPT2_RANKS_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


class Tokenizer:
    kind: str
    eot_id: int | None  # end-of-text separator between documents, if this tokenizer has one
    bos_id: int | None = None  # start of every sequence, if this tokenizer has one
    eos_ids: tuple[int, ...] = ()  # other ids that end a generated text (HFTokenizer's)
    chat_template: str | None = None  # the layout of the records prepared with it (record_layouts.py)

    def start_ids(self) -> list[int]:
        """What a document or a prompt starts with: [bos_id], or nothing."""
        return [] if self.bos_id is None else [self.bos_id]

    @property
    def stop_ids(self) -> frozenset[int]:
        """The ids that end a generated text: end-of-text, and any other the model lists."""
        return frozenset({self.eot_id, *self.eos_ids} - {None})

    @property
    def vocab_size(self) -> int:
        raise NotImplementedError

    def encode(self, text: str) -> list[int]:
        raise NotImplementedError

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Many documents at once; bpe and gpt2 encode them in parallel native threads."""
        return [self.encode(text) for text in texts]

    def byte_lengths(self) -> list[int] | None:
        """UTF-8 bytes each id stands for (0 for special ids), or None where pieces depend on their
        neighbours (count_bytes then decodes). Bits per byte divides by these."""
        return None

    def count_bytes(self, ids: Sequence[int]) -> int:
        """UTF-8 bytes of the text that `ids` encode."""
        lengths = self.byte_lengths()
        if lengths is None:
            return len(self.decode(ids).encode("utf-8"))
        table = np.asarray([*lengths, 0], dtype=np.int64)  # the extra 0 counts ids past the vocabulary
        ids = np.asarray(ids, dtype=np.int64)
        return int(table[np.where((ids >= 0) & (ids < len(lengths)), ids, len(lengths))].sum())

    def decode(self, ids: Iterable[int]) -> str:
        decode_next = self.stream_decoder()
        return "".join(decode_next(i) for i in ids) + decode_next(None)

    def stream_decoder(self, context: Iterable[int] = ()) -> Callable[[int | None], str]:
        """A function fed one id at a time that returns the text completed so far; None flushes.

        `context` is what came before (the prompt): its text is not returned, but a tokenizer whose
        pieces depend on their neighbours (SentencePiece's leading space) decodes after it.
        """
        raise NotImplementedError

    def to_dict(self) -> dict:
        raise NotImplementedError

    def save(self, path: str | Path) -> None:
        """tokenizer.json, replaced in one rename: a kill while it is written leaves the old one.
        The chat template goes in beside to_dict's keys: it decides no id (fingerprint ignores it)."""
        template = {} if self.chat_template is None else {"chat_template": self.chat_template}
        replace_file(Path(path), json.dumps(self.to_dict() | template, ensure_ascii=False))

    def fingerprint(self) -> str:
        """A short hash that changes whenever the id <-> text mapping changes."""
        text = json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: str, with_eot: bool = False):
        self.chars = chars
        self.char_to_id = {c: i for i, c in enumerate(chars)}
        self.eot_id = len(chars) if with_eot else None

    @classmethod
    def from_texts(cls, texts: Iterable[str], with_eot: bool = False) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls("".join(sorted(seen)), with_eot)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + (self.eot_id is not None)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.char_to_id[c] for c in text]
        except KeyError as err:
            raise UnknownCharacter(text, err.args[0], self.chars) from None

    def stream_decoder(self, context: Iterable[int] = ()) -> Callable[[int | None], str]:
        def decode_next(token: int | None) -> str:
            if token is None or token == self.eot_id:
                return ""
            return self.chars[token] if 0 <= token < len(self.chars) else "\ufffd"

        return decode_next

    def byte_lengths(self) -> list[int]:
        return [len(c.encode("utf-8")) for c in self.chars] + [0] * (self.eot_id is not None)

    def to_dict(self) -> dict:
        return {"kind": "char", "chars": self.chars, "eot": self.eot_id is not None}


class ByteTokenizer(Tokenizer):
    kind = "byte"

    def __init__(self, with_eot: bool = False):
        self.eot_id = 256 if with_eot else None

    @property
    def vocab_size(self) -> int:
        return 256 + (self.eot_id is not None)

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def stream_decoder(self, context: Iterable[int] = ()) -> Callable[[int | None], str]:
        # an incremental decoder holds back an unfinished multi-byte character until it completes
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def decode_next(token: int | None) -> str:
            if token is None:
                return decoder.decode(b"", final=True)
            if not 0 <= token < 256:
                return ""
            return decoder.decode(bytes([token]))

        return decode_next

    def byte_lengths(self) -> list[int]:
        return [1] * 256 + [0] * (self.eot_id is not None)

    def to_dict(self) -> dict:
        return {"kind": "byte", "eot": self.eot_id is not None}


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` tokenizer (e.g. TinyLlama's), with its tokenizer_config.json.

    `encode` adds no special tokens; `bos_id` is the id the tokenizer's own template puts first
    (found by encoding once with and once without special tokens), so callers add it themselves
    exactly where a sequence starts. Decoding drops special tokens. `eos_ids`: as the model's
    generation_config.json lists them beside eos (Llama 3.1's <|eom_id|>, <|eot_id|>).
    """

    kind = "hf"

    def __init__(self, tokenizer_json: dict, config: dict | None = None, eos_ids: Iterable[int] = ()):
        self.tokenizer_json = tokenizer_json
        self.config = dict(config or {})  # tokenizer_config.json: special tokens, chat template
        self.backend = backend_of(tokenizer_json)
        self.drops_from = dropping_vocabulary(tokenizer_json)
        self.id_count = id_count(self.backend)
        # as transformers: special-token text in the input stays text (our own exports set it)
        self.backend.encode_special_tokens = self.config.get("split_special_tokens") is True
        with_special = self.backend.encode("a").ids
        plain = self.backend.encode("a", add_special_tokens=False).ids
        starts = len(with_special) > len(plain) and with_special[1 : 1 + len(plain)] == plain
        self.bos_id = with_special[0] if starts else None
        eos = special_token_text(self.config.get("eos_token"))
        self.eot_id = self.backend.token_to_id(eos) if eos else None
        self.eos_ids = tuple(sorted(set(eos_ids)))
        if not all(type(i) is int and 0 <= i < self.vocab_size for i in self.eos_ids):
            raise ValueError(f"eos_ids must be ids of this tokenizer, below {self.vocab_size}")

    @property
    def vocab_size(self) -> int:
        return self.id_count

    def encode(self, text: str) -> list[int]:
        if self.drops_from is not None:  # an exported char model: refuse what it lacks, as char does
            check_covered(text, self.drops_from)
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        if self.drops_from is not None:  # data prepare's path: its data lacked what was dropped
            for text in texts:
                check_covered(text, self.drops_from)
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=True)

    def stream_decoder(self, context: Iterable[int] = ()) -> Callable[[int | None], str]:
        # decode the whole sequence each time and emit what is new: pieces such as SentencePiece's
        # leading "▁" or a half of a multi-byte character only settle once later ids arrive
        ids = list(context)
        emitted = self.decode(ids)

        def decode_next(token: int | None) -> str:
            nonlocal emitted
            if token is not None:
                ids.append(token)
            text = self.decode(ids)
            if token is not None and text.endswith("\ufffd"):
                return ""
            new, emitted = text[len(emitted) :] if text.startswith(emitted) else "", text
            return new

        return decode_next

    def to_dict(self) -> dict:
        extra = {"eos_ids": list(self.eos_ids)} if self.eos_ids else {}  # none: the same fingerprint
        return {"kind": "hf", "tokenizer": self.tokenizer_json, "config": self.config, **extra}


def check_bpe_vocab(vocab_size: int) -> None:
    """Refuse a --vocab-size bpe cannot learn: past 2**31 the trainer aborts Python. Checked again
    by `data prepare` before it reads anything (cli.py), so that no line about the folder comes first."""
    if not SMALLEST_BPE_VOCAB <= vocab_size <= LARGEST_BPE_VOCAB:
        small = f"small for bpe: it needs at least {SMALLEST_BPE_VOCAB} (256 bytes, end-of-text and pad)"
        size = small if vocab_size < SMALLEST_BPE_VOCAB else f"large for bpe: at most {LARGEST_BPE_VOCAB:,}"
        raise UserError(f"--vocab-size {vocab_size} is too {size}; try --vocab-size 4096")


class BPETokenizer(HFTokenizer):
    """A byte-level BPE trained on the corpus: GPT-2's pre-tokenizer and byte alphabet (every text
    encodes, nothing is unknown) and two special tokens, `<|endoftext|>` (0) and `<|pad|>` (1).

    Text that happens to contain "<|endoftext|>" is encoded as ordinary text, never as the special
    id, so only the data preparation decides where documents end (as tiktoken's encode_ordinary).
    """

    kind = "bpe"

    def __init__(self, tokenizer_json: dict):
        config = {"eos_token": EOT_TEXT, "pad_token": PAD_TEXT, "tokenizer_class": "PreTrainedTokenizerFast"}
        super().__init__(tokenizer_json, config)
        self.backend.encode_special_tokens = True
        self.pad_id = self.backend.token_to_id(PAD_TEXT)
        if self.eot_id is None or self.pad_id is None:
            raise ValueError(f"a bpe tokenizer must hold {EOT_TEXT} and {PAD_TEXT}")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int | None = None) -> BPETokenizer:
        """Learn merges from `texts` (read once, so a generator will do) up to vocab_size ids."""
        tokenizers = require_tokenizers()
        vocab_size = DEFAULT_BPE_VOCAB if vocab_size is None else vocab_size
        check_bpe_vocab(vocab_size)
        alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
        backend = tokenizers.Tokenizer(tokenizers.models.BPE())
        backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = tokenizers.decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT_TEXT, PAD_TEXT],
            initial_alphabet=alphabet,  # every byte is a token even if the corpus lacks it
            show_progress=False,
        )
        backend.train_from_iterator(_short_runs(texts), trainer)
        return cls(json.loads(backend.to_str()))

    @functools.cached_property
    def _byte_lengths(self) -> list[int]:
        # byte-level: each character of a vocabulary entry stands for exactly one byte
        lengths = [0] * self.vocab_size
        special = {self.eot_id, self.pad_id}
        for piece, token in self.backend.get_vocab(with_added_tokens=True).items():
            lengths[token] = 0 if token in special else len(piece)
        return lengths

    def byte_lengths(self) -> list[int]:
        return self._byte_lengths

    def to_dict(self) -> dict:
        return {"kind": "bpe", "tokenizer": self.tokenizer_json}


def _short_runs(texts: Iterable[str]) -> Iterator[str]:
    """The texts cut inside runs of blank or non-blank characters over LONGEST_RUN (DNA, base64,
    padding): the trainer's time grows with the square of a word's length. Encoding is not cut."""
    step = LONGEST_RUN
    for text in texts:
        cuts = [c for r in _LONG_RUN.finditer(text) for c in range(r.start() + step, r.end(), step)]
        yield from (text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True))


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE (50257 ids; `<|endoftext|>` = 50256) through tiktoken. Nothing is stored but
    the name: the ranks come from tiktoken's cache, checked against their SHA-256."""

    kind = "gpt2"
    eot_id = 50256

    def __init__(self):
        self.encoding = _gpt2_encoding()

    @property
    def vocab_size(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.encoding.encode_ordinary_batch(texts)

    def token_bytes(self, token: int) -> bytes:
        """The bytes one id stands for; nothing for end-of-text and ids past the vocabulary."""
        if token == self.eot_id or not 0 <= token < self.eot_id:
            return b""
        return self.encoding.decode_single_token_bytes(token)

    def byte_lengths(self) -> list[int]:
        return _gpt2_byte_lengths()

    def stream_decoder(self, context: Iterable[int] = ()) -> Callable[[int | None], str]:
        # a multi-byte character can be split across ids: hold its bytes back until it completes
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

        def decode_next(token: int | None) -> str:
            if token is None:
                return decoder.decode(b"", final=True)
            return decoder.decode(self.token_bytes(token))

        return decode_next

    def to_dict(self) -> dict:
        return {"kind": "gpt2"}


def tiktoken_cache_file() -> Path:
    """Where tiktoken looks for GPT-2's ranks: TIKTOKEN_CACHE_DIR (or its default), file = sha1(URL)."""
    folder = os.environ.get("TIKTOKEN_CACHE_DIR") or os.environ.get("DATA_GYM_CACHE_DIR")
    folder = folder or os.path.join(tempfile.gettempdir(), "data-gym-cache")
    return Path(folder) / hashlib.sha1(GPT2_RANKS_URL.encode()).hexdigest()


@functools.cache
def _gpt2_encoding():
    try:
        import tiktoken
    except ImportError:
        raise UserError(
            "the gpt2 tokenizer needs the `tiktoken` package: pip install 'nano-trickster[bpe]'"
        ) from None
    try:
        return tiktoken.get_encoding(GPT2_ENCODING)
    except Exception as err:  # requests' ConnectionError, an HTTP error, a hash mismatch, ...
        raise UserError(
            f"GPT-2's BPE ranks are not in tiktoken's cache ({tiktoken_cache_file()}) and could not be "
            f"downloaded ({type(err).__name__}); connect once, or point TIKTOKEN_CACHE_DIR at a folder "
            "seeded with scripts/seed_tiktoken_cache.py"
        ) from None


@functools.cache
def _gpt2_byte_lengths() -> list[int]:
    encoding = _gpt2_encoding()
    return [len(encoding.decode_single_token_bytes(i)) for i in range(GPT2Tokenizer.eot_id)] + [0]


def from_dict(data: dict) -> Tokenizer:
    kind = data.get("kind")
    if kind == "char":
        return CharTokenizer(data["chars"], bool(data.get("eot")))
    if kind == "byte":
        return ByteTokenizer(bool(data.get("eot")))
    if kind == "bpe":
        return BPETokenizer(data["tokenizer"])
    if kind == "gpt2":
        return GPT2Tokenizer()
    if kind == "hf":
        return HFTokenizer(data["tokenizer"], data.get("config"), data.get("eos_ids", ()))
    if kind is None and "model" in data:  # as the Hub has it
        raise TokenizerJsonError(
            "a Hugging Face tokenizer.json, not trickster's: import its model with `trickster import hf DIR`"
        )
    raise ValueError(f"unknown tokenizer kind {kind!r}; this version reads {', '.join(KINDS)}")


def load_tokenizer(path: str | Path, fix: str = "prepare the data again") -> Tokenizer:
    """The tokenizer saved at `path`; `fix` is the advice when it cannot be read."""
    path = Path(path)
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        tokenizer = from_dict(saved)
        tokenizer.chat_template = saved.get("chat_template")
        if not isinstance(tokenizer.chat_template, str | None):
            raise TypeError("chat_template is not text")
    except FileNotFoundError:
        raise UserError(f"tokenizer file {path} not found; {fix}") from None
    except OSError as err:  # a folder by that name, an unreadable file
        why = "is a folder, not a file" if path.is_dir() else f"cannot be read ({err.strerror or err})"
        raise UserError(f"tokenizer file {path} {why}; {fix}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as err:  # JSON and UTF-8 errors are ValueErrors
        named = "tokenizer kind" in str(err) or isinstance(err, TokenizerJsonError)  # `{}`: 'kind None'
        why = f" ({err})" if named else ""
        raise UserError(f"tokenizer file {path} is not a valid tokenizer{why}; {fix}") from None
    return tokenizer
