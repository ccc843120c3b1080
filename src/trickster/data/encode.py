"""Tokenizing in worker processes: chunks of documents in, token arrays (and each document's split,
sizes, fingerprint and signature for dedup.py) out, in input order, with a bounded number in flight.

A fine-tuning record's loss mask is 1 over every token that holds a character of a reply (and over
the end-of-text), 0 elsewhere. With char, byte and the byte-level BPEs (bpe, gpt2) each segment is
tokenized on its own, so no token spans a context and its reply. An imported tokenizer with a chat
template (a Llama's SentencePiece-like BPE, whose merges may cross "### Response:\n" into the
output: '.\n\n###▁Response:\nYes,▁') tokenizes the record whole, as the template renders it, and a
token spanning the boundary counts as the reply's: as transformers' assistant mask (and TRL's
assistant-only loss, which uses it) covers from the token holding a reply's first character to the
token holding its last, so that the loss covers every character of every reply.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import hashlib
import itertools
import multiprocessing
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trickster.data import dedup
from trickster.data.hf_tokens import special_token_text
from trickster.data.tokenizers import Tokenizer, load_tokenizer


@dataclass(frozen=True)
class Piece:
    """A piece of one document's text (documents.py reads a single text file in pieces): cut where
    the tokenizer's ids for the pieces, joined, are the whole text's. Only the first piece of the
    document gets its start id, only the last one its end-of-text id."""

    text: str
    first: bool
    last: bool
    # a piece of one document among several (documents.large_pieces), whose fate is decided at its last
    # piece: the last words before it (5 at most; fewer: all there are), so that the MinHash of each
    # piece covers the shingles across the cut before it; None for a piece of the one text
    before: tuple[str, ...] | None = None
    fingerprint: int | None = None  # ... and on its last piece, the whole document's (dedup.fingerprint)
    rank: int | None = None  # ... and the hash of its whole text that decides its split (text_rank)


Document = str | tuple[str, ...] | Piece  # a text, a record (context, reply, ...), or a piece of a text


def in_validation(text: str, val_fraction: float) -> bool:
    """Whether a document belongs to the validation split: a hash of its text, compared with the
    fraction. Hashing the text (not the position) keeps the choice independent of order and of
    sharding, and puts identical texts together."""
    return side(text_rank(text), val_fraction) == "val"


def text_rank(text: str) -> int:
    """The 64-bit blake2b hash of a text's UTF-8 bytes that decides its split (`side`)."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def side(rank: int, val_fraction: float, moved: int | None = None) -> str:
    """The split of a document whose text has the hash `rank`: validation below `val_fraction` of
    the hashes; the one document `moved` (its rank) goes to the other side (nearest.py says why)."""
    by_hash = "val" if rank < val_fraction * 2**64 else "train"
    if rank == moved:
        return "train" if by_hash == "val" else "val"
    return by_hash


@dataclass
class Chunk:
    """Documents for one worker task, and what to compute for them."""

    documents: list
    splits: list  # each document's split, or None: by in_validation
    val_fraction: float
    dtype: str
    fingerprints: bool  # exact-copy fingerprints (dedup.fingerprint)
    signatures: bool  # MinHash signatures (dedup.signature)
    moved: int | None = None  # the rank of the one document moved to the other side (nearest.py)


@dataclass
class Encoded:
    """A chunk's documents tokenized back to back; document i is tokens[ends[i-1]:ends[i]]."""

    tokens: np.ndarray
    mask: np.ndarray | None  # the loss mask of records, else None
    ends: np.ndarray
    splits: list[str]
    chars: list[int]
    sizes: list[int]  # UTF-8 bytes
    fingerprints: list[int] | None
    signatures: np.ndarray | None  # (documents, dedup.NUM_PERM)
    finished: list[bool]  # whether each ends its document (a Piece may not)
    ranks: list[int | None]  # the hash that chose each one's split (text_rank); None: its split was given


_worker_tokenizer: Tokenizer | None = None


def start_worker(tokenizer_file: str | Path) -> None:
    """The tokenizer as the preparation saved it (DIR.partial/tokenizer.json), for encode_chunk."""
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the pool is the parallelism
    _worker_tokenizer = load_tokenizer(tokenizer_file)


