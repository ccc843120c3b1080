"""Text -> a prepared data folder: train.bin, val.bin (flat token streams), meta.json, tokenizer.json.

The token files are raw arrays of the smallest unsigned dtype that fits the vocabulary, read back
with numpy.memmap. Documents are separated by the tokenizer's end-of-text token. The folder is
built under a temporary name and renamed into place, so an existing folder survives any failure.

Prompt/response records (fine-tuning) add a loss mask that travels with the tokens:
train.mask.bin and val.mask.bin hold one uint8 per token, 1 where the loss covers the token (the
response and the end-of-text after it) and 0 where it does not (the prompt), and meta.json names
them under "loss_mask". Each record is [start id] prompt response [end-of-text].
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from trickster.atomic import new_folder
from trickster.data.sources import Corpus, Records
from trickster.errors import UserError
from trickster.tokenizers import Tokenizer, build_tokenizer

META_FORMAT = 1
PREPARED_FILES = {"train.bin", "val.bin", "meta.json", "tokenizer.json", "train.mask.bin", "val.mask.bin"}


def token_dtype(vocab_size: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if vocab_size - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"vocabulary of {vocab_size} does not fit in uint32")


def split_documents(documents: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Cut the corpus at (1 - val_fraction) of its characters; the document there is cut in two."""
    total = sum(len(d) for d in documents)
    cut = int(total * (1 - val_fraction))
    train, val, seen = [], [], 0
    for doc in documents:
        if seen + len(doc) <= cut:
            train.append(doc)
        elif seen >= cut:
            val.append(doc)
        else:
            train.append(doc[: cut - seen])
            val.append(doc[cut - seen :])
        seen += len(doc)
    return train, val


def encode_documents(tokenizer: Tokenizer, documents: list[str], dtype: np.dtype) -> np.ndarray:
    pieces = []
    for doc in documents:
        pieces.append(np.asarray(tokenizer.start_ids() + tokenizer.encode(doc), dtype=dtype))
        if tokenizer.eot_id is not None:
            pieces.append(np.asarray([tokenizer.eot_id], dtype=dtype))
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=dtype)


def prepare(
    corpus: Corpus,
    tokenizer_kind: str | Tokenizer,
    out_dir: str | Path,
    val_fraction: float = 0.1,
    vocab_size: int | None = None,
) -> dict:
    """Tokenize a corpus into out_dir and return its meta.json contents.

    `tokenizer_kind` is char, byte, bpe (trained on this corpus up to `vocab_size`) or gpt2, or an
    existing Tokenizer (a model's, to fine-tune it on this text).
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    if corpus.num_chars == 0:
        raise UserError(f"corpus '{corpus.name}' is empty; pass files that contain text")
    train_docs, val_docs = split_documents(corpus.documents, val_fraction)
    if not val_docs or not any(val_docs):
        raise UserError(f"corpus '{corpus.name}' is too small to hold out a validation split")
    many_documents = len(corpus.documents) > 1
    tokenizer = tokenizer_kind
    if isinstance(tokenizer_kind, str):
        tokenizer = build_tokenizer(tokenizer_kind, corpus.documents, many_documents, vocab_size)
    dtype = token_dtype(tokenizer.vocab_size)
    train = encode_documents(tokenizer, train_docs, dtype)
    val = encode_documents(tokenizer, val_docs, dtype)

    meta = {
        "format": META_FORMAT,
        "source": corpus.name,
        "source_files": corpus.files[:20],
        "source_file_count": len(corpus.files),
        "source_sha256": corpus.sha256,
        "tokenizer": tokenizer.kind,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "documents": len(corpus.documents),
        "train_chars": sum(len(d) for d in train_docs),
        "val_chars": sum(len(d) for d in val_docs),
        "train_tokens": int(train.size),
        "val_tokens": int(val.size),
        "tokens_sha256": _tokens_sha256(train, val),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write(out_dir, {"train.bin": train, "val.bin": val}, tokenizer, meta)
    return meta


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
        "format": META_FORMAT,
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


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} is a file; pass a folder path to --out")
    if out_dir.is_dir() and not {p.name for p in out_dir.iterdir()} <= PREPARED_FILES:
        raise UserError(
            f"{out_dir} already exists and is not a prepared data folder; choose another --out "
            "(nothing was changed)"
        )


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
