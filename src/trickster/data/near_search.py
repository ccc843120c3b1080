"""Which sides of the split hold a near-copy of each document of a chunk, with bounded work where a
band is shared by a large cluster of near-copies.

A document's fate needs only that (dedup.py): mode group keeps it on the one side that holds its
near-copies and drops it if both do; mode near drops it if either does (the earliest near-copy is
looked for only for the few examples meta.json keeps). So the candidates of each side are checked a
sample first (the first SAMPLE rows of each of the document's band buckets), and the check of a
side stops at its first near-copy.

Where thousands of near-copies share a band, every new member was read and compared with every kept
one: quadratic in the cluster's size (bench/dedup_clusters.py's boilerplate: 2.1 million rows read
for the 800 stories after the first 11,200, 130 CPU seconds per 10,000 and rising; now about 16 rows
a story, 4 seconds per 10,000 however many). Now the sample holds a near-copy, and a member costs
the few rows read before it (dedup.py's `_any_near`). Only a side whose sample holds none is
searched whole, as it must be: every candidate there has to be ruled out, as MinHashLSH's query and
the comparison of signatures did. So the work is still quadratic where many kept documents share
bands with a new one without being their near-copies (alike, just under the threshold); it is made
cheap instead: each candidate is ruled out on the low bits of its values, held in memory
(near_sketch.py), a few word operations, and only the few left are read back from dedup.bin
(bench/dedup_growth.py's `alike`: 32,000 stories cost the command's main process 55 CPU seconds, now
14; docs/PERFORMANCE.md).

No bound on that search keeps the decisions. A candidate left unread might agree with the document
on enough values: only its signature can rule it out. Tools that do bound it decide otherwise:
text-dedup (by default) and datatrove join every document that shares a bucket with another, by
union-find, without comparing signatures (a shared band is a duplicate; a chain of them, one
cluster), and a cap on a bucket's rows misses the near-copies beyond it (on `alike`, a search that
stops at the sample finds 797 of the 935 near-copies of 8,000 stories). An exact pruning exists:
the fraction of values two signatures differ in is a distance (Hamming's), so a candidate whose
distance to a pivot differs from the document's by more than 1 - threshold cannot be a near-copy.
But where the search is quadratic, the candidates lie at about the same distance from any pivot
as from the document (`alike`: 45 of 128 values apart, 37 to 53, the radius 25): it rules out none.
The decisions are the same (tested against MinHashLSH's, and on a chain of near-copies among alike
documents counted by hand: tests/test_near_index.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from trickster.data.near_index import NearIndex, distinct, on_side

SIDES = (0, 1)  # dedup.SPLIT_CODES: train, val
SAMPLE = 32  # rows of each band bucket checked first: usually all of them
BLOCK = 65_536  # candidates compared at once past the sample: 4 MB of near_sketch's words
_NONE = np.zeros(0, np.int64)


class ChunkSearch:
    """The band keys of a chunk's documents, their sampled candidates among the documents kept
    before the chunk, and the documents kept in the chunk so far (not yet in the index)."""

    def __init__(self, index: NearIndex, sigs: np.ndarray):
        self.index = index
        self.keys = index.band_keys(sigs)  # (documents, bands)
        self.sampled = {side: index.candidates(self.keys, side, SAMPLE) for side in SIDES}
        self.side_keys = [on_side(self.keys, side).tolist() for side in SIDES]  # Python ints: dict keys
        self.recent: dict[int, list[int]] = {}  # a side's band key -> rows kept in the chunk

    def keep(self, i: int, row: int, side: int) -> None:
        for key in self.side_keys[side][i]:
            self.recent.setdefault(key, []).append(row)

    def sides(self, i: int, holds_near_copy: Callable[[np.ndarray], bool], either: bool) -> set[int]:
        """The sides holding a near-copy of document i (`holds_near_copy`: whether some of the given
        candidate rows is one); with `either`, the first side found only."""
        found = set()
        for side in SIDES:
            if self._holds_one(i, side, holds_near_copy):
                found.add(side)
                if either:
                    break
        return found

    def every_candidate(self, i: int) -> np.ndarray:
        """Every candidate of document i on both sides, in order (the earliest near-copy is among them)."""
        return distinct(np.concatenate([self._every(i, side) for side in SIDES]))

    def _every(self, i: int, side: int) -> np.ndarray:
        """Every candidate of document i on `side`, kept before the chunk, then in it; a candidate
        that shares several bands with it is there as many times."""
        _, earlier = self.index.rows.find(on_side(self.keys[i], side))
        return np.concatenate([earlier, self._recent(i, side, None)[0]]).astype(np.int64)

    def _holds_one(self, i: int, side: int, holds_near_copy: Callable[[np.ndarray], bool]) -> bool:
        earlier, left_out = self.sampled[side][0][i], bool(self.sampled[side][1][i])
        recent, recent_left_out = self._recent(i, side, SAMPLE)
        if not len(earlier) and not len(recent):  # most documents: no candidate at all
            return False
        if holds_near_copy(np.concatenate([earlier, recent]).astype(np.int64)):
            return True
        if not (left_out or recent_left_out):
            return False
        every = self._every(i, side)  # the sample again among them: cheaper than taking it out
        return any(holds_near_copy(every[start : start + BLOCK]) for start in range(0, len(every), BLOCK))

    def _recent(self, i: int, side: int, limit: int | None) -> tuple[np.ndarray, bool]:
        """Rows kept in the chunk on `side` that share a band key with document i (of each key, the
        first `limit`; None: all; a row sharing several keys is there as many times), and whether
        some were left out."""
        rows: list[int] = []
        left_out = False
        for key in self.side_keys[side][i] if self.recent else ():
            bucket = self.recent.get(key)
            if bucket:  # most are not there
                if limit is not None and len(bucket) > limit:
                    bucket, left_out = bucket[:limit], True
                rows.extend(bucket)
        return (np.asarray(rows, np.int64) if rows else _NONE), left_out
