"""dedup.bin: a fixed-size row per document the deduplicator kept (dedup.py's row_dtype), appended
in order. It is how an interrupted preparation continues, and where a found copy's split, number and
signature are read back: a few rows per copy, rather than every signature held in memory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from trickster.data.shards import open_to_append

BLOCK_ROWS = 65_536  # rows read back at once when a preparation continues (34 MB with signatures)


class KeptRows:
    def __init__(self, file: Path, dtype: np.dtype, count: int):
        """The first `count` rows of `file` (what progress.json counts; a longer file is cut there)."""
        self.file, self.dtype = file, dtype
        open_to_append(file, count * dtype.itemsize, file.parent).close()  # appended to by flush
        self.written = count
        self.pending: list[tuple] = []  # appended since the last flush

    def __len__(self) -> int:
        return self.written + len(self.pending)

    def blocks(self) -> Iterator[np.ndarray]:
        """The rows on disk, BLOCK_ROWS at a time."""
        with open(self.file, "rb") as f:
            for start in range(0, self.written, BLOCK_ROWS):
                yield np.fromfile(f, self.dtype, count=min(BLOCK_ROWS, self.written - start))

    def append(self, values: tuple) -> None:
        self.pending.append(values)

    def read(self, rows: list[int]) -> np.ndarray:
        out = np.zeros(len(rows), self.dtype)
        size = self.dtype.itemsize
        with open(self.file, "rb") as f:
            for i, row in enumerate(rows):
                if row < self.written:
                    f.seek(row * size)
                    out[i] = np.frombuffer(f.read(size), self.dtype)[0]
                else:
                    out[i] = self.pending[row - self.written]
        return out

    def flush(self) -> None:
        """Append the pending rows to the file (before progress.json counts them)."""
        if self.pending:
            rows = np.zeros(len(self.pending), self.dtype)
            for i, values in enumerate(self.pending):
                rows[i] = values
            with open(self.file, "ab") as f:
                rows.tofile(f)
            self.written += len(self.pending)
            self.pending.clear()
