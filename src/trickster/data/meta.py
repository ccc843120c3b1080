"""meta.json: what a prepared data folder says about itself (its source, tokenizer, split rule,
counts per split, and a checksum over its token shards), written once preparation is done."""

from __future__ import annotations

import time

from trickster.data.shards import SPLITS, Progress, tokens_sha256
from trickster.data.sources import Source
from trickster.data.tokenizers import Tokenizer

META_FORMAT = 3  # shards with index.json, masks beside the shards, duplicates handled


def split_rule(source: Source, val_fraction: float, record: Progress) -> str:
    """How documents were sent to validation, in words (meta.json's val_split)."""
    if record.cut_one_document:
        return (
            f"one distinct document (the others were copies): the last {val_fraction * 100:g}% of its tokens"
        )
    if source.single_document:
        return f"the last {val_fraction * 100:g}% of the characters of the one document"
    if source.records:
        return "the last records of the file"
    if source.read_val is not None:
        return "the source's own validation split"
    return f"whole documents, {val_fraction * 100:g}% chosen by a blake2b hash of their text"


def prepared_meta(source: Source, tokenizer: Tokenizer, record: Progress, index, val_fraction, dtype) -> dict:
    """meta.json of a finished preparation: what was read and how, the tokenizer, the split rule,
    counts per split and the checksum of every token shard (`index`: index.json's shard lists)."""
    splits = record.splits
    content = source.content_sha256() if source.content_sha256 else None
    meta = {
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
        "val_split": split_rule(source, val_fraction, record),
        "shard_tokens": record.settings["shard_tokens"],
        "index": "index.json",
        "input_bytes": record.input_bytes,
        "documents_read": record.next_document,
        "documents": 1
        if source.single_document or record.cut_one_document
        else splits["train"].documents + splits["val"].documents,
        "dedup": {**record.settings["dedup"], **record.dedup} if not source.single_document else None,
    }
    for s in SPLITS:
        meta |= {
            f"{s}_documents": splits[s].documents,
            f"{s}_chars": splits[s].chars,
            f"{s}_bytes": splits[s].bytes,
            f"{s}_tokens": splits[s].tokens(),
            f"{s}_shards": len(index[s]),
        }
    if source.records:
        meta |= {f"{s}_records": splits[s].documents for s in SPLITS}
        meta |= {f"{s}_loss_tokens": splits[s].loss_tokens for s in SPLITS}
        meta["loss_mask"] = {
            "dtype": "uint8",
            "files": "beside each shard, named under 'mask' in index.json",
            "meaning": "one per token: 1 = the loss covers it (response), 0 = it does not (prompt)",
        }
    meta["tokens_sha256"] = tokens_sha256(index)
    meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return meta
