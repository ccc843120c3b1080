"""The low 4 bits of each value of every kept document's MinHash signature, held in memory (64 bytes
a document), so that a candidate that is not a near-copy is ruled out without reading its row back
from dedup.bin.

Two values that are equal are equal on their low 4 bits, so the values two signatures agree on are
at most those their low bits agree on: a candidate whose low bits agree on fewer than the threshold's
share cannot be a near-copy, and only the others are read and compared whole (dedup.py's `_likely`).
The decisions are unchanged. A candidate that is not a near-copy agrees on about
`s + (1 - s) / 16` of its low bits, s its similarity: a story about 0.65 similar to the document
(bench/dedup_growth.py's `alike`) agrees on about 0.67 of them, well under 0.8, and is ruled out in
a few word operations where reading it took a 529-byte row.
"""

from __future__ import annotations

import numpy as np

PER_WORD = 16  # values to a 64-bit word, 4 bits each
_SHIFTS = np.arange(PER_WORD, dtype=np.uint64) * np.uint64(4)
_ONE_PER_VALUE = np.uint64(0x1111111111111111)  # the lowest bit of each 4-bit field
_LOW_FIELDS = np.uint64(0x0F0F0F0F0F0F0F0F)
_ONE_PER_BYTE = np.uint64(0x0101010101010101)
_FIRST_ROWS = 4096


def low_bits(signatures: np.ndarray) -> np.ndarray:
    """(documents, values / 16) uint64: the low 4 bits of each value of each signature, 16 a word."""
    low = (np.asarray(signatures) & np.uint32(0xF)).astype(np.uint64)
    low = low.reshape(len(low), -1, PER_WORD)  # (documents, words, 16)
    return np.bitwise_or.reduce(low << _SHIFTS, axis=2)


class Sketches:
    """low_bits of each kept document, by row, appended in the order the rows are kept."""

    def __init__(self, values: int):
        assert values % PER_WORD == 0 and values // PER_WORD <= 15, values  # agreeing's counting
        self.words = np.zeros((_FIRST_ROWS, values // PER_WORD), np.uint64)
        self.count = 0

    @property
    def nbytes(self) -> int:
        return self.words.nbytes

    def add(self, words: np.ndarray) -> None:
        """Append rows of low_bits."""
        end = self.count + len(words)
        if end > len(self.words):  # half as large again: a row at a time costs a copy now and then
            grown = np.zeros((max(end, len(self.words) * 3 // 2), self.words.shape[1]), np.uint64)
            grown[: self.count] = self.words[: self.count]
            self.words = grown
        self.words[self.count : end] = words
        self.count = end

    def agreeing(self, words: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """For each of `rows`, how many values agree with `words` (one document's low_bits) on their
        low 4 bits: at least as many as agree whole."""
        differ = self.words[rows] ^ words  # (rows, words); a 4-bit field is 0 where the values agree
        differ |= differ >> np.uint64(1)
        differ |= differ >> np.uint64(2)
        differ &= _ONE_PER_VALUE  # a field's lowest bit: 1 where the values differ
        # counted without numpy 2's bitwise_count: the words of a row added (each field then counts
        # up to words <= 15 differing values, no carry), the two fields of each byte added, then the
        # bytes summed into the top one by a multiplication
        fields = differ.sum(axis=1, dtype=np.uint64)
        pairs = (fields & _LOW_FIELDS) + ((fields >> np.uint64(4)) & _LOW_FIELDS)
        with np.errstate(over="ignore"):  # the bytes below the top one wrap, and are shifted out
            differing = (pairs * _ONE_PER_BYTE) >> np.uint64(56)
        return words.shape[-1] * PER_WORD - differing.astype(np.int64)
