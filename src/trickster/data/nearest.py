"""A split by hash with one side left empty: the one document nearest that side moved to it.

Each document goes to validation when the hash of its text (encode.text_rank) falls below
--val-fraction of the hashes. A small corpus can have none fall there by chance (10 documents at
0.1: 0.9**10, one time in three), or, at a large fraction, all of them: the preparation was refused,
and a user with 10 files could not prepare them. So, when one side is empty and the other holds at
least 2 documents that went there by their own hash, the one whose hash is nearest the empty side
(the lowest, to move into validation; the highest, into training) is moved there, and the
preparation starts again from the first document with that one moved (encode.side). The choice
depends on the texts only, so the same corpus always moves the same document; near-copies and
kept exact copies follow their first copy as always, so a cluster moves whole and validation still
holds no copy of a training document. A copy is never the one chosen: it did not choose its side.
One side empty with fewer such documents (one cluster, copies of one text) is still refused.
"""

from __future__ import annotations

from trickster.data.shards import SPLITS, Progress
from trickster.plural import counted


def note(record: Progress, split: str, rank: int) -> None:
    """Count a document kept on `split` by its own hash `rank`, keeping the rank nearest the other side."""
    count, nearest = record.by_hash.get(split, [0, rank])
    record.by_hash[split] = [count + 1, min(nearest, rank) if split == "train" else max(nearest, rank)]


def to_move(record: Progress) -> dict | None:
    """{"to": the empty side, "rank": the document to move there}, or None: both sides hold a
    document, one was moved already, or no two went to the full side by their own hash."""
    if record.moved is not None:
        return None
    for full, empty in (SPLITS, SPLITS[::-1]):
        count, rank = record.by_hash.get(full, [0, None])
        if record.splits[empty].documents == 0 and count >= 2:
            return {"to": empty, "rank": rank}
    return None


def moved_line(meta: dict) -> str | None:
    """The summary's line for a folder whose one document was moved, else None."""
    side = meta.get("moved_nearest")
    if side is None:
        return None
    total = meta["train_documents"] + meta["val_documents"]
    held, fraction = meta[f"{side}_documents"], f"--val-fraction {meta['val_fraction']:g}"
    if side == "val":
        why = f"none fell there by hash at {fraction}"
    else:
        why = f"all fell into validation by hash at {fraction}"
    name = "validation" if side == "val" else "training"
    return f"{name}: {held:,} of {counted(total, 'document')} ({why}; the nearest was moved)"
