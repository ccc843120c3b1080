"""Text -> a prepared data folder: token shards with an index, meta.json and tokenizer.json.

    meta.json         source, tokenizer, vocabulary, dtype, counts, split rule, duplicates, tokens hash
    index.json        {"train": [{"file": "train/000000.bin", "tokens": N, "sha256": ...}, ...], "val": [...]}
    train/000000.bin  (and val/...) raw arrays of the smallest unsigned dtype that fits the vocabulary

Every shard but the last of a split holds exactly `shard_tokens` tokens; documents run on across
shard boundaries, so a split's shards read in order are one token stream. Documents are separated by
the tokenizer's end-of-text token. Fine-tuning records (records.py) take the same path and add a
loss mask beside each shard (`train/000000.mask.bin`, named in index.json under "mask").

Preparation streams: documents come one at a time from the source, are grouped into chunks of about
1 MB and tokenized (and fingerprinted, see dedup.py) in worker processes, at most two chunks per
worker in flight, so memory stays flat however large the corpus. The main process takes the chunks
in order and decides each document's fate (kept in a split, or dropped as a copy), so the output does
not depend on the number of workers. One text (a single text file) comes in pieces of about 1 MB
cut where no tokenizer would split it otherwise (documents.py): its tokens are those of the text
read whole, and memory stays flat however large the file. So does a file among several larger than
a block, whose fate (its split, or dropped as a copy) is decided at its last piece (pending.py).

It is built in a visible folder beside the output, `OUT.partial`, with a record of the settings and
of how far it got (progress.json, shards.Progress): shards are finished by a rename, the shard being
filled grows by appends and the record says how much of it counts. Running the same command again
continues from there; the finished folder is renamed into place only when complete, so an existing
OUT survives any failure.

Validation split:
- one document (Tiny Shakespeare, a single text file): its last `val_fraction` of characters
  (counted in a pass of their own first);
- a source with its own validation split (TinyStories; fine-tuning records: the last ones): that split;
- otherwise whole documents, chosen by a hash of each document's text (`in_validation`): the same
  choice on every run whatever the order or number of documents or workers; a side the hashes
  left empty gets the one document nearest it, and the documents are read again (nearest.py);
- and near-copies follow the first document of their cluster (dedup.py): never on both sides.
"""

from __future__ import annotations

import io
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from trickster.atomic import held, replace_dir, replace_file
from trickster.data import dedup, nearest, record_layouts
from trickster.data.documents import all_texts, bounded, cuts_safely, documents, unread
from trickster.data.empty_side import check_both_splits
from trickster.data.encode import Chunk, chunks, encoded_in_order, in_validation
from trickster.data.json_text import json_text
from trickster.data.meta import (
    already_prepared,
    moved,
    older_kept,
    preparation_settings,
    prepared_again,
    prepared_meta,
    with_folder_spellings,
)
from trickster.data.new_tokenizer import build_tokenizer
from trickster.data.partial import (
    ONE_DOCUMENT,
    ONE_DOCUMENT_MASK,
    SCRATCH,
    check_out_dir,
    finished_in_partial,
    open_partial,
    partial_dir,
    refuse_others,
    remove_spent,
)
from trickster.data.pass_progress import PassProgress
from trickster.data.pending import PENDING, PendingTokens, write_chunk
from trickster.data.records import Records, records_source
from trickster.data.shards import SPLITS, Progress, ShardWriter, SplitProgress, token_dtype
from trickster.data.sources import Corpus, DownloadFailed, Source, corpus_source
from trickster.data.summary import kept_older, prepare_summary
from trickster.data.textfile import NotText
from trickster.data.tokenizers import Tokenizer, load_tokenizer
from trickster.errors import Interrupted, UserError, disk_errors, write_fix
from trickster.plural import counted

SHARD_TOKENS = 100_000_000  # like nanoGPT's FineWeb shards
CHUNK_CHARS = 1_000_000  # documents per task: big enough to amortise the hand-off to a worker
TOKENIZER_SAMPLE_CHARS = 200_000_000  # bpe learns its merges from at most this much text