def start_pool_worker(tokenizer_file: str) -> None:
    """A pool worker leaves Ctrl-C to the preparing process: a terminal sends SIGINT to the whole
    process group, and each worker it reached printed a KeyboardInterrupt traceback above the one
    line that says what was kept. The pool's exit ends the workers either way. The tokenizer is
    read from the file the preparation saved it in, not sent (_sigint_ignored says why)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    start_worker(tokenizer_file)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while the pool starts its workers: they are born ignoring it (an ignored signal
    stays ignored across exec, and Python then installs no KeyboardInterrupt handler), so a Ctrl-C
    while a worker is still importing, before start_pool_worker runs, does not print its traceback
    (seen under load). A Ctrl-C in the milliseconds of the spawns is lost. It was lost for much
    longer: the spawn writes a worker's start-up data into a pipe and, past the 64 KiB a pipe holds,
    waits for the worker to read it once its interpreter has started, a second or more per worker
    under load (the test suite saw it last past the first shard). Hence the tokenizer, the bulk of
    that data (a char vocabulary or a Hugging Face tokenizer.json is that large), is read by each
    worker from DIR.partial/tokenizer.json. Blocking the signal instead of ignoring it is not
    inherited through multiprocessing's spawn, which resets the mask, and would not hold a Ctrl-C
    for later either: the kernel hands a signal the main thread blocks to a thread that does not
    (tqdm's monitor), which ignores it."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)


def encode_chunk(task: Chunk) -> Encoded:
    """Each document -> [start] text [end-of-text] (a record: [start] context reply [context reply
    ...] [end-of-text], its mask 1 over each reply and the end-of-text, 0 elsewhere), with its split,
    sizes and, if asked, fingerprint and signature."""
    tokenizer, docs = _worker_tokenizer, task.documents
    start, end = tokenizer.start_ids(), [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    records = bool(docs) and isinstance(docs[0], tuple)
    texts = [text_of(d) for d in docs]
    ranks = [_rank(d, t, s) for d, t, s in zip(docs, texts, task.splits, strict=True)]
    bounds = [(d.first, d.last) if isinstance(d, Piece) else (True, True) for d in docs]
    if records:
        parts = _record_parts(tokenizer, docs)
    else:
        parts = [
            [(start if first else []) + ids + (end if last else [])]
            for ids, (first, last) in zip(tokenizer.encode_batch(texts), bounds, strict=True)
        ]
    lengths = [sum(len(part) for part in p) for p in parts]
    pieces = itertools.chain.from_iterable(itertools.chain.from_iterable(parts))
    tokens = np.fromiter(pieces, dtype=task.dtype, count=sum(lengths))
    mask = None
    if records:  # segments alternate context (0) and reply (1)
        flags = ([i % 2] * len(part) for p in parts for i, part in enumerate(p))
        mask = np.fromiter(itertools.chain.from_iterable(flags), dtype=np.uint8, count=sum(lengths))
    return Encoded(
        tokens,
        mask,
        np.cumsum(lengths, dtype=np.int64),
        [s or side(r, task.val_fraction, task.moved) for r, s in zip(ranks, task.splits, strict=True)],
        [len(t) for t in texts],
        [len(t.encode("utf-8")) for t in texts],
        [_fingerprint(d) for d in docs] if task.fingerprints else None,
        dedup.signatures([_shingled(d) for d in docs]) if task.signatures else None,
        [last for _, last in bounds],
        ranks,
    )


def _rank(document: Document, text: str, split: str | None) -> int | None:
    """The hash that chooses the document's split (None: its split is given): the last piece of a
    document read in pieces brings its whole text's."""
    if split is not None:
        return None
    return document.rank if isinstance(document, Piece) else text_rank(text)


def _fingerprint(document: Document) -> int:
    if isinstance(document, Piece):  # only the last piece of a document among several decides
        return document.fingerprint or 0
    return dedup.fingerprint(document)


