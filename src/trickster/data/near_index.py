"""The index behind the search for copies in dedup.py, in numpy arrays instead of Python objects.

- RowIndex: rows by 64-bit key, any number of rows per key, as sorted runs of (key, row) pairs:
  12 bytes a pair. A batch of pairs becomes a run of its own, and runs of like size are merged (a
  binary counter), so there are about log2(pairs / batch) runs and a pair is moved as many times.
  Looking keys up is a binary search per run, for a whole batch of keys in one numpy call: no
  Python work per key, and no slots left empty as in a hash table. datasketch's MinHashLSH, which
  this replaces, kept a Python set per band key and a table of every document's band keys: about
  6 KB per document.
- NearIndex: MinHashLSH's bands (the same number and width, tuned to the threshold as datasketch
  tunes them: tuned_bands, without datasketch's import of scipy); the key of
  a document's band is the band's number and a 32-bit hash of its values, with the document's side
  of the split in the top bit (near_search.py looks each side up apart). Two documents that agree
  on a whole band always share its key, so no candidate MinHashLSH would find is missed; a hash
  shared by chance is weeded out by the caller, which compares the signatures (shares_a_band).
"""

from __future__ import annotations

import numpy as np

_P = np.uint64(0x100000001B3)  # FNV prime: combines a band's values into one number
WEIGHTS = (0.05, 0.95)  # datasketch's band tuning: (false positives, false negatives); see dedup.py


