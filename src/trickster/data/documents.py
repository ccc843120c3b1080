r"""A source's documents in a fixed order, each with its split, as preparation reads them; and the
one text of a single-document source (a single text file, Tiny Shakespeare) read in pieces, as is
a text file larger than a block among several (`large_pieces`: the same cuts, one pass).

One text is one document whose last `val_fraction` of characters validate. Read whole, it took
memory for all of it, and tokenized whole, for all of its ids: a text file of 20 GB did not fit.
So its text comes in blocks (textfile.text_blocks), is cut into pieces (`cut_pieces`), and its
characters are counted in a pass of their own first, so that validation starts at the same
character as before. Each piece is tokenized on its own. Where the tokenizer is known to give the
whole text's ids that way (`cuts_safely`), the pieces' ids joined are the whole text's, and the
folder is byte for byte the one that reading it whole gave. Where it is not known (some imported
Hugging Face tokenizers), the pieces of each split are joined and tokenized whole, as before.

A piece ends before a line break that follows a visible character (in a line longer than a block,
before a space that follows one). A visible character is a letter, mark, number, punctuation or
symbol: printable and no space, so no blank for Python, Rust's regex or Oniguruma; a line break
and a space are blanks for all three. Why such a cut changes no ids:
- char and byte: one id per character or byte;
- gpt2 and bpe split text with GPT-2's pattern (tiktoken's r50k_base, Hugging Face's ByteLevel
  pre-tokenizer), `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
  No alternative holds a visible character and a blank after it, so the match that holds the
  visible character ends there, in the whole text as at the end of a piece; the next match starts
  at the blank either way, and none looks behind it. The BPE merges act within the matches.
  bpe's trainer counts the same matches, and the cuts of its long runs (tokenizers._short_runs)
  fall where they did: the cut ends a run of visible characters and starts a run of blanks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
from collections.abc import Iterable, Iterator

from trickster.data.encode import Document, Piece, text_of
from trickster.data.pass_progress import PassProgress
from trickster.data.sources import Source
from trickster.data.textfile import BLOCK_BYTES, LargeText
from trickster.data.tokenizers import HFTokenizer, Tokenizer


def documents(
    source: Source, val_fraction: float, apart: bool = True, progress: bool = False, facts: bool = True,
    done: int = 0,
) -> Iterator[tuple[Document, str | None]]:  # fmt: skip
    """(document, split) in a fixed order; split None means: decided by a hash of its text
    (encode.side). The one document of a single-document source comes in Pieces (`apart`), or
    whole per split; its characters are counted now, so that the counting pass's bar comes before
    the tokenizing one. So does a file among several larger than a block (`apart`; see
    large_pieces); without `facts`, or among the first `done` documents (a continued preparation
    skips them), its pieces carry no split or fingerprint, which would take hashing its text for
    nothing."""
    if source.single_document:
        return one_document(source, val_fraction, apart, progress)
    return _many_documents(source, apart, facts, done)


def _many_documents(
    source: Source, apart: bool, facts: bool, done: int
) -> Iterator[tuple[Document, str | None]]:
    if source.read_val is not None:
        yield from ((t, "train") for t in source.read())
        yield from ((t, "val") for t in source.read_val())
    elif apart and source.read_texts is not None:
        number = 0
        for text in source.read_texts():
            if isinstance(text, LargeText):
                pieces = large_pieces(text, facts and number >= done)
                for piece in pieces:
                    yield piece
                    number += piece[0].last  # an empty file yields none: no document
            else:
                yield text, None
                number += 1
    else:
        yield from ((t, None) for t in source.read())


def large_pieces(text: LargeText, facts: bool = True) -> Iterator[tuple[Piece, str | None]]:
    """A file among several too large to hold whole, as one document in pieces (cut_pieces), read
    once. What decides its fate needs the whole text: its split (encode.side of a hash of the text,
    its `rank`, decided in the worker with the other documents')
    and its fingerprint (dedup.fingerprint, a hash of its words joined by single spaces) are hashed
    here as the pieces pass, in order, and travel with its last piece; its MinHash signature is the
    minimum of its pieces' (encode._shingled), each worked out in a worker. Its fate is decided at
    its last piece (pending.py). No piece is blank but the last; none cuts a word, as a cut falls
    before a blank. An empty file is no document; one of blanks only is one, dropped as a blank."""
    validation = hashlib.blake2b(digest_size=8)
    normalised = hashlib.blake2b(digest_size=8)
    before: tuple[str, ...] = ()  # the last 5 words so far
    held: Piece | None = None  # yielded once it is known not to be the last
    for text_piece in cut_pieces(text.blocks()):
        if held is not None:
            yield held, "train"  # the whole text's split is given with its last piece
        held = Piece(text_piece, held is None, False, before if facts else None)
        if facts:
            validation.update(text_piece.encode("utf-8"))
            words = text_piece.split()
            if words:
                normalised.update(((" " if before else "") + " ".join(words)).encode("utf-8"))
            before = (*before, *words[-5:])[-5:]
    if held is None:
        return
    if not facts:
        yield dataclasses.replace(held, last=True), "train"
        return
    fingerprint = int.from_bytes(normalised.digest(), "big")
    rank = int.from_bytes(validation.digest(), "big")  # its split, decided with the others' (encode.side)
    yield dataclasses.replace(held, last=True, fingerprint=fingerprint, rank=rank), None


def one_text_too_short(name: str, chars: int, in_validation: bool, val_fraction: float) -> str:
    """Why the one text of a corpus, `chars` characters long, cut by characters (its last
    `val_fraction` to validation), left training empty (all of it `in_validation`) or validation."""
    start = f"corpus '{name}' is too small to hold out a validation split: its one document is {chars:,} "
    start += "character long" if chars == 1 else "characters long"
    if in_validation and chars == 1:
        return f"{start}, which validation takes whole; add text"
    if in_validation:
        return (
            f"{start}, and its last --val-fraction {val_fraction:g} leaves training none; pass a smaller "
            "--val-fraction, or add text"
        )
    return (
        f"{start}, and its last --val-fraction {val_fraction:g} is less than a character; pass a larger "
        "--val-fraction"
    )


def one_document(
    source: Source, val_fraction: float, apart: bool, progress: bool
) -> Iterator[tuple[Document, str]]:
    """The one text in pieces, its first characters to training and its last `val_fraction` to
    validation (counted in a first pass, now); with `apart` False, each split's text whole."""
    cut = None if not val_fraction else int(_count_characters(source, progress) * (1 - val_fraction))
    pieces = _split(text_pieces(source), cut)
    if apart:
        return pieces
    return (
        ("".join(piece.text for piece, _ in group), split)
        for split, group in itertools.groupby(pieces, key=lambda item: item[1])
    )


def text_pieces(source: Source) -> Iterator[str]:
    """The one text of `source` in pieces (`cut_pieces`); nothing if it is blank (no text, as a
    blank document among many). Only the last piece can be blank: the others end in a visible
    character."""
    if source.read_blocks is not None:
        blocks = source.read_blocks()
    else:  # a text held in memory: pieces as small, so that each is tokenized on its own
        blocks = (t[i : i + BLOCK_BYTES] for t in source.read() for i in range(0, len(t), BLOCK_BYTES))
    pieces = cut_pieces(blocks)
    first, second = next(pieces, None), next(pieces, None)
    if first is None or (second is None and not first.strip()):
        return
    yield first
    if second is not None:
        yield second
        yield from pieces


def cut_pieces(blocks: Iterable[str]) -> Iterator[str]:
    """The text of `blocks` cut before the last line break of each block that follows a visible
    character, or else its last such space (see the module's docstring); a block with neither is
    held and joined to the next."""
    held = ""
    for block in blocks:
        text = held + block
        # the held text has no line break to cut before (it may have a space, passed over for a
        # line break after it), so only the new block is looked in
        at = _last_cut(text, max(1, len(held)))
        if at is None:
            held = text
        else:
            yield text[:at]
            held = text[at:]
    if held:
        yield held


def _last_cut(text: str, start: int) -> int | None:
    """The last index from `start` on of a line break, else a space, after a visible character."""
    for blank in ("\n", " "):
        end = len(text)
        while (found := text.rfind(blank, start, end)) > 0:
            if _visible(text[found - 1]):
                return found
            end = found
    return None


def _visible(character: str) -> bool:
    return character.isprintable() and not character.isspace()


def _split(pieces: Iterable[str], cut: int | None) -> Iterator[tuple[Piece, str]]:
    """(piece, split): the first `cut` characters to training (None: all), the rest to validation.
    An empty piece opens training and another closes validation: each split is one document with
    its start and end ids, even an empty one, as the text cut in two whole gave."""

    def parts() -> Iterator[tuple[str, str]]:
        yield "", "train"
        seen = 0
        for piece in pieces:
            head = len(piece) if cut is None else min(max(cut - seen, 0), len(piece))
            if head:
                yield piece[:head], "train"
            if head < len(piece):
                yield piece[head:], "val"
            seen += len(piece)
        yield "", "val"

    previous: tuple[str, str, bool] | None = None  # text, split, first of its split
    for text, split in parts():
        if previous is not None:
            yield Piece(previous[0], previous[2], previous[1] != split), previous[1]
        previous = (text, split, previous is None or previous[1] != split)
    yield Piece(previous[0], previous[2], True), previous[1]


def _count_characters(source: Source, progress: bool) -> int:
    """The characters of the one text (0 if blank), read in a pass of their own, shown."""
    count = 0
    with PassProgress("counting characters", source.total_bytes, progress) as shown:
        for piece in text_pieces(source):
            count += len(piece)
            if shown.shown:  # in bytes, as its total
                shown.update(len(piece.encode("utf-8")))
        shown.finish()
    return count


def cuts_safely(tokenizer: Tokenizer) -> bool:
    """Whether `tokenizer` gives a text cut into pieces by cut_pieces the ids of the whole text
    (see the module's docstring): char, byte and gpt2; bpe, and an imported tokenizer of its kind:
    a byte-level BPE with GPT-2's pattern, no normalizer, no truncation or padding, and no added
    token that a cut could fall inside (`_cut_could_split`)."""
    if not isinstance(tokenizer, HFTokenizer):
        return tokenizer.kind in ("char", "byte", "gpt2")
    spec = tokenizer.tokenizer_json
    split = spec.get("pre_tokenizer") or {}
    gpt2_pattern = split.get("type") == "ByteLevel" and split.get("use_regex", True)
    plain = gpt2_pattern and not split.get("add_prefix_space") and spec.get("normalizer") is None
    whole = not any(_cut_could_split(token) for token in spec.get("added_tokens") or [])
    return plain and whole and spec.get("truncation") is None and spec.get("padding") is None


def _cut_could_split(added: dict) -> bool:
    """Whether an added token, matched in the text before GPT-2's pattern splits it, could hold a
    place where cut_pieces cuts (a line break; a space after a visible character, where a line
    longer than a block is cut) or take the blanks after one (rstrip): the whole text would have
    it where a piece has none."""
    content = str(added.get("content", ""))
    space = any(blank == " " and _visible(before) for before, blank in itertools.pairwise(content))
    return "\n" in content or space or bool(added.get("rstrip"))


def unread(
    items: Iterable[tuple[Document, str | None]], done_documents: int, done_pieces: int
) -> Iterator[tuple[Document, str | None]]:
    """`items` after their first `done_documents` documents and `done_pieces` pieces of the next
    (what a continued preparation has tokenized: Progress.next_document and next_piece)."""
    items = iter(items)
    while done_documents > 0:
        item = next(items, None)
        if item is None:
            return
        if not isinstance(item[0], Piece) or item[0].last:
            done_documents -= 1
    yield from itertools.islice(items, done_pieces, None)


def all_texts(source: Source, progress: bool, what: str) -> Iterator[str]:
    """Every text of the source in order (the one text, and a file among several larger than a
    block, in pieces), shown as `what`."""
    with PassProgress(what, source.total_bytes, progress) as shown:
        counted, count = {}, 0
        for document, _ in documents(source, 0.0, facts=False):
            text = text_of(document)
            count += not isinstance(document, Piece) or document.last
            if shown.shown:  # in bytes, as its total and the other passes
                counted = {} if source.single_document else {"documents": count}
                shown.update(len(text.encode("utf-8")), **counted)
            yield text
        shown.finish(**counted)


def bounded(texts: Iterable[str], limit: int | None) -> Iterator[str]:
    seen = 0
    for text in texts:
        if limit is not None and seen >= limit:
            return
        seen += len(text)
        yield text
