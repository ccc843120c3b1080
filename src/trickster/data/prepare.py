"""Text -> a prepared data folder: token shards with an index, meta.json and tokenizer.json.

    meta.json         source, tokenizer, vocabulary, dtype, token counts, split rule, a hash of the tokens
    index.json        {"train": [{"file": "train/000000.bin", "tokens": N, "sha256": ...}, ...], "val": [...]}
    tokenizer.json
    train/000000.bin  raw arrays of the smallest unsigned dtype that fits the vocabulary (numpy.memmap)
    val/000000.bin

Every shard but the last of a split holds exactly `shard_tokens` tokens; documents run on across
shard boundaries, so a split's shards read in order are one token stream (the loader reads them
so). Documents are separated by the tokenizer's end-of-text token.

Preparation streams: documents come one at a time from the source, are grouped into chunks of about
1 MB and tokenized in worker processes, at most two chunks per worker in flight, so memory stays
flat however large the corpus. The output does not depend on the number of workers.

It is built in a visible folder beside the output, `OUT.partial`, with a record of the settings and
of how far it got (progress.json): shards are finished by a rename, the shard being filled grows by
appends and the record says how much of it counts. Running the same command again continues from
there; the finished folder is renamed into place only when complete, so an existing OUT survives
any failure.

Validation split:
- one document (Tiny Shakespeare, a single text file): its last `val_fraction` of characters;
- a source with its own validation split (TinyStories): that split;
- otherwise whole documents, chosen by a hash of each document's text (`in_validation`): the same
  choice on every run whatever the order or number of documents or workers, never a document in
  both splits, and exact duplicates (common in web text) always land on the same side.

Prompt/response records (fine-tuning) are small and stay in memory, written flat, with a loss mask:
train.bin/val.bin plus train.mask.bin and val.mask.bin, one uint8 per token, 1 where the loss covers
the token (the response and the end-of-text after it) and 0 where it does not (the prompt); meta.json
names them under "loss_mask". Each record is [start id] prompt response [end-of-text].
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np

from trickster.atomic import new_folder, replace_dir
from trickster.data.sources import Corpus, Records, Source, corpus_source
from trickster.data.tokenizers import Tokenizer, build_tokenizer, from_dict
from trickster.errors import UserError

META_FORMAT = 2  # shards with index.json
FLAT_FORMAT = 1  # flat train.bin/val.bin: older folders (still read) and prompt/response records
SHARD_TOKENS = 100_000_000  # like nanoGPT's FineWeb shards
CHUNK_CHARS = 1_000_000  # documents per task: big enough to amortise the hand-off to a worker
TOKENIZER_SAMPLE_CHARS = 200_000_000  # bpe learns its merges from at most this much text
SPLITS = ("train", "val")
PREPARED_FILES = {
    "train.bin",
    "val.bin",
    "meta.json",
    "tokenizer.json",
    "train.mask.bin",
    "val.mask.bin",
    "index.json",
    "train",
    "val",
}


def token_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"vocabulary of {vocab_size} does not fit in uint32")


def in_validation(text: str, val_fraction: float) -> bool:
    """Whether a document belongs to the validation split: a hash of its text, compared with the
    fraction. Hashing the text (not the position) keeps the choice independent of order and of
    sharding, and puts duplicates together, so no text is trained on and validated on at once."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") < val_fraction * 2**64


