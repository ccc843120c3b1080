"""Where the documents of an encoded chunk go, in order: each to its split, or nowhere (a dropped
copy). A document among several read in pieces (documents.large_pieces) is decided only at its
last piece, which brings what needs its whole text (its split, fingerprint and the last part of its
MinHash signature); until then its pieces' tokens wait in PENDING, a file in DIR.partial, and
progress.json says how many count (shards.PendingDocument), so that a stopped preparation continues
the document where it was. The file is emptied at the start of a chunk when nothing waits: what it
held then was decided and written before progress.json was last saved."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trickster.data import nearest
from trickster.data.dedup import Deduper
from trickster.data.encode import Encoded
from trickster.data.shards import SPLITS, PendingDocument, Progress, ShardWriter, open_to_append

PENDING = "pending.bin"
READ_TOKENS = 1 << 18  # tokens copied from PENDING to a shard at a time: memory stays flat


class PendingTokens:
    """PENDING, cut back to what progress.json counts (`waiting`) when a preparation continues."""

    def __init__(self, folder: Path, dtype: np.dtype, waiting: PendingDocument | None):
        self.path, self.dtype = folder / PENDING, dtype
        keep = 0 if waiting is None else (waiting.start + waiting.tokens) * dtype.itemsize
        self.file = open_to_append(self.path, keep, folder)  # closed by release

    @property
    def end(self) -> int:
        """The tokens in the file."""
        return self.file.tell() // self.dtype.itemsize

    def empty(self) -> None:
        self.file.truncate(0)
        self.file.seek(0)

    def add(self, tokens: np.ndarray) -> None:
        self.file.write(tokens.tobytes())

    def copy_to(self, writer: ShardWriter, document: PendingDocument) -> None:
        """The document's tokens, a block at a time, to the end of `writer`'s stream."""
        self.file.flush()
        for at in range(document.start, document.start + document.tokens, READ_TOKENS):
            count = min(READ_TOKENS, document.start + document.tokens - at)
            offset = at * self.dtype.itemsize
            writer.add(np.fromfile(self.path, self.dtype, count=count, offset=offset))

    def release(self) -> None:
        self.file.close()


def write_chunk(
    encoded: Encoded,
    writers: dict[str, ShardWriter],
    record: Progress,
    deduper: Deduper | None,
    pending: PendingTokens | None,
) -> None:
    """Each document of the chunk to its split, or nowhere (a dropped copy), counted in `record`."""
    if record.pending is None and pending is not None:
        pending.empty()
    decided: list[tuple[int | PendingDocument, int, int, np.ndarray | None, str]] = []  # in order
    number = record.next_document
    starts = np.concatenate(([0], encoded.ends[:-1]))
    for i, split in enumerate(encoded.splits):
        row: int | PendingDocument = i
        sig = None if encoded.signatures is None else encoded.signatures[i]
        # a document among several in pieces (no deduper: the pieces of the one text, each with its split)
        if pending is not None and (record.pending is not None or not encoded.finished[i]):
            waiting = record.pending or PendingDocument(start=pending.end)
            pending.add(encoded.tokens[int(starts[i]) : int(encoded.ends[i])])
            waiting.tokens += int(encoded.ends[i] - starts[i])
            waiting.chars, waiting.bytes = waiting.chars + encoded.chars[i], waiting.bytes + encoded.sizes[i]
            if sig is not None:
                seen = sig if waiting.signature is None else np.asarray(waiting.signature, np.uint32)
                waiting.signature = np.minimum(seen, sig).tolist()
            record.pending = waiting
            if not encoded.finished[i]:
                continue
            record.pending, row = None, waiting
            sig = None if waiting.signature is None else np.asarray(waiting.signature, np.uint32)
        decided.append((row, number, i, sig, split))
        number += encoded.finished[i]
    fates = [split for *_, split in decided]
    if deduper is not None and decided:  # the whole chunk at once: its index searches are batched
        fps = [encoded.fingerprints[i] for _, _, i, _, _ in decided]
        sigs = None if encoded.signatures is None else np.stack([sig for *_, sig, _ in decided])
        fates = deduper.decide_chunk([n for _, n, *_ in decided], fps, sigs, fates)
    taken: dict[str, list[int | PendingDocument]] = {s: [] for s in SPLITS}  # in order
    own = deduper.own_side if deduper is not None and decided else [True] * len(decided)
    for (row, _, i, _, _), split, mine in zip(decided, fates, own, strict=True):
        if split is not None:
            taken[split].append(row)
            if mine and encoded.ranks[i] is not None:  # it went where its own hash sent it
                nearest.note(record, split, encoded.ranks[i])
    for split, rows in taken.items():
        if rows:
            _write_rows(encoded, starts, rows, writers[split], record.splits[split], pending)


def _write_rows(encoded, starts, rows, writer, state, pending) -> None:
    """The rows of one split in order: runs of the chunk's documents joined, a waiting document
    copied from PENDING."""
    run: list[int] = []
    for row in [*rows, None]:
        if isinstance(row, int):
            run.append(row)
            continue
        if run:
            pieces = [slice(int(starts[i]), int(encoded.ends[i])) for i in run]
            tokens = np.concatenate([encoded.tokens[p] for p in pieces])
            mask = None if encoded.mask is None else np.concatenate([encoded.mask[p] for p in pieces])
            writer.add(tokens, mask)
            state.documents += sum(encoded.finished[i] for i in run)
            state.chars += sum(encoded.chars[i] for i in run)
            state.bytes += sum(encoded.sizes[i] for i in run)
            state.loss_tokens += 0 if mask is None else int(mask.sum())
            run = []
        if isinstance(row, PendingDocument):  # text, never a record: no mask
            pending.copy_to(writer, row)
            state.documents, state.chars, state.bytes = (
                state.documents + 1, state.chars + row.chars, state.bytes + row.bytes,
            )  # fmt: skip
    writer.flush()
