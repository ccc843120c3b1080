"""The index behind the search for copies in dedup.py, in numpy arrays instead of Python objects.

- RowTable: rows by key, any number of rows per key. Open addressing with linear probing in two
  arrays (a key and a row per slot), doubled when more than MAX_LOAD full. datasketch's MinHashLSH
  keeps a Python set per band key and a table of every document's band keys: about 6 KB per
  document; a slot here is 8 bytes (12 with 64-bit keys), at most 2/MAX_LOAD slots per row.
- NearIndex: MinHashLSH's bands (the same number, tuned by datasketch for the threshold), a
  RowTable per band keyed by a 32-bit hash of the band's values. Two documents that agree on a
  whole band always share its hash, so no candidate MinHashLSH would find is missed; a hash shared
  by chance is weeded out by the caller, which compares the signatures themselves (shares_a_band).

Every operation takes a batch of keys (a chunk of documents), so that the probing runs in numpy:
a round per step along the slots, each round over the keys still looking.
"""

from __future__ import annotations

import numpy as np

MAX_LOAD = 0.7  # linear probing stays short up to here; above, lookups walk long runs of full slots
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of key * 2**64/phi
_P = np.uint64(0x100000001B3)  # FNV prime: combines a band's values into one number
WEIGHTS = (0.05, 0.95)  # datasketch's band tuning: (false positives, false negatives); see dedup.py


class RowTable:
    """Rows (int32, at least 0) by key: add(keys, rows) stores every pair; find(keys) gives every
    stored row of each key. Keys are unsigned integers of `key_dtype`."""

    def __init__(self, key_dtype: type = np.uint64, capacity: int = 1024):
        self.keys = np.zeros(capacity, key_dtype)
        self.rows = np.full(capacity, -1, np.int32)  # -1: an empty slot
        self.count = 0

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.rows.nbytes

    def _home(self, keys: np.ndarray) -> np.ndarray:
        bits = np.uint64(64 - (len(self.rows).bit_length() - 1))
        with np.errstate(over="ignore"):  # multiplication modulo 2**64 is the point
            return ((keys.astype(np.uint64) * _GOLDEN) >> bits).astype(np.int64)

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position in `keys`, row) of every stored pair whose key equals one of `keys`."""
        keys = np.asarray(keys, self.keys.dtype)
        which, slot, last = np.arange(len(keys)), self._home(keys), len(self.rows) - 1
        found_which, found_rows = [], []
        while len(which):  # a key is absent past the first empty slot from its home
            rows = self.rows[slot]
            full = rows >= 0
            match = full & (self.keys[slot] == keys)
            found_which.append(which[match])
            found_rows.append(rows[match])
            which, keys, slot = which[full], keys[full], (slot[full] + 1) & last
        if not found_which:
            return np.zeros(0, np.int64), np.zeros(0, np.int32)
        return np.concatenate(found_which), np.concatenate(found_rows)

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        keys, rows = np.asarray(keys, self.keys.dtype), np.asarray(rows, np.int32)
        if self.count + len(keys) > MAX_LOAD * len(self.rows):
            self._grow(self.count + len(keys))
        self._place(keys, rows)
        self.count += len(keys)

    def _grow(self, count: int) -> None:
        capacity = len(self.rows)
        while count > MAX_LOAD * capacity:
            capacity *= 2
        full = self.rows >= 0
        keys, rows = self.keys[full], self.rows[full]
        self.keys, self.rows = np.zeros(capacity, self.keys.dtype), np.full(capacity, -1, np.int32)
        self._place(keys, rows)

    def _place(self, keys: np.ndarray, rows: np.ndarray) -> None:
        slot, last = self._home(keys), len(self.rows) - 1
        while len(keys):
            free = np.flatnonzero(self.rows[slot] < 0)
            # of the keys whose probe reached the same free slot, the first takes it; the others
            # (and those at full slots) step on
            taken, first = np.unique(slot[free], return_index=True)
            placed = free[first]
            self.keys[taken], self.rows[taken] = keys[placed], rows[placed]
            rest = np.ones(len(keys), bool)
            rest[placed] = False
            keys, rows, slot = keys[rest], rows[rest], (slot[rest] + 1) & last


class NearIndex:
    """Kept documents by the bands of their MinHash signatures: the candidates for near-copies."""

    def __init__(self, threshold: float, num_perm: int):
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold, num_perm, weights=WEIGHTS)  # only for its tuned bands
        self.bands = [slice(start, end) for start, end in lsh.hashranges]
        self.tables = [RowTable(np.uint32) for _ in self.bands]

    @property
    def nbytes(self) -> int:
        return sum(table.nbytes for table in self.tables)

    def band_hashes(self, signatures: np.ndarray) -> np.ndarray:
        """(documents, bands) uint32: a hash of each band's values."""
        h = np.zeros((len(signatures), len(self.bands)), np.uint64)
        with np.errstate(over="ignore"):
            for band, columns in enumerate(self.bands):
                for value in signatures[:, columns].T.astype(np.uint64):
                    h[:, band] = h[:, band] * _P + value
            h ^= h >> np.uint64(33)  # murmur's finaliser: every value reaches the top 32 bits
            h *= np.uint64(0xFF51AFD7ED558CCD)
            h ^= h >> np.uint64(33)
        return (h >> np.uint64(32)).astype(np.uint32)

    def candidates(self, hashes: np.ndarray) -> list[np.ndarray]:
        """For each row of `hashes`, the sorted rows added before that share a band's hash with it."""
        if not len(hashes):
            return []
        which, rows = [], []
        for band, table in enumerate(self.tables):
            w, r = table.find(hashes[:, band])
            which.append(w)
            rows.append(r)
        pairs = np.unique(np.concatenate(which).astype(np.int64) << 32 | np.concatenate(rows))
        cuts = np.searchsorted(pairs >> 32, np.arange(1, len(hashes)))
        return [(part & 0xFFFFFFFF).astype(np.int64) for part in np.split(pairs, cuts)]

    def add(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        for band, table in enumerate(self.tables):
            table.add(hashes[:, band], rows)

    def shares_a_band(self, signature: np.ndarray, others: np.ndarray) -> np.ndarray:
        """Whether each of `others` (rows of signatures) equals `signature` on a whole band."""
        equal = others == signature
        return np.any([equal[:, columns].all(axis=1) for columns in self.bands], axis=0)