def _shingled(document: Document) -> str | tuple[str, ...]:
    """What a document's MinHash signature is computed over. A piece of a document among several:
    the piece after the 4 words before it, so that the minimum of its pieces' signatures is the
    whole text's (dedup.py: every 5-word shingle lies in one piece); a window of fewer than 5 words
    makes a shingle of its own only if it holds every word of the document, as the whole text does."""
    if not isinstance(document, Piece) or document.before is None:
        return document
    words = len(document.before[-4:]) + len(document.text.split(maxsplit=4))
    whole = document.last and len(document.before) < 5
    if words < dedup.SHINGLE_WORDS and not whole:
        return ""
    return " ".join((*document.before[-4:], document.text))


def _record_parts(tokenizer: Tokenizer, records: list[tuple[str, ...]]) -> list[list[list[int]]]:
    """Each record's ids by segment (context, reply, ...): its start ids in the first, its
    end-of-text in the last. Each segment is encoded on its own, so that no token spans a context
    and a reply: for char, byte and the byte-level BPEs (bpe, gpt2) those are the ids of the whole
    record, as chat and serve encode the conversation their template renders. An imported tokenizer
    encodes otherwise: SentencePiece's starts each text it is given with '▁', so a context after
    a reply read '▁user' where the conversation reads 'user'. Its records are encoded whole, after
    the start token's text, as the template renders them, each token going to the segment its first
    character is in, or to a reply it reaches into (the module's docstring says why); prompt/response
    records, which no template of ours renders, as the others."""
    start, end = tokenizer.start_ids(), [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    if tokenizer.kind != "hf" or tokenizer.chat_template is None:
        encoded, parts = iter(tokenizer.encode_batch([segment for r in records for segment in r])), []
        for record in records:
            ids = [next(encoded) for _ in record]
            parts.append([start + ids[0], *ids[1:-1], ids[-1] + end])
        return parts
    head = (special_token_text(tokenizer.config.get("bos_token")) or "") if start else ""
    encodings = tokenizer.backend.encode_batch([head + "".join(r) for r in records], add_special_tokens=False)
    parts = []
    for record, encoding in zip(records, encodings, strict=True):
        ends = list(itertools.accumulate((len(segment) for segment in record), initial=len(head)))[1:-1]
        segments = [[] for _ in record]
        for token, (first, after) in zip(encoding.ids, encoding.offsets, strict=True):
            at, last = bisect.bisect_right(ends, first), bisect.bisect_right(ends, max(first, after - 1))
            # segments alternate context (even) and reply (odd): one spanning two reaches a reply
            segments[at + 1 if at < last and at % 2 == 0 else at].append(token)
        if encoding.ids[: len(start)] != start:  # a config without the start token's text
            segments[0][:0] = start
        segments[-1] += end
        parts.append(segments)
    return parts


def text_of(document: Document) -> str:
    """The text of a document or a piece of one; a record's segments together."""
    if isinstance(document, Piece):
        return document.text
    return "".join(document) if isinstance(document, tuple) else document


def chunks(documents: Iterator[tuple[Document, str | None]], chunk_chars: int) -> Iterator[tuple[list, list]]:
    docs, splits, size = [], [], 0
    for document, split in documents:
        docs.append(document)
        splits.append(split)
        size += len(text_of(document))
        if size >= chunk_chars:
            yield docs, splits
            docs, splits, size = [], [], 0
    if docs:
        yield docs, splits


def encoded_in_order(
    tasks: Iterator[Chunk], tokenizer_file: Path, workers: int
) -> Iterator[tuple[int, Encoded]]:
    """(documents in the chunk, encoded chunk), in input order, with at most 2 x workers chunks in
    flight (Pool.imap would read the whole input ahead and hold it in memory)."""
    if workers <= 1:
        start_worker(tokenizer_file)
        for task in tasks:
            yield len(task.documents), encode_chunk(task)
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    with _sigint_ignored():
        pool = context.Pool(workers, initializer=start_pool_worker, initargs=(str(tokenizer_file),))
    with pool:
        pending: collections.deque = collections.deque()
        for task in tasks:
            pending.append((len(task.documents), pool.apply_async(encode_chunk, (task,))))
            if len(pending) >= 2 * workers:
                count, result = pending.popleft()
                yield count, result.get()
        while pending:
            count, result = pending.popleft()
            yield count, result.get()
