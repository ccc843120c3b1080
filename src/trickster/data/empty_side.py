"""A preparation that left a split empty, refused in one line: why (no text; copies that follow
their first copy's side; a text too short to cut; a corpus too small for its hash split) and what
to change. One side by hash with at least two documents is not refused: nearest.py moves one."""

from __future__ import annotations

from trickster.data.dedup import DedupSettings, emptied_by_grouping
from trickster.data.documents import one_text_too_short
from trickster.data.no_text import none_held
from trickster.data.shards import SPLITS, Progress
from trickster.data.sources import Source
from trickster.errors import UserError


def check_both_splits(record: Progress, source: Source, settings: DedupSettings, val_fraction: float) -> None:
    """Refuse a preparation that left a split empty, in one line saying why and what to change.
    Sets the record's failed_at_end: these settings can never give a usable folder."""
    train, val = (record.splits[s].tokens() for s in SPLITS)
    read = record.input_bytes  # an empty text file alone still gives bpe its end-of-text id
    if train and val and read:
        return
    record.failed_at_end = True  # these settings can never give a usable folder: start afresh
    name = source.name
    if not read or (not train and not val):
        # nothing kept: no copy was dropped (the first of each is kept), only documents of
        # whitespace; with records or files without text, what was found says what to pass instead
        empty = f"corpus '{name}' {none_held(source)}; pass files that contain text"
        blank = record.dedup.get("blank_dropped", 0)
        raise UserError(source.no_text.nothing_read(name, blank) or empty)
    missing = "validation" if not val else "training"
    kept = sum(record.splits[split].documents for split in SPLITS)
    if why := emptied_by_grouping(name, missing, record.dedup, kept, settings.mode):
        raise UserError(why)
    if not val and source.read_val is not None and record.dedup.get("exact_found"):
        where = " (records at the end of the file)" if source.records else ""
        raise UserError(  # its own split (the last records): --val-fraction and size were not why
            f"corpus '{name}' has no validation left: each document of its validation split copies "
            f"a training one, and a copy goes to its first copy's side; add validation documents{where} "
            "that are not copies"
        )
    if source.single_document:  # cut by characters: its empty part counts
        chars = sum(record.splits[s].chars for s in SPLITS)
        raise UserError(one_text_too_short(name, chars, bool(val), val_fraction))
    if kept > 1 and source.read_val is None and not source.records:
        # by hash, where fewer than two documents chose their side themselves (nearest.py moves one
        # of two): the others are copies kept on their first copy's side
        keep = (
            "drop --keep-duplicates to keep one, which is cut in two, or " if settings.keep_duplicates else ""
        )
        raise UserError(
            f"corpus '{name}' is too small to hold out a validation split: its {kept:,} documents are "
            f"copies of one text, which keep to one side of the split (none fell into {missing}); "
            f"{keep}add documents"
        )
    raise UserError(
        f"corpus '{name}' is too small to hold out a validation split (no document fell into "
        f"{missing}); add documents or change --val-fraction"
    )
