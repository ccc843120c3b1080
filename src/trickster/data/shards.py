"""The on-disk pieces of a preparation: token shards (and their loss masks), and the typed record of
how far an unfinished preparation got (progress.json), saved after every chunk.

A split is one token stream cut into shards of exactly `shard_tokens` tokens (the last one
shorter): `train/000000.bin`, raw arrays of the smallest unsigned dtype that fits the vocabulary.
Prompt/response records add a loss mask beside each shard, `train/000000.mask.bin`, one uint8 per
token (1: the loss covers the token, 0: it does not).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from trickster.atomic import replace_file
from trickster.data.json_text import json_text
from trickster.errors import UserError

SPLITS = ("train", "val")


def token_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"vocabulary of {vocab_size} does not fit in uint32")


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file (a shard, a checkpoint's weights), read 1 MiB at a time into one buffer:
    any size is hashed in 1 MiB of memory (hashlib.file_digest is 3.11's; we run on 3.10)."""
    digest, buffer = hashlib.sha256(), bytearray(1 << 20)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while size := f.readinto(buffer):
            digest.update(view[:size])
    return digest.hexdigest()


@dataclass
class SplitProgress:
    """One split: its finished shards (file, tokens, sha256, and the mask file with its sha256),
    how many tokens of the shard being filled count, and what went into it."""

    shards: list[dict] = field(default_factory=list)
    part_tokens: int = 0
    documents: int = 0
    chars: int = 0
    bytes: int = 0  # UTF-8 bytes of the documents' text
    loss_tokens: int = 0  # tokens the loss mask covers (prompt/response records)

    def tokens(self) -> int:
        return sum(s["tokens"] for s in self.shards) + self.part_tokens


@dataclass
class PendingDocument:
    """A document among several read in pieces, whose fate its last piece decides (pending.py): its
    tokens so far, in pending.bin from token `start` on, what went into them, and the minimum of its
    pieces' MinHash signatures (None: near-copies are not looked for)."""

    start: int = 0
    tokens: int = 0
    chars: int = 0
    bytes: int = 0
    signature: list[int] | None = None


@dataclass
class Progress:
    """How far a preparation got; `settings` must match for a run to continue it."""

    settings: dict
    next_document: int = 0  # documents of the source read so far (kept or dropped)
    next_piece: int = 0  # and pieces of the next one (a text read in pieces, documents.py)
    input_bytes: int = 0
    splits: dict[str, SplitProgress] = field(default_factory=lambda: {s: SplitProgress() for s in SPLITS})
    dedup: dict = field(default_factory=dict)  # Deduper.state_dict()
    failed_at_end: bool = False  # these settings can never give a usable folder: start afresh
    cut_one_document: bool = False  # one distinct document was left: cut like a single-document source
    cutting: bool = False  # ... and its tokens are saved in ONE_DOCUMENT: the shards are being rewritten
    # the source's content_sha256, kept as the rewrite of the one distinct document begins (every
    # document read) for a continued rewrite, which reads none; None before, in any other
    # preparation (meta.json takes the sum of the reading that ends it), or in an older record
    source_sha256: str | None = None
    source_revision: str | None = None  # the source's revision read from (a Hub dataset's commit), if known
    pending: PendingDocument | None = None  # the document read in pieces under way, if any
    # nearest.py: {split: [documents kept there by their own hash, the hash nearest the other side]}
    by_hash: dict = field(default_factory=dict)
    moved: dict | None = None  # {"to": split, "rank": hash}: the one document moved, prepared again since

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> Progress:
        splits = {s: SplitProgress(**state["splits"][s]) for s in SPLITS}
        pending = PendingDocument(**state["pending"]) if state.get("pending") else None
        return cls(**{**state, "splits": splits, "pending": pending})

    def advance(self, finished: list[bool]) -> None:
        """Count a chunk's documents, or pieces of one (`finished`: whether each ends its document)."""
        for last in finished:
            if last:
                self.next_document, self.next_piece = self.next_document + 1, 0
            else:
                self.next_piece += 1

    def start_again(self, moved: dict) -> None:
        """Back to the first document, nothing written, with the one document `moved` (nearest.py)."""
        fresh = Progress(self.settings, source_revision=self.source_revision, moved=moved)
        for name in (f.name for f in dataclasses.fields(self)):
            setattr(self, name, getattr(fresh, name))

    def started(self) -> bool:
        """Whether anything of the source was tokenized: a document, or a piece of one."""
        return self.next_document > 0 or self.next_piece > 0

    def finished_shards(self) -> int:
        return sum(len(self.splits[s].shards) for s in SPLITS)

    def save(self, folder: Path) -> None:
        replace_file(folder / "progress.json", json_text(self.state_dict()))

    @classmethod
    def load(cls, folder: Path) -> Progress:
        file = folder / "progress.json"
        try:
            return cls.from_state_dict(json.loads(file.read_text(encoding="utf-8")))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{file} is damaged; delete {folder} to start again") from None