class RowIndex:
    """add(keys, rows) stores each (key, row) pair; find(keys) gives every stored row of each key."""

    def __init__(self):
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (keys, rows) sorted by key; larger first

    @property
    def nbytes(self) -> int:
        return sum(keys.nbytes + rows.nbytes for keys, rows in self.runs)

    def __len__(self) -> int:
        return sum(len(keys) for keys, _ in self.runs)

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        keys, rows = np.asarray(keys, np.uint64), np.asarray(rows, np.int32)
        if not len(keys):
            return
        order = np.argsort(keys, kind="stable")
        run = keys[order], rows[order]
        while self.runs and len(self.runs[-1][0]) <= 2 * len(run[0]):
            run = _merge(self.runs.pop(), run)
        self.runs.append(run)

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in `keys`, row) of every stored pair whose key equals one of `keys`."""
        which, rows, _ = self.find_some(keys, None)
        return which, rows

    def find_some(self, keys: np.ndarray, limit: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """find, but of each key's pairs only the first `limit` (None: all; the runs are searched
        oldest first), and for each of `keys`, whether some were left out."""
        keys = np.asarray(keys, np.uint64)
        order = np.argsort(keys)  # in order, the binary searches reuse the previous one's bounds
        keys = keys[order]
        which, rows = [np.zeros(0, np.int64)], [np.zeros(0, np.int32)]
        left_out = np.zeros(len(keys), bool)
        room = np.full(len(keys), limit if limit is not None else 0, np.int64)  # by sorted key
        for run_keys, run_rows in self.runs:
            first = np.searchsorted(run_keys, keys)
            hit = np.flatnonzero(run_keys[np.minimum(first, len(run_keys) - 1)] == keys)
            first = first[hit]
            count = np.searchsorted(run_keys, keys[hit], "right") - first
            if limit is not None:
                left_out[order[hit[count > room[hit]]]] = True
                count = np.minimum(count, room[hit])
                room[hit] -= count
            owner = np.repeat(np.arange(len(hit)), count)  # a key's pairs lie at first, first + 1, ...
            step = np.arange(len(owner)) - np.repeat(np.cumsum(count) - count, count)
            which.append(order[hit[owner]])
            rows.append(run_rows[first[owner] + step])
        return np.concatenate(which), np.concatenate(rows), left_out


def _merge(older: tuple[np.ndarray, np.ndarray], newer: tuple[np.ndarray, np.ndarray]):
    """Two sorted runs as one: the newer pairs placed after the older ones of equal key."""
    (old_keys, old_rows), (new_keys, new_rows) = older, newer
    at = np.searchsorted(old_keys, new_keys, "right") + np.arange(len(new_keys))
    keys = np.empty(len(old_keys) + len(new_keys), np.uint64)
    rows = np.empty(len(keys), np.int32)
    old = np.ones(len(keys), bool)
    old[at] = False
    keys[at], rows[at] = new_keys, new_rows
    keys[old], rows[old] = old_keys, old_rows
    return keys, rows


def tuned_bands(threshold: float, num_perm: int, weights: tuple[float, float] = WEIGHTS) -> tuple[int, int]:
    """(bands, values per band) as datasketch's MinHashLSH tunes them (`lsh._optimal_param`): of every
    pair with bands * values <= num_perm, the first in that order with the least weighted sum of the
    false-positive probability integrated over similarities below `threshold` and the
    false-negative probability above it. datasketch integrates with scipy's quad; importing the two
    cost the preparing process about 40 MiB and a second. Each probability is a polynomial of
    degree bands * values in the similarity, which Gauss-Legendre with num_perm // 2 + 1 nodes
    integrates exactly: the sums agree with datasketch's to about 1e-14, and the pairs are its
    pairs (tested over a grid of thresholds, num_perm and weights). Only sums closer than that could
    be ordered otherwise: with weights 0 and 1 (whole runs of pairs then differ by less than quad's
    tolerance), or at a threshold within about 1e-12 of one where the choice changes."""
    nodes, node_weights = np.polynomial.legendre.leggauss(num_perm // 2 + 1)  # on [-1, 1]
    pairs = [(b, r) for b in range(1, num_perm + 1) for r in range(1, num_perm // b + 1)]
    bands, values = (np.asarray(column, np.float64)[:, None] for column in zip(*pairs, strict=True))
    below = threshold / 2 * (nodes + 1)  # the nodes moved to [0, threshold] ...
    above = threshold + (1 - threshold) / 2 * (nodes + 1)  # ... and to [threshold, 1]
    # a pair of similarity s shares a band with probability 1 - (1 - s**values) ** bands
    false_positive = threshold / 2 * ((1 - (1 - below**values) ** bands) @ node_weights)
    false_negative = (1 - threshold) / 2 * (((1 - above**values) ** bands) @ node_weights)
    error = weights[0] * false_positive + weights[1] * false_negative
    return pairs[int(np.argmin(error))]  # the first of equal ones, as datasketch's strict "<"


class NearIndex:
    """Kept documents by the bands of their MinHash signatures: the candidates for near-copies."""

    def __init__(self, threshold: float, num_perm: int):
        bands, values = tuned_bands(threshold, num_perm)
        self.bands = [slice(band * values, (band + 1) * values) for band in range(bands)]
        self.rows = RowIndex()

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """(documents, bands) uint64: each band's number (high 32 bits) and a hash of its values."""
        h = np.zeros((len(signatures), len(self.bands)), np.uint64)
        with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
            for band, columns in enumerate(self.bands):
                for value in signatures[:, columns].T.astype(np.uint64):
                    h[:, band] = h[:, band] * _P + value
            h ^= h >> np.uint64(33)  # murmur's finaliser: every value reaches the top 32 bits
            h *= np.uint64(0xFF51AFD7ED558CCD)
            h ^= h >> np.uint64(33)
        return (h >> np.uint64(32)) | (np.arange(len(self.bands), dtype=np.uint64) << np.uint64(32))

    def candidates(
        self, keys: np.ndarray, side: int, limit: int | None = None
    ) -> tuple[list[np.ndarray], np.ndarray]:
        """For each row of `keys` (band_keys), the sorted rows of `side` added before that share one
        of them (of each key, the first `limit`; None: all), and whether some were left out."""
        which, rows, left_out = self.rows.find_some(on_side(keys, side).ravel(), limit)
        pairs = distinct(which // len(self.bands) << 32 | rows)  # (document, row), each once
        cuts = np.searchsorted(pairs >> 32, np.arange(1, len(keys)))
        found = [part & 0xFFFFFFFF for part in np.split(pairs, cuts)] if len(keys) else []
        return found, left_out.reshape(len(keys), len(self.bands)).any(axis=1)

    def add(self, keys: np.ndarray, rows: np.ndarray, sides: np.ndarray) -> None:
        """Rows kept on `sides` (split codes), with their band_keys."""
        tagged = on_side(keys, np.asarray(sides, np.uint64)[:, None])
        self.rows.add(tagged.ravel(), np.repeat(rows, len(self.bands)))

    def shares_a_band(self, signature: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Whether each of `others` (rows of signatures) equals `signature` on a whole band."""
        width = self.bands[0].stop  # the bands lie side by side from value 0, all this wide
        banded = others[:, : width * len(self.bands)] == signature[: width * len(self.bands)]
        return banded.reshape(len(others), len(self.bands), width).all(axis=2).any(axis=1)


def distinct(values: np.ndarray) -> np.ndarray:
    """np.unique of integers, sorted then each kept once: numpy 2.4's np.unique hashes them first,
    50 times slower on a chunk's 700,000 (document, row) pairs (0.57 s against 0.01 s here) and
    about 2 ms on a thousand (bench/dedup_growth.py's `records`: a fifth of the deduplicator's time);
    `trickster data report` takes it for a split's 13-gram hashes (1.35 s against 0.04 s on 3,000,000)."""
    values = np.sort(values)
    return values[np.concatenate(([True], values[1:] != values[:-1]))] if len(values) else values


def on_side(keys: np.ndarray, side) -> np.ndarray:
    """Band keys of one side of the split (its code in the top bit, above the band's number): a
    side's candidates are looked up apart from the other's."""
    return np.asarray(keys, np.uint64) | (np.asarray(side, np.uint64) << np.uint64(63))
