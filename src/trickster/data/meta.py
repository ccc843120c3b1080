"""meta.json: what a prepared data folder says about itself (its source, tokenizer, split rule,
counts per split, a checksum over its token shards, and the settings it was prepared with),
written once preparation is done."""

from __future__ import annotations

import json
import time
from pathlib import Path

from trickster.data.shards import SPLITS, Progress, tokens_sha256
from trickster.data.sources import Source
from trickster.data.tokenizers import DEFAULT_BPE_VOCAB, Tokenizer, load_tokenizer
from trickster.errors import UserError
from trickster.plural import counted

META_FORMAT = 3  # shards with index.json, masks beside the shards, duplicates handled
# The version of the code that prepares: bump it whenever the same settings would give other tokens
# or shards (how a tokenizer is trained or encodes, how documents are read, split, deduplicated or
# laid out in shards), so that `data prepare` prepares a folder an older version wrote again instead
# of keeping it as already prepared. Only that rule reads it: training loads older folders as they are
# (a layout the loader cannot read bumps META_FORMAT too). A change that leaves some sources' tokens
# as they were leaves those at the version before it (preparation_version), so that their folders, a
# Hub dataset's of hours of tokenizing, are not prepared again for nothing. History: 1, bpe learns from
# runs of letters or blanks cut to 1,000 characters (890679f), every source; 2, text files' line
# endings read as "\n" (textfile.newlines), the sources that read them (Source.newlines). Folders
# that record no version are older.
PREPARATION_VERSION = 2


def preparation_version(source: Source) -> int:
    """The newest version that changed what `source` is prepared into."""
    return PREPARATION_VERSION if source.newlines else 1


def preparation_settings(
    source: Source, tokenizer: str | Tokenizer, vocab_size: int | None, val_fraction: float,
    shard_tokens: int, dedup: dict,
) -> dict:  # fmt: skip
    """Everything that decides a prepared folder's contents: an unfinished preparation continues
    only with the same settings (progress.json), and a finished one is kept (meta.json)."""
    return {
        "format": META_FORMAT,
        "version": preparation_version(source),
        "source": source.identity,
        "tokenizer": tokenizer
        if isinstance(tokenizer, str)
        else {"from": tokenizer.kind, "fingerprint": tokenizer.fingerprint()},
        "vocab_size": vocab_size,
        "val_fraction": val_fraction,
        "shard_tokens": shard_tokens,
        "dedup": dedup,
    }


def with_folder_spellings(out_dir: Path, partial: Path, settings: dict, tokenizer: str | Tokenizer) -> dict:
    """`settings` as `out_dir` recorded them where they say the same another way: a tokenizer of
    the same ids (with_folder_tokenizer), bpe's default size (with_folder_vocab_size)."""
    return with_folder_vocab_size(out_dir, partial, with_folder_tokenizer(out_dir, settings, tokenizer))


def with_folder_tokenizer(out_dir: Path, settings: dict, tokenizer: str | Tokenizer) -> dict:
    """`settings` with the tokenizer `out_dir` was prepared with in place of `tokenizer` (a model's,
    --tokenizer-from), when that is all that differs and the two give every id the same meaning
    (token_meaning.same_ids, the rule training and eval check a model against data by: a char
    model and its Hugging Face export imported back): its tokens are those this preparation would
    write, so the folder is kept as prepared rather than written again. Else `settings` as given."""
    meta = recorded_meta(out_dir)
    recorded = None if meta is None else meta.get("settings")
    if not isinstance(tokenizer, Tokenizer) or not isinstance(recorded, dict) or recorded == settings:
        return settings
    if {**recorded, "tokenizer": settings["tokenizer"]} != settings:
        return settings  # other settings besides: prepared again
    from trickster.data.token_meaning import same_ids  # may read the `tokenizers` package

    try:
        theirs = load_tokenizer(out_dir / "tokenizer.json")
    except UserError:  # damaged: already_prepared would not keep the folder either
        return settings
    return {**settings, "tokenizer": recorded["tokenizer"]} if same_ids(theirs, tokenizer) else settings


def with_folder_vocab_size(out_dir: Path, partial: Path, settings: dict) -> dict:
    """`settings` with bpe's vocab_size as `out_dir` (else its `partial`, unfinished) recorded it,
    when that is the same size written the other way: --vocab-size 4096 given where it was left
    out (recorded as null), or the reverse. The merges are the same, so the folder is kept (or
    continued) rather than prepared again after 'vocab_size None, now 4096'."""
    default = (None, DEFAULT_BPE_VOCAB)
    if settings["tokenizer"] != "bpe" or settings["vocab_size"] not in default:
        return settings
    for recorded in (recorded_meta(out_dir), recorded_meta(partial, "progress.json")):
        kept = (recorded or {}).get("settings")
        if isinstance(kept, dict) and kept.get("tokenizer") == "bpe" and "vocab_size" in kept:
            size = kept["vocab_size"]
            same = size in default and type(size) is not bool  # True == 1 is no size
            return {**settings, "vocab_size": size} if same else settings
    return settings


