"""What `trickster data prepare` says when it is done, and the lines of it `data report` says again
(records without text, duplicates): read from meta.json, without torch (prepare's workers never
import it)."""

from __future__ import annotations

from pathlib import Path

from trickster.data.nearest import moved_line
from trickster.data.record_layouts import TEMPLATES
from trickster.data.tokenizers import DEFAULT_BPE_VOCAB
from trickster.plural import counted

NO_SEPARATOR = (
    "note: this tokenizer has no end-of-text id, so the records follow each other without a separator "
    "and a model cannot learn where a response ends"
)
# what `data prepare` read, by --format
RECORDS = {
    "prompt-response": "prompt/response records",
    "alpaca": "instruction records",
    "messages": "conversations",
}
NO_SEPARATOR_DOCUMENTS = (
    "note: this tokenizer has no end-of-text id, so the documents follow each other without a "
    "separator and a model cannot learn where one ends"
)


def _text_size(size: int) -> str:
    """1.1 MB; a corpus under 0.1 MB in KB, and one under 100 bytes in bytes, where MB or KB
    would read 0.0 (as if nothing were read)."""
    if size < 100:
        return counted(size, "byte")
    return f"{size / 1e6:,.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} KB"


def prepare_summary(meta: dict, out_dir: Path, kept: bool = False, removed: str | None = None) -> list[str]:
    """What `trickster data prepare` says when it is done; `kept`: out_dir was already prepared
    (`removed`: the DIR.partial it made useless, deleted)."""
    if kept:
        return [
            f"already prepared: {out_dir} holds {meta['source']} with the same settings ({_holding(meta)}); "
            "nothing was rewritten (delete it to prepare it again)" + (f"; {removed}" if removed else "")
        ]
    if meta.get("loss_mask"):
        records = RECORDS[meta.get("records", "prompt-response")]  # a folder of 0.1 has no "records"
        lines = [
            f"{meta['source']}: {meta['documents_read']:,} {records} read "
            f"({meta['train_records']:,} train, {meta['val_records']:,} val kept; "
            f"validation: {meta['val_split']})"
        ]
    else:
        counts = (
            ""
            if meta["documents"] == 1
            else f"{meta['train_documents']:,} train, {meta['val_documents']:,} val kept; "
        )
        read = meta["documents_read"] if meta.get("dedup") else meta["documents"]  # one text cut in two
        lines = [
            f"{meta['source']}: {_text_size(meta['input_bytes'])} of text in {counted(read, 'document')} "
            f"({counts}validation: {meta['val_split']})"
        ]
        lines += [line] if (line := moved_line(meta)) else []
        lines += skipped(meta)
    if meta.get("dedup"):
        lines += dedup_lines(meta)
    kind, padding = meta["tokenizer"], _padding(meta)
    lines.append(
        f"tokenizer: {kind}, vocabulary {meta['vocab_size']:,} ({meta['dtype']} token shards{padding})"
    )
    lines += short_of_asked(meta)
    masks = " with loss masks (.mask.bin)" if meta.get("loss_mask") else ""
    split = {
        s: f"{counted(meta[f'{s}_tokens'], 'token')} in {counted(meta[f'{s}_shards'], 'shard')}"
        for s in ("train", "val")
    }
    lines.append(
        f"wrote {out_dir}: train {split['train']}, val {split['val']}{masks}, "
        "index.json, meta.json, tokenizer.json"
    )
    if meta.get("loss_mask"):
        replies = "reply" if meta.get("records") == "messages" else "response"
        lines.append(f"the loss covers {counted(meta['train_loss_tokens'], f'{replies} token')} of train")
        if meta.get("records") in TEMPLATES:
            lines.append(
                f"chat template: the {meta['records']} layout, in tokenizer.json: a model fine-tuned on "
                f"{out_dir} is asked this way by trickster chat, serve and export"
            )
        if meta.get("eot_id") is None:
            lines.append(NO_SEPARATOR)
    elif meta.get("eot_id") is None and meta["documents"] > 1:  # --tokenizer-from a one-text model
        lines.append(NO_SEPARATOR_DOCUMENTS)
    return lines


def kept_older(meta: dict, out_dir: Path) -> str:
    """What `data prepare` says of a folder another version prepared, kept because its source
    cannot be read again (offline): not 'already prepared with the same settings', nor 'delete it'."""
    return (
        f"{out_dir} holds {meta['source']} as that version prepared it ({_holding(meta)}); training "
        "loads it as it is, and this command prepares it again once its source can be read"
    )


def _holding(meta: dict) -> str:
    return (
        f"train {counted(meta['train_tokens'], 'token')}, val {meta['val_tokens']:,}, {meta['tokenizer']} "
        f"vocabulary {meta['vocab_size']:,}"
    )


def _padding(meta: dict) -> str:
    from trickster.model.vocab import padded_vocab

    rows = padded_vocab(meta["vocab_size"])
    return f"; a model's vocab_size: auto pads it to {rows:,}" if rows != meta["vocab_size"] else ""


def skipped(meta: dict) -> list[str]:
    """The records (or files) without text preparation skipped, when there were any: null, empty,
    no text field, so none of them is a document or among those read."""
    count = meta.get("documents_without_text")
    if not count:
        return []
    if meta["source"] == "text":
        return [f"skipped {counted(count, 'empty file')}"]
    return [f"skipped {counted(count, 'record')} with no text (null, empty, or without the text field)"]


def dedup_lines(meta: dict) -> list[str]:
    d = meta.get("dedup")
    if not d:
        return ["duplicates: not looked for (one document, or prepared before deduplication)"]
    lines = [
        f"duplicates: {counted(d['exact_found'], 'exact copy', 'exact copies')} found, "
        f"{d['exact_dropped']:,} dropped" + ("" if not d["keep_duplicates"] else " (--keep-duplicates)")
    ]
    if d["mode"] == "exact":
        lines.append("near-copies: not looked for (--dedup exact)")
    else:
        how = "kept on their cluster's side of the split" if d["mode"] == "group" else "dropped"
        lines.append(
            f"near-copies (Jaccard >= {d['threshold']:g}, {how}): {d['near_found']:,} found, "
            f"{d['near_dropped']:,} dropped, {d['near_moved']:,} moved to their cluster's split"
        )
    if d.get("blank_dropped"):
        lines.append(f"blank documents dropped: {d['blank_dropped']:,}")
    return lines


def short_of_asked(meta: dict) -> list[str]:
    """A bpe vocabulary smaller than --vocab-size asked (or its default): the `tokenizers` trainer
    stops without a word once no pair is left to merge, so the size reached is said here."""
    settings = meta.get("settings") or {}
    if settings.get("tokenizer") != "bpe":  # not trained here (--tokenizer-from), or another kind
        return []
    asked = settings.get("vocab_size")
    wanted = DEFAULT_BPE_VOCAB if asked is None else asked
    if meta["vocab_size"] >= wanted:
        return []
    flag = "--vocab-size" if asked is not None else "the default --vocab-size"
    return [
        f"note: bpe stopped at a vocabulary of {meta['vocab_size']:,}, short of the {wanted:,} asked "
        f"({flag}): every word of the text it learned from is one token by then; more text makes "
        "room for more"
    ]
