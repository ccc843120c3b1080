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
        self.mapped: np.ndarray | None = None  # the first `written` rows (_mapped)

    def __len__(self) -> int:
        return self.written + len(self.pending)

    def blocks(self) -> Iterator[np.ndarray]:
        """The rows on disk, BLOCK_ROWS at a time."""
        with open(self.file, "rb") as f:
            for start in range(0, self.written, BLOCK_ROWS):
                yield np.fromfile(f, self.dtype, count=min(BLOCK_ROWS, self.written - start))

    def append(self, values: tuple) -> None:
        self.pending.append(values)

    def read(self, rows) -> np.ndarray:
        """The rows numbered `rows`, in their order: those on disk gathered from a map of the file in
        one numpy call (a seek and a read per row cost more than the comparison they feed), those
        appended since the last flush from `pending`."""
        rows = np.asarray(rows, np.int64)
        on_disk = rows < self.written
        if on_disk.all():  # most reads
            return self._mapped()[rows]
        out = np.zeros(len(rows), self.dtype)
        if on_disk.any():
            out[on_disk] = self._mapped()[rows[on_disk]]
        for i in np.flatnonzero(~on_disk).tolist():
            out[i] = self.pending[rows[i] - self.written]
        return out

    def _mapped(self) -> np.ndarray:
        """The rows on disk, mapped read-only (a plain array over np.memmap's map: its indexing
        costs less); mapped again after a flush, the pages a chunk's search touched let go with
        the old map."""
        if self.mapped is None:
            self.mapped = np.memmap(self.file, self.dtype, mode="r", shape=(self.written,)).view(np.ndarray)
        return self.mapped

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
            self.mapped = None