def already_prepared(out_dir: Path, settings: dict, revision: str | None = None) -> dict | None:
    """meta.json of `out_dir` if it is complete and was prepared with these settings (and from the
    source's `revision`, when both it and the folder know one), else None.

    Complete as the loader checks it: meta.json, index.json and tokenizer.json readable, every shard
    and mask there with the size index.json gives (the shards are not hashed again: that would read
    every byte, as long as preparing a small corpus anew)."""
    from trickster.data.loader import load_data  # torch, only once a folder is there to check

    meta = recorded_meta(out_dir)
    if meta is None or meta.get("settings") != settings:
        return None  # other settings, or written before meta.json recorded them
    if moved(meta, revision):
        return None
    try:
        load_data(out_dir)
    except UserError:
        return None
    return meta


def prepared_again(out_dir: Path, settings: dict, revision: str | None = None) -> str | None:
    """Why `out_dir` is prepared again, in one line (why_prepared_again, and what happens); None when
    nothing says why."""
    why = why_prepared_again(out_dir, settings, revision)
    return None if why is None else f"{why[0]}: {why[1]}"


def why_prepared_again(out_dir: Path, settings: dict, revision: str | None = None) -> tuple[str, str] | None:
    """Why `out_dir` is prepared again, and what is done about it, when it holds other settings or
    other input (a corpus file edited since: the folder is replaced once the new one is done, and a
    run trained on it then refuses --resume, so the change is said, not silent), or these settings
    but another version of the code wrote it (a folder from before versions were recorded counts as
    older), or the source has another revision since (a dataset updated on the Hub); None for any
    other reason."""
    meta = recorded_meta(out_dir)
    recorded = None if meta is None else meta.get("settings")
    if not isinstance(recorded, dict):
        return None
    if not same_but_version(recorded, settings):
        return _replaced(out_dir, recorded, settings), REPLACED
    if recorded.get("version") != settings["version"]:
        return f"{out_dir} was prepared by {other_version(recorded, settings)}", AGAIN
    if moved(meta, revision):
        return (
            f"{out_dir} was prepared from revision {meta['source_revision'][:12]} of the dataset; the "
            f"Hub has revision {revision[:12]} since"
        ), AGAIN
    return None


AGAIN = "preparing it again"
REPLACED = f"{AGAIN}; it is replaced once this preparation is done"


def _replaced(out_dir: Path, recorded: dict, settings: dict) -> str:
    """What differs between the settings `out_dir` was prepared with and `settings`, in one line."""
    changed = [key for key in settings if key != "version" and recorded.get(key) != settings[key]]
    files = files_changed(recorded.get("source") or {}, settings.get("source") or {})
    if changed == ["source"] and files:
        return f"{out_dir} holds data prepared from other input ({files})"
    told = settings_told(recorded, settings, changed)
    return f"{out_dir} holds data prepared with other settings ({told})"


def settings_told(recorded: dict, settings: dict, changed: list[str]) -> str:
    """The `changed` settings in words, each with its value then and now where both are one word or
    number (`tokenizer char, now byte`): what a user needs to tell which command was run before."""
    if "tokenizer" in changed:  # bpe's size goes with bpe: "vocab_size 300, now None" told nothing
        changed = [key for key in changed if key != "vocab_size"]
    recorded, settings = _sized(recorded), _sized(settings)
    return ", ".join(_told(key, recorded.get(key), settings[key]) for key in changed)


def _sized(settings: dict) -> dict:
    """bpe's vocab_size left out (null) as the size it stands for, to be told ('None, now 2000')."""
    if settings.get("tokenizer") != "bpe" or settings.get("vocab_size") is not None:
        return settings
    return {**settings, "vocab_size": f"{DEFAULT_BPE_VOCAB} (the default)"}


def _told(key: str, before, now) -> str:
    """A setting by its name, with both values when they are one word or number each."""
    plain = (str, int, float, type(None))
    return f"{key} {before}, now {now}" if isinstance(before, plain) and isinstance(now, plain) else key


def files_changed(recorded: dict, source: dict, shown: int = 3) -> str:
    """The input files that differ between two records of a source, in words (`a.txt changed, b.txt
    added`); "" when its files (each [name, size, time]) are the same, or not so recorded, or
    something else of it differs (--text-field's field, a dataset's name)."""
    rows = [{f[0]: f[1:] for f in s.get("files") or () if isinstance(f, list)} for s in (recorded, source)]
    others = {k for k in {*recorded, *source} - {"files"} if recorded.get(k) != source.get(k)}
    if not all(rows) or others:
        return ""
    before, now = rows
    words = [f"{n} changed" for n in now if n in before and before[n] != now[n]]  # its size or time
    words += [f"{n} added" for n in now if n not in before] + [f"{n} gone" for n in before if n not in now]
    more = f" and {len(words) - shown:,} more" if len(words) > shown else ""
    return ", ".join(words[:shown]) + more