def partial_dir(out_dir: Path) -> Path:
    return out_dir.parent / f"{out_dir.name}.partial"


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
    progress: bool = False,
    echo: Callable[[str], None] = print,
) -> dict:
    """Tokenize a source into out_dir (streaming, resumable) and return its meta.json contents.

    `tokenizer_kind` names a tokenizer to build from this corpus (char, byte, ...), or is an
    existing Tokenizer (a model's, to fine-tune it on this text). `workers` defaults to the number
    of CPUs.
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    if shard_tokens < 1:
        raise UserError(f"--shard-tokens must be at least 1 (got {shard_tokens})")
    if isinstance(source, Corpus):
        source = corpus_source(source)
    partial = partial_dir(out_dir)
    settings = {
        "format": META_FORMAT,
        "source": source.identity,
        "tokenizer": tokenizer_kind
        if isinstance(tokenizer_kind, str)
        else {"from": tokenizer_kind.kind, "fingerprint": tokenizer_kind.fingerprint()},
        "vocab_size": vocab_size,
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
    }
    record = _open_partial(partial, settings, echo)
    try:
        tokenizer = _tokenizer_for(partial, source, tokenizer_kind, vocab_size, progress)
        meta = _tokenize_all(
            partial, source, tokenizer, record, val_fraction, shard_tokens, chunk_chars, workers, progress
        )
        replace_dir(partial, out_dir)
        return meta
    except KeyboardInterrupt:
        echo(
            f"interrupted: {_finished_shards(record)} finished shard(s) kept in {partial}; run the same "
            "command again to continue"
        )
        raise
    except BaseException:
        if record["next_document"] == 0 or record.get("failed_at_end"):
            shutil.rmtree(partial, ignore_errors=True)  # nothing worth continuing
        raise


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} is a file; pass a folder path to --out")
    if out_dir.is_dir() and not {p.name for p in out_dir.iterdir()} <= PREPARED_FILES:
        raise UserError(
            f"{out_dir} already exists and is not a prepared data folder; choose another --out "
            "(nothing was changed)"
        )


# --------------------------------------------------------------------------- the partial folder


def _open_partial(partial: Path, settings: dict, echo: Callable[[str], None]) -> dict:
    """The record of an unfinished run with these settings (continued), or a fresh one."""
    progress_file = partial / "progress.json"
    if progress_file.is_file():
        try:
            record = json.loads(progress_file.read_text(encoding="utf-8"))
            previous = record["settings"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise UserError(f"{progress_file} is damaged; delete {partial} to start again") from None
        if previous != settings:
            changed = ", ".join(k for k in settings if previous.get(k) != settings[k])
            raise UserError(
                f"{partial} holds an unfinished preparation with other settings ({changed}); run the "
                f"command that started it to continue, or delete {partial} to start again"
            )
        echo(
            f"continuing the preparation in {partial}: {_finished_shards(record)} finished shard(s), "
            f"{record['next_document']:,} document(s) done"
        )
        return record
    if partial.exists():
        if any(partial.iterdir()):
            raise UserError(f"{partial} exists but holds no progress.json; delete it to start again")
    try:
        partial.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"could not write {partial} ({err.strerror or err}); choose another --out") from None
    record = {
        "settings": settings,
        "next_document": 0,
        "input_bytes": 0,
        "splits": {s: {"shards": [], "part_tokens": 0, "documents": 0, "chars": 0} for s in SPLITS},
    }
    _save_record(partial, record)
    return record


def _finished_shards(record: dict) -> int:
    return sum(len(record["splits"][s]["shards"]) for s in SPLITS)


def _save_record(partial: Path, record: dict) -> None:
    tmp = partial / "progress.json.tmp"
    tmp.write_text(json.dumps(record, indent=1), encoding="utf-8")
    tmp.replace(partial / "progress.json")


def _tokenizer_for(
    partial: Path, source: Source, kind: str | Tokenizer, vocab_size: int | None, progress: bool
) -> Tokenizer:
    """The tokenizer saved by the run being continued, else a new one (saved before any shard)."""
    saved = partial / "tokenizer.json"
    if saved.is_file():
        return from_dict(json.loads(saved.read_text(encoding="utf-8")))
    if isinstance(kind, Tokenizer):
        tokenizer = kind
    else:
        # char must see every character (a full pass); bpe learns from a sample of the start; the
        # others read nothing, and as the texts are a lazy generator, nothing is read for them
        limit = None if kind == "char" else TOKENIZER_SAMPLE_CHARS
        texts = _bounded(_all_texts(source, progress, f"reading for the {kind} tokenizer"), limit)
        tokenizer = build_tokenizer(kind, texts, not source.single_document, vocab_size)
    tmp = partial / "tokenizer.json.tmp"
    tokenizer.save(tmp)
    tmp.replace(saved)
    return tokenizer


def _all_texts(source: Source, progress: bool, what: str) -> Iterator[str]:
    from tqdm import tqdm

    with tqdm(
        total=source.total_bytes, unit="B", unit_scale=True, desc=what, disable=None if progress else True
    ) as bar:
        for text, _ in _documents(source, 0.0):
            bar.update(len(text))
            yield text


def _bounded(texts: Iterable[str], limit: int | None) -> Iterator[str]:
    seen = 0
    for text in texts:
        if limit is not None and seen >= limit:
            return
        seen += len(text)
        yield text


def _documents(source: Source, val_fraction: float) -> Iterator[tuple[str, str | None]]:
    """(text, split) in a fixed order; split None means: decided by `in_validation`."""
    if source.single_document:
        texts = [t for t in source.read() if t]
        text = "".join(texts)
        cut = int(len(text) * (1 - val_fraction))
        yield text[:cut], "train"
        yield text[cut:], "val"
    elif source.read_val is not None:
        yield from ((t, "train") for t in source.read())
        yield from ((t, "val") for t in source.read_val())
    else:
        yield from ((t, None) for t in source.read())


# --------------------------------------------------------------------------- tokenizing


_worker_tokenizer: Tokenizer | None = None


def _start_worker(tokenizer: dict) -> None:
    global _worker_tokenizer
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread per worker: the pool is the parallelism
    _worker_tokenizer = from_dict(tokenizer)


def _encode_chunk(task: tuple) -> dict:
    """One chunk of documents -> per split: the tokens (each document [start] text [end-of-text]),
    how many documents and characters; and the chunk's size in UTF-8 bytes."""
    texts, splits, val_fraction, dtype = task
    tokenizer = _worker_tokenizer
    encoded = tokenizer.encode_batch(texts)
    start, end = tokenizer.start_ids(), [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    pieces: dict[str, list] = {s: [] for s in SPLITS}
    counts = {s: [0, 0] for s in SPLITS}
    for text, ids, split in zip(texts, encoded, splits, strict=True):
        split = split or ("val" if in_validation(text, val_fraction) else "train")
        pieces[split] += [start, ids, end]
        counts[split][0] += 1
        counts[split][1] += len(text)
    out = {"bytes": sum(len(t.encode("utf-8")) for t in texts)}
    for split in SPLITS:
        flat = itertools.chain.from_iterable(pieces[split])
        out[split] = (np.fromiter(flat, dtype=dtype), *counts[split])
    return out


def _chunks(documents: Iterator[tuple[str, str | None]], chunk_chars: int) -> Iterator[tuple[list, list]]:
    texts, splits, size = [], [], 0
    for text, split in documents:
        texts.append(text)
        splits.append(split)
        size += len(text)
        if size >= chunk_chars:
            yield texts, splits
            texts, splits, size = [], [], 0
    if texts:
        yield texts, splits


def _encoded_in_order(
    chunks: Iterator[tuple[list, list]], tokenizer: Tokenizer, workers: int, extra: tuple
) -> Iterator[tuple[int, dict]]:
    """(documents in the chunk, encoded chunk), in input order, with at most 2 x workers chunks in
    flight (Pool.imap would read the whole input ahead and hold it in memory)."""
    if workers <= 1:
        _start_worker(tokenizer.to_dict())
        for texts, splits in chunks:
            yield len(texts), _encode_chunk((texts, splits, *extra))
        return
    context = multiprocessing.get_context("spawn")  # no fork of a process holding threads
    with context.Pool(workers, initializer=_start_worker, initargs=(tokenizer.to_dict(),)) as pool:
        pending: collections.deque = collections.deque()
        for texts, splits in chunks:
            pending.append((len(texts), pool.apply_async(_encode_chunk, ((texts, splits, *extra),))))
            if len(pending) >= 2 * workers:
                count, result = pending.popleft()
                yield count, result.get()
        while pending:
            count, result = pending.popleft()
            yield count, result.get()


class ShardWriter:
    """One split's token stream cut into shards of exactly shard_tokens (the last one shorter).

    The shard being filled is `NNNNNN.bin.part`, grown by appends; `part_tokens` in the record says
    how much of it counts (a continued run cuts it back to that). A full shard is renamed to
    `NNNNNN.bin` and entered into the record with its token count and SHA-256.
    """

    def __init__(self, root: Path, split: str, dtype: np.dtype, shard_tokens: int, state: dict):
        self.folder, self.split, self.dtype, self.shard_tokens = root / split, split, dtype, shard_tokens
        self.state = state  # the record's entry for this split, updated in place
        self.folder.mkdir(exist_ok=True)
        part = self._part_path()
        keep = state["part_tokens"] * dtype.itemsize
        if keep and not part.is_file() and part.with_suffix("").is_file():
            part.with_suffix("").rename(part)  # renamed, then stopped before the record said so
        if keep and (not part.is_file() or part.stat().st_size < keep):
            raise UserError(f"{part} is shorter than progress.json says; delete {root} to start again")
        self.file = open(part, "r+b" if part.is_file() else "wb")  # noqa: SIM115 (closed by close())
        self.file.truncate(keep)
        self.file.seek(keep)

    def _part_path(self) -> Path:
        return self.folder / f"{len(self.state['shards']):06d}.bin.part"

    def add(self, tokens: np.ndarray) -> None:
        while tokens.size:
            room = self.shard_tokens - self.state["part_tokens"]
            self.file.write(tokens[:room].tobytes())
            self.state["part_tokens"] += min(room, tokens.size)
            tokens = tokens[room:]
            if self.state["part_tokens"] == self.shard_tokens:
                self.finish_shard()

    def finish_shard(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        part = self._part_path()
        name = part.name.removesuffix(".part")
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            while block := f.read(1 << 24):
                digest.update(block)
        part.rename(self.folder / name)
        self.state["shards"].append(
            {
                "file": f"{self.split}/{name}",
                "tokens": self.state["part_tokens"],
                "sha256": digest.hexdigest(),
            }
        )
        self.state["part_tokens"] = 0
        self.file = open(self._part_path(), "wb")  # noqa: SIM115

    def close(self, last: bool) -> None:
        """Flush (between chunks); `last`: the stream is complete, so the partly filled shard is final."""
        if last and self.state["part_tokens"]:
            self.finish_shard()
        self.file.flush()
        if last:
            self.file.close()
            self._part_path().unlink(missing_ok=True)

    def release(self) -> None:
        """Close the file whatever happened (what was written stays for a continued run)."""
        if not self.file.closed:
            self.file.close()

    def total(self) -> int:
        return sum(s["tokens"] for s in self.state["shards"]) + self.state["part_tokens"]


def _tokenize_all(
    partial: Path,
    source: Source,
    tokenizer: Tokenizer,
    record: dict,
    val_fraction: float,
    shard_tokens: int,
    chunk_chars: int,
    workers: int | None,
    progress: bool,
) -> dict:
    from tqdm import tqdm

    dtype = token_dtype(tokenizer.vocab_size)
    writers = {s: ShardWriter(partial, s, dtype, shard_tokens, record["splits"][s]) for s in SPLITS}
    workers = max(1, workers or os.cpu_count() or 1)
    if source.total_bytes is not None or source.single_document:  # no idle workers for a small corpus
        size = source.total_bytes or 0
        workers = 1 if source.single_document else min(workers, max(1, size // chunk_chars))
    documents = itertools.islice(_documents(source, val_fraction), record["next_document"], None)
    chunks = _chunks(documents, chunk_chars)
    bar = tqdm(
        total=source.total_bytes,
        initial=record["input_bytes"],
        unit="B",
        unit_scale=True,
        desc="tokenizing",
        disable=None if progress else True,  # None: only on a terminal
    )
    try:
        for count, encoded in _encoded_in_order(chunks, tokenizer, workers, (val_fraction, dtype)):
            for split in SPLITS:
                tokens, documents_done, chars = encoded[split]
                writers[split].add(tokens)
                record["splits"][split]["documents"] += documents_done
                record["splits"][split]["chars"] += chars
                writers[split].close(last=False)
            record["next_document"] += count
            record["input_bytes"] += encoded["bytes"]
            _save_record(partial, record)
            bar.update(encoded["bytes"])
        _check_both_splits(source.name, writers["train"].total(), writers["val"].total(), record)
        for writer in writers.values():
            writer.close(last=True)
    finally:
        bar.close()
        for writer in writers.values():
            writer.release()
    _save_record(partial, record)
    index = {s: record["splits"][s]["shards"] for s in SPLITS}
    meta = _meta(source, tokenizer, record, index, val_fraction, shard_tokens, dtype)
    (partial / "index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    (partial / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    (partial / "progress.json").unlink()
    return meta


def _check_both_splits(name: str, train_tokens: int, val_tokens: int, record: dict) -> None:
    if train_tokens and val_tokens:
        return
    record["failed_at_end"] = True  # these settings can never give a usable folder: start afresh
    if not train_tokens and not val_tokens:
        raise UserError(f"corpus '{name}' is empty; pass files that contain text")
    missing = "validation" if not val_tokens else "training"
    raise UserError(
        f"corpus '{name}' is too small to hold out a validation split (no document fell into "
        f"{missing}); add documents or change --val-fraction"
    )


def _meta(source, tokenizer, record, index, val_fraction, shard_tokens, dtype) -> dict:
    splits = record["splits"]
    if source.single_document:
        split_rule = f"the last {val_fraction * 100:g}% of the characters of the one document"
    elif source.read_val is not None:
        split_rule = "the source's own validation split"
    else:
        split_rule = f"whole documents, {val_fraction * 100:g}% chosen by a blake2b hash of their text"
    hashes = "".join(shard["sha256"] for s in SPLITS for shard in index[s] + [{"sha256": "|"}])
    content = source.content_sha256() if source.content_sha256 else None
    return {
        "format": META_FORMAT,
        "layout": "shards",
        "source": source.name,
        "source_identity": source.identity,
        "source_files": source.files[:20],
        "source_file_count": len(source.files),
        "source_sha256": content,
        "tokenizer": tokenizer.kind,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "val_fraction": val_fraction,
        "val_split": split_rule,
        "shard_tokens": shard_tokens,
        "index": "index.json",
        "input_bytes": record["input_bytes"],
        "documents": 1
        if source.single_document
        else splits["train"]["documents"] + splits["val"]["documents"],
        "train_documents": splits["train"]["documents"],
        "val_documents": splits["val"]["documents"],
        "train_chars": splits["train"]["chars"],
        "val_chars": splits["val"]["chars"],
        "train_tokens": sum(s["tokens"] for s in index["train"]),
        "val_tokens": sum(s["tokens"] for s in index["val"]),
        "train_shards": len(index["train"]),
        "val_shards": len(index["val"]),
        "tokens_sha256": hashlib.sha256(hashes.encode()).hexdigest(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def prepare_prompt_response(
    records: Records,
    tokenizer_kind: str | Tokenizer,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    vocab_size: int | None = None,
) -> dict:
    """Tokenize prompt/response pairs with a loss mask over the responses; the last val_fraction
    of the records (at least one) become the validation split. Returns meta.json's contents."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    tokenizer = tokenizer_kind
    if isinstance(tokenizer_kind, str):  # records must be separated, so that the model learns to stop
        tokenizer = build_tokenizer(tokenizer_kind, [p + r for p, r in records.pairs], True, vocab_size)
    dtype = token_dtype(tokenizer.vocab_size)
    n_val = min(max(1, round(len(records.pairs) * val_fraction)), len(records.pairs) - 1)
    splits = {"train": records.pairs[:-n_val], "val": records.pairs[-n_val:]}
    end = [] if tokenizer.eot_id is None else [tokenizer.eot_id]
    arrays, counts = {}, {}
    for split, pairs in splits.items():
        tokens, mask = [], []
        for prompt, response in pairs:
            prompt_ids = tokenizer.start_ids() + tokenizer.encode(prompt)
            response_ids = tokenizer.encode(response) + end
            tokens += prompt_ids + response_ids
            mask += [0] * len(prompt_ids) + [1] * len(response_ids)
        arrays[f"{split}.bin"] = np.asarray(tokens, dtype=dtype)
        arrays[f"{split}.mask.bin"] = np.asarray(mask, dtype=np.uint8)
        counts[split] = (len(pairs), len(tokens), sum(mask))
    meta = {
        "format": FLAT_FORMAT,
        "source": records.name,
        "source_files": records.files,
        "source_file_count": len(records.files),
        "source_sha256": records.sha256,
        "layout": "prompt-response",
        "tokenizer": tokenizer.kind,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "documents": len(records.pairs),
        "train_records": counts["train"][0],
        "val_records": counts["val"][0],
        "train_tokens": counts["train"][1],
        "val_tokens": counts["val"][1],
        "train_loss_tokens": counts["train"][2],
        "val_loss_tokens": counts["val"][2],
        "loss_mask": {
            "train": "train.mask.bin",
            "val": "val.mask.bin",
            "dtype": "uint8",
            "meaning": "one per token: 1 = the loss covers it (response), 0 = it does not (prompt)",
        },
        "tokens_sha256": _tokens_sha256(*arrays.values()),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write(out_dir, arrays, tokenizer, meta)
    return meta


def _tokens_sha256(*arrays: np.ndarray) -> str:
    # each array hashed on its own: the same text split differently is different data
    digests = "".join(hashlib.sha256(a.tobytes()).hexdigest() for a in arrays)
    return hashlib.sha256(digests.encode()).hexdigest()


def _write(out_dir: Path, arrays: dict[str, np.ndarray], tokenizer: Tokenizer, meta: dict) -> None:
    with new_folder(out_dir) as staging:
        for name, array in arrays.items():
            array.tofile(staging / name)
        tokenizer.save(staging / "tokenizer.json")
        (staging / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