__all__ = ["in_validation", "partial_dir", "prepare", "prepare_records", "token_dtype"]


def prepare(
    source: Source | Corpus,
    tokenizer_kind: str | Tokenizer,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    *,
    vocab_size: int | None = None,
    workers: int | None = None,
    shard_tokens: int = SHARD_TOKENS,
    chunk_chars: int = CHUNK_CHARS,
    dedup_settings: dedup.DedupSettings | None = None,
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> dict:
    """Tokenize a source into out_dir (streaming, resumable) and return its meta.json contents.

    `tokenizer_kind` names a tokenizer to build from this corpus (char, byte, ...), or is an
    existing Tokenizer (a model's, to fine-tune it on this text). `workers` defaults to the number
    of CPUs. `dedup_settings`: see dedup.py (default: exact copies dropped, near-copies grouped).
    `echo` hears what was done (a summary of the folder); an `out_dir` already prepared, complete,
    with the same settings is kept as it is, said in one line.
    """
    out_dir = Path(out_dir)
    check_out_dir(out_dir)
    if shard_tokens < 1:
        raise UserError(f"--shard-tokens must be at least 1 (got {shard_tokens})")
    settings_dedup = dedup_settings or dedup.DedupSettings()
    settings_dedup.check()
    if isinstance(source, Corpus):
        source = corpus_source(source)
    partial = partial_dir(out_dir)
    settings = preparation_settings(
        source, tokenizer_kind, vocab_size, val_fraction, shard_tokens, vars(settings_dedup)
    )
    settings = with_folder_spellings(out_dir, partial, settings, tokenizer_kind)  # the same, said otherwise
    revision = source.revision.lookup() if source.revision is not None else None  # a Hub dataset's commit

    def build(record: Progress) -> dict:
        started = record.started()
        tokenizer = _tokenizer_for(partial, source, tokenizer_kind, vocab_size, progress, started)
        job = _Job(partial, source, tokenizer, record, val_fraction, shard_tokens, settings_dedup)
        return job.run(chunk_chars, workers, progress)

    # twice at most: a finished DIR.partial of a revision the Hub has moved from takes DIR's place,
    # which is then prepared again like any DIR of that revision
    while (meta := already_prepared(out_dir, settings, revision)) is None:  # like nanochat's finished shards
        refuse_others(out_dir, settings, revision)  # what replacing it would delete
        meta = _prepare_in(partial, out_dir, source, settings, revision, build, echo)
        if meta is not None:
            return meta
    removed = remove_spent(partial, settings, meta.get("source_revision"))
    _say(echo, meta, out_dir, kept=True, removed=removed)
    return meta


def _prepare_in(
    partial: Path, out_dir: Path, source: Source, settings: dict, revision: str | None,
    build: Callable[[Progress], dict], echo: Callable[[str], None],
) -> dict | None:  # fmt: skip
    """Prepare `out_dir` in `partial` (continued, or begun), or put a finished `partial` in its place:
    its meta.json; None when that one is of a revision the Hub has moved from (prepared again next)."""
    with disk_errors(str(partial), write_fix("choose another --out")):
        partial.mkdir(parents=True, exist_ok=True)
    busy = (
        f"{partial} is in use: another preparation is writing it; wait for it to end (or stop it), "
        "or choose another --out (nothing was changed)"
    )
    fix = "give this user access to it (or delete it), or choose another --out (nothing was changed)"
    # held: two runs of one command at once would write the same shards; a write refused (a full
    # disk, a read-only folder) is one line, not a source's read error, and finished shards stay
    again = write_fix("choose another --out", then="run the same command again to continue")
    with disk_errors(str(partial), again, within=(partial, out_dir)), held(partial, busy, fix):
        if (meta := finished_in_partial(partial, out_dir, settings, echo, revision)) is not None:
            return None if moved(meta, revision) else meta
        if (why := prepared_again(out_dir, settings, revision)) is not None:
            echo(why)  # said only now: a finished DIR.partial of these settings prepares nothing again
        record = open_partial(partial, settings, echo, revision)
        if source.revision is not None:  # all of it from one revision: a continued one's, if known
            source.revision.pinned = record.source_revision
        try:
            meta = build(record)
            replace_dir(partial, out_dir)
        except KeyboardInterrupt:
            if not partial.exists() and out_dir.is_dir():  # renamed: deleting the old copy was cut short
                raise Interrupted(
                    f"{out_dir} is prepared (only deleting the folder it replaced was cut short)"
                ) from None
            raise Interrupted(
                f"{counted(_kept_shards(partial, record), 'finished shard')} kept in {partial}; run the same "
                "command again to continue"
            ) from None
        except BaseException as err:
            # nothing worth continuing; a file that is no text is met when its turn comes (the
            # files before it tokenized), and fixing or moving it changes the settings (the
            # files, their sizes and times), so that DIR.partial could never be continued
            if not record.started() or record.failed_at_end or isinstance(err, NotText):
                shutil.rmtree(partial, ignore_errors=True)
            if isinstance(err, DownloadFailed) and (kept := older_kept(out_dir, settings)) is not None:
                return _keep_older(err, kept, out_dir, echo)
            raise
    _say(echo, meta, out_dir)  # prepared: a Ctrl-C while it is said is no interrupted preparation
    return meta


def prepare_records(
    records: Records,
    tokenizer_kind: str | Tokenizer,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    vocab_size: int | None = None,
    dedup_settings: dedup.DedupSettings | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Fine-tuning records into shards with a loss mask (see records.py); returns meta.json's contents."""
    source = records_source(records, val_fraction)
    return prepare(
        source, tokenizer_kind, out_dir, val_fraction, vocab_size=vocab_size, workers=1,
        dedup_settings=dedup_settings, echo=echo,
    )  # fmt: skip


def _keep_older(err: DownloadFailed, meta: dict, out_dir: Path, echo: Callable[[str], None]) -> dict:
    """`out_dir` as an older version prepared it, when its source cannot be read again (offline):
    training loads it as it is, as it did before the version was recorded."""
    echo(f"could not read its source again ({err}): keeping {out_dir} as it was prepared")
    echo(kept_older(meta, out_dir))
    return meta


def _kept_shards(partial: Path, record: Progress) -> int:
    """The finished shards the same command continues from: those of the record saved in
    `partial`, which the one in memory is ahead of after a Ctrl-C between a chunk's shards and its
    record; all of them once the preparation finished (its record deleted, the rename to come)."""
    try:
        return Progress.load(partial).finished_shards()
    except (OSError, UserError):
        return record.finished_shards()


def _say(
    echo: Callable[[str], None], meta: dict, out_dir: Path, kept: bool = False, removed: str | None = None
) -> None:
    for line in prepare_summary(meta, out_dir, kept, removed):
        echo(line)


def _tokenizer_for(
    partial: Path,
    source: Source,
    kind: str | Tokenizer,
    vocab_size: int | None,
    progress: bool,
    started: bool,
) -> Tokenizer:
    """The saved tokenizer of the run being continued (`started`: it tokenized), else a new one, saved."""
    saved = partial / "tokenizer.json"
    if saved.is_file():
        try:
            return load_tokenizer(saved, f"delete {partial} to prepare the data from the start")
        except UserError:  # damaged: made again if nothing was tokenized with it yet
            if started:  # else its shards cannot be read
                raise
    if isinstance(kind, Tokenizer):
        tokenizer = kind
    else:
        # char must see every character (a full pass); bpe learns from a sample of the start, of
        # one text as of several (pieces of a large file: its time is bounded, not a 20 GB file's
        # trainer pass of hours); the others read nothing, and as the texts are a lazy generator,
        # nothing is read for them
        limit = None if kind == "char" else TOKENIZER_SAMPLE_CHARS
        texts = bounded(all_texts(source, progress, f"reading for the {kind} tokenizer"), limit)
        texts = record_layouts.with_markup(source.records, texts)
        tokenizer = build_tokenizer(kind, texts, not source.single_document, vocab_size)
    # the records' layout goes with the tokenizer to every run and checkpoint, so chat, serve and
    # export ask the model as the records were written; text, or records of the user's own layout,
    # take none (a --tokenizer-from model's, of other records, is not theirs)
    record_layouts.check_markup(source.records, tokenizer)
    tokenizer.chat_template = record_layouts.chat_template(source.records, tokenizer)
    tokenizer.save(saved)
    return tokenizer


# --------------------------------------------------------------------------- writing (main process)


class _Job:
    """One preparation: the chunks in order through the deduplicator into the shard writers."""

    def __init__(self, partial, source, tokenizer, record, val_fraction, shard_tokens, settings):
        self.partial, self.source, self.tokenizer, self.record = partial, source, tokenizer, record
        self.val_fraction, self.shard_tokens, self.settings = val_fraction, shard_tokens, settings
        self.dtype = token_dtype(tokenizer.vocab_size)
        # one document cut in two (its train and val parts) has no copies to look for
        self.deduper = None if source.single_document else dedup.Deduper(settings, partial, record.dedup)

    def run(self, chunk_chars: int, workers: int | None, progress: bool) -> dict:
        record, source = self.record, self.source
        if record.cutting:  # stopped while rewriting the one distinct document: only that is left to do
            writers, documents_left = {}, iter(())
            if record.source_sha256 is None and source.content_sha256 is not None:
                for _ in source.read():  # a record written before it kept the sum: read for it
                    pass
        else:  # a single text's characters are counted first, their bar above the one below
            safely, done = cuts_safely(self.tokenizer), record.next_document
            read = documents(source, self.val_fraction, safely, progress, done=done)
            writers = {s: self._writer(s) for s in SPLITS}
            documents_left = unread(read, record.next_document, record.next_piece)
        # the pieces of a file among several wait there until their last one decides their fate
        pending = None if self.deduper is None else PendingTokens(self.partial, self.dtype, record.pending)
        tasks = (self._task(docs, splits) for docs, splits in chunks(documents_left, chunk_chars))
        bar = PassProgress("tokenizing", source.total_bytes, progress, initial=record.input_bytes)
        try:
            saved = self.partial / "tokenizer.json"  # _tokenizer_for saved it: the workers read it
            for _, encoded in encoded_in_order(tasks, saved, self._workers(workers, chunk_chars)):
                write_chunk(encoded, writers, record, self.deduper, pending)
                record.advance(encoded.finished)
                record.input_bytes += sum(encoded.sizes)
                if self.deduper is not None:
                    self.deduper.flush()
                    record.dedup = self.deduper.state_dict()
                record.save(self.partial)
                bar.update(sum(encoded.sizes), **self._done())
            bar.finish(**self._done())
            move = None if record.cutting else nearest.to_move(record)
            if move is None:
                self._end_splits(writers)
        finally:
            bar.close()
            for writer in writers.values():
                writer.release()
            if pending is not None:
                pending.release()
        if move is not None:
            self._start_again(move)
            return self.run(chunk_chars, workers, progress)
        return self._finish()

    def _end_splits(self, writers: dict[str, ShardWriter]) -> None:
        if not self.record.cutting and self._one_document_on_one_side():
            self._keep_the_one_document(writers)
        if self.record.cutting:
            writers = self._cut_the_one_document(writers)
        check_both_splits(self.record, self.source, self.settings, self.val_fraction)
        for writer in writers.values():
            writer.close()

    def _start_again(self, move: dict) -> None:
        """From the first document, with the one document nearest the empty side moved (nearest.py):
        its near-copies follow it, as they would have followed it there by its hash."""
        for split in SPLITS:
            for path in (self.partial / split).glob("*"):
                path.unlink()
        for name in ("dedup.bin", PENDING):
            (self.partial / name).unlink(missing_ok=True)
        self.record.start_again(move)
        self.record.save(self.partial)
        self.deduper = dedup.Deduper(self.settings, self.partial, {})

    def _done(self) -> dict[str, int]:
        """What the tokenizing line counts: documents read (not of one text), tokens written, and
        the tokens of a file among several read so far in pieces: they wait until its last piece
        decides where they go, and the other two counts stand still until then (minutes for a
        file of gigabytes)."""
        read = {} if self.source.single_document else {"documents": self.record.next_document}
        done = read | {"tokens": sum(self.record.splits[s].tokens() for s in SPLITS)}
        if self.record.pending is not None:
            done["tokens waiting"] = self.record.pending.tokens
        return done

    def _writer(self, split: str) -> ShardWriter:
        state, masked = self.record.splits[split], self.source.records
        return ShardWriter(self.partial, split, self.dtype, self.shard_tokens, state, masked)

    def _workers(self, workers: int | None, chunk_chars: int) -> int:
        workers = max(1, workers or os.cpu_count() or 1)
        if self.source.single_document and not cuts_safely(self.tokenizer):
            return 1  # its two splits, each tokenized whole
        if self.source.total_bytes is not None:  # no idle workers for a small corpus
            return min(workers, max(1, self.source.total_bytes // chunk_chars))
        return workers

    def _task(self, docs: list, splits: list) -> Chunk:
        near = self.deduper is not None and self.settings.near
        moved = None if self.record.moved is None else self.record.moved["rank"]
        return Chunk(docs, splits, self.val_fraction, self.dtype.name, self.deduper is not None, near, moved)

    def _one_document_on_one_side(self) -> bool:
        """Copies of one text (or one file among blanks): after dropping them one document is left."""
        counts = [self.record.splits[s].documents for s in SPLITS]
        return self.deduper is not None and sorted(counts) == [0, 1]

    def _keep_the_one_document(self, writers: dict[str, ShardWriter]) -> None:
        """Save the one document's tokens (read back from its shards) in ONE_DOCUMENT before its
        shards are rewritten, and say so in the record: an interrupted rewrite starts again from it."""
        side = "train" if self.record.splits["train"].documents else "val"
        writers[side].flush()
        tokens, mask = writers[side].read_back()
        if mask is not None:
            replace_file(self.partial / ONE_DOCUMENT_MASK, _npy(mask))
        replace_file(self.partial / ONE_DOCUMENT, _npy(tokens))
        self.record.cutting = True
        if self.source.content_sha256 is not None:  # a continued rewrite reads no document to sum
            self.record.source_sha256 = self.source.content_sha256()
        self.record.save(self.partial)

    def _cut_the_one_document(self, writers: dict[str, ShardWriter]) -> dict[str, ShardWriter]:
        """Split the one document like a single-document source: its last val_fraction of tokens
        to validation. Its tokens come from ONE_DOCUMENT; both splits are written afresh."""
        tokens = np.load(self.partial / ONE_DOCUMENT)
        mask = np.load(self.partial / ONE_DOCUMENT_MASK) if self.source.records else None
        for s in SPLITS:
            if s in writers:
                writers[s].release()
            for path in (self.partial / s).glob("*"):
                path.unlink()
            self.record.splits[s] = SplitProgress()
        writers = {s: self._writer(s) for s in SPLITS}
        cut = min(max(1, int(len(tokens) * (1 - self.val_fraction))), len(tokens) - 1)
        for s, part in (("train", slice(0, cut)), ("val", slice(cut, None))):
            text = self.tokenizer.decode(tokens[part].tolist())
            writers[s].add(tokens[part], None if mask is None else mask[part])
            state = self.record.splits[s]
            state.documents, state.chars, state.bytes = 1, len(text), len(text.encode("utf-8"))
            state.loss_tokens = 0 if mask is None else int(mask[part].sum())
        self.record.cut_one_document = True
        return writers

    def _finish(self) -> dict:
        self.record.save(self.partial)
        index = {s: self.record.splits[s].shards for s in SPLITS}
        meta = prepared_meta(self.source, self.tokenizer, self.record, index, self.val_fraction, self.dtype)
        (self.partial / "index.json").write_text(json_text(index), encoding="utf-8")
        (self.partial / "meta.json").write_text(json_text(meta), encoding="utf-8")
        (self.partial / "progress.json").unlink()
        for name in SCRATCH:
            (self.partial / name).unlink(missing_ok=True)
        return meta


def _npy(array: np.ndarray) -> bytes:
    """`array` as the bytes of a .npy file (np.save to a path would append `.npy` to a name)."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()