def older_kept(out_dir: Path, settings: dict) -> dict | None:
    """meta.json of `out_dir` when it is complete and holds these settings but another version of
    the code wrote it: what is kept when its source cannot be read again (offline), as it was kept
    before versions were recorded; None otherwise."""
    meta = recorded_meta(out_dir)
    recorded = None if meta is None else meta.get("settings")
    if not isinstance(recorded, dict) or recorded.get("version") == settings["version"]:
        return None
    older = {k: v for k, v in settings.items() if k != "version"}
    if "version" in recorded:
        older["version"] = recorded["version"]
    return already_prepared(out_dir, older)


def same_but_version(recorded: dict, settings: dict) -> bool:
    """Whether `recorded` settings are `settings` but for the version of the code (or its absence)."""
    return {**recorded, "version": settings["version"]} == settings


def recorded_meta(out_dir: Path, name: str = "meta.json") -> dict | None:
    """The meta.json (or another JSON `name`) of `out_dir` as a dict; None when it is missing,
    unreadable or not a mapping."""
    try:
        meta = json.loads((out_dir / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def moved(meta: dict, revision: str | None) -> bool:
    """Whether the source has another revision than the one `meta` (a meta.json) was prepared from;
    compared only when both are known (a Hub dataset looked up online, a folder that recorded its own)."""
    return bool(revision and meta.get("source_revision") and meta["source_revision"] != revision)


def other_version(recorded: dict, settings: dict) -> str:
    """The version of the code that wrote a preparation with these `recorded` settings, in words
    (`settings`: this one's)."""
    was, now = recorded.get("version"), settings["version"]
    newer = isinstance(was, int) and was > now  # this one was downgraded since
    return (
        f"{'a newer' if newer else 'an older'} version of trickster ("
        f"{'no version recorded' if was is None else f'version {was}'}, this one writes version "
        f"{now}: its tokens or shards may differ)"
    )


def split_rule(source: Source, val_fraction: float, record: Progress) -> str:
    """How documents were sent to validation, in words (meta.json's val_split)."""
    if record.cut_one_document:
        return f"{_the_one_document(source, record)}: the last {val_fraction * 100:g}% of its tokens"
    if source.single_document:
        return f"the last {val_fraction * 100:g}% of the characters of the one document"
    if source.records:
        return "the last records of the file" if source.name == "jsonl" else "the last records read"
    if source.read_val is not None:
        return "the source's own validation split"
    return f"whole documents, {val_fraction * 100:g}% chosen by a blake2b hash of their text"


def _the_one_document(source: Source, record: Progress) -> str:
    """The one document left, and why it was one: copies of it dropped, empty files skipped (no
    document), or both."""
    why = ["the others were copies"] if record.next_document > 1 else []
    unit = source.no_text.unit
    if source.no_text.count:  # a Hub dataset's or JSON Lines' records without text, as summary.skipped
        empty = ("empty file",) if unit == "file" else (f"{unit} with no text", f"{unit}s with no text")
        why.append(f"{counted(source.no_text.count, *empty)} skipped")
    if not why:
        return "one document"
    return f"one {'distinct ' if record.next_document > 1 else ''}document ({'; '.join(why)})"


def prepared_meta(source: Source, tokenizer: Tokenizer, record: Progress, index, val_fraction, dtype) -> dict:
    """meta.json of a finished preparation: what was read and how, the tokenizer, the split rule,
    counts per split and the checksum of every token shard (`index`: index.json's shard lists)."""
    splits = record.splits
    content = record.source_sha256 or (source.content_sha256() if source.content_sha256 else None)
    meta = {
        "format": META_FORMAT,
        "layout": "shards",
        "source": source.name,
        "source_files": source.files[:20],
        "source_file_count": len(source.files),
        "source_sha256": content,
        "source_revision": record.source_revision,  # a Hub dataset's commit, when it was known
        "tokenizer": tokenizer.kind,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "vocab_size": tokenizer.vocab_size,
        "eot_id": tokenizer.eot_id,
        "dtype": dtype.name,
        "val_fraction": val_fraction,
        "val_split": split_rule(source, val_fraction, record),
        "moved_nearest": None if record.moved is None else record.moved["to"],  # nearest.py
        "shard_tokens": record.settings["shard_tokens"],
        "index": "index.json",
        "input_bytes": record.input_bytes,
        "documents_read": record.next_document,
        "documents_without_text": source.no_text.count,  # null, empty: skipped, no document
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
        meta["records"] = source.records  # their layout (--format); tokenizer.json holds its chat template
        meta |= {f"{s}_records": splits[s].documents for s in SPLITS}
        meta |= {f"{s}_loss_tokens": splits[s].loss_tokens for s in SPLITS}
        meta["loss_mask"] = {
            "dtype": "uint8",
            "files": "beside each shard, named under 'mask' in index.json",
            "meaning": "one per token: 1 = the loss covers it (response), 0 = it does not (prompt)",
        }
    meta["tokens_sha256"] = tokens_sha256(index)
    meta["settings"] = record.settings  # its "source" is the one list of every file read (and their sizes)
    meta["created"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return meta