def open_to_append(path: Path, keep: int, root: Path) -> BinaryIO:
    """`path` opened at the end of its first `keep` bytes, what progress.json counts (a continued run
    cuts back what a stopped one wrote after it), to grow by appends; one line if it holds fewer."""
    if keep and (not path.is_file() or path.stat().st_size < keep):
        raise UserError(f"{path} is shorter than progress.json says; delete {root} to start again")
    file = open(path, "r+b" if path.is_file() else "wb")  # noqa: SIM115 (the caller closes it)
    file.truncate(keep)
    file.seek(keep)
    return file


class _Appender:
    """A file grown by appends, of which the first `keep` bytes count (a continued run cuts it back)."""

    def __init__(self, path: Path, keep: int, root: Path):
        if keep and not path.is_file() and path.with_suffix("").is_file():
            path.with_suffix("").rename(path)  # renamed, then stopped before the record said so
        self.path = path
        self.file = open_to_append(path, keep, root)  # closed by finish/release

    def finish(self) -> tuple[str, str]:
        """fsync, close and rename without `.part`; returns (name, sha256)."""
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        final = self.path.with_suffix("")
        digest = file_sha256(self.path)
        self.path.rename(final)
        return final.name, digest


class ShardWriter:
    """One split's token stream (and loss mask, if `masked`) cut into shards of shard_tokens.

    The shard being filled is `NNNNNN.bin.part`, grown by appends; `part_tokens` in the split's
    progress says how much of it counts. A full shard is renamed to `NNNNNN.bin` and entered into
    the progress with its token count and SHA-256 (and its mask file's).
    """

    def __init__(
        self, root: Path, split: str, dtype: np.dtype, shard_tokens: int, state: SplitProgress, masked: bool
    ):
        self.root, self.folder, self.split = root, root / split, split
        self.dtype, self.shard_tokens, self.state, self.masked = dtype, shard_tokens, state, masked
        self.folder.mkdir(exist_ok=True)
        self._open()

    def _open(self) -> None:
        n = len(self.state.shards)
        keep = self.state.part_tokens
        self.tokens = _Appender(self.folder / f"{n:06d}.bin.part", keep * self.dtype.itemsize, self.root)
        self.mask = (
            _Appender(self.folder / f"{n:06d}.mask.bin.part", keep, self.root) if self.masked else None
        )

    def add(self, tokens: np.ndarray, mask: np.ndarray | None = None) -> None:
        while tokens.size:
            room = self.shard_tokens - self.state.part_tokens
            self.tokens.file.write(tokens[:room].tobytes())
            if self.mask is not None:
                self.mask.file.write(mask[:room].tobytes())
                mask = mask[room:]
            self.state.part_tokens += min(room, tokens.size)
            tokens = tokens[room:]
            if self.state.part_tokens == self.shard_tokens:
                self.finish_shard()

    def finish_shard(self, reopen: bool = True) -> None:
        name, digest = self.tokens.finish()
        entry = {"file": f"{self.split}/{name}", "tokens": self.state.part_tokens, "sha256": digest}
        if self.mask is not None:
            mask_name, mask_digest = self.mask.finish()
            entry |= {"mask": f"{self.split}/{mask_name}", "mask_sha256": mask_digest}
        self.state.shards.append(entry)
        self.state.part_tokens = 0
        if reopen:
            self._open()

    def flush(self) -> None:
        for appender in (self.tokens, self.mask):
            if appender is not None:
                appender.file.flush()

    def close(self) -> None:
        """The stream is complete: the partly filled shard is final, an empty one is removed."""
        if self.state.part_tokens:
            self.finish_shard(reopen=False)
        else:
            self.release()
            for appender in (self.tokens, self.mask):
                if appender is not None:
                    appender.path.unlink(missing_ok=True)

    def read_back(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Everything written so far (finished shards and the one being filled), and its mask."""
        parts: dict[str, list] = {"tokens": [], "mask": []}
        for shard in self.state.shards:
            parts["tokens"].append(np.fromfile(self.root / shard["file"], self.dtype))
            if self.masked:
                parts["mask"].append(np.fromfile(self.root / shard["mask"], np.uint8))
        count = self.state.part_tokens
        parts["tokens"].append(np.fromfile(self.tokens.path, self.dtype, count=count))
        if self.masked:
            parts["mask"].append(np.fromfile(self.mask.path, np.uint8, count=count))
        return np.concatenate(parts["tokens"]), np.concatenate(parts["mask"]) if self.masked else None

    def release(self) -> None:
        """Close the files whatever happened (what was written stays for a continued run)."""
        for appender in (self.tokens, self.mask):
            if appender is not None and not appender.file.closed:
                appender.file.close()


def tokens_sha256(index: dict) -> str:
    """One hash of a prepared folder's tokens: of its shards' hashes (and masks'), split by split."""
    parts = [
        shard["sha256"] + shard.get("mask_sha256", "")
        for s in SPLITS
        for shard in index[s] + [{"sha256": "|"}]
    ]
    return hashlib.sha256("".join(parts).encode()).hexdigest()
