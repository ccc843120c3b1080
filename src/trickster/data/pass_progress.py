"""What a preparation shows of a pass over its input (reading for a tokenizer, counting characters,
tokenizing): tqdm's bar where it shows (a terminal), else a plain line every LINE_EVERY_S seconds.

Off a terminal (a batch job, nohup, output sent to a log file) tqdm draws nothing, and a
preparation of hours said nothing until it ended. So there, as training prints its step lines
instead of a bar, a line says what is done, how much of the input was read (of its size, when
known), at what rate, and how long is left:

    tokenizing: 12,345 documents, 5,678,901 tokens, 1.2 GB of 20.0 GB read (6%), 12.3 MB/s, 26m 40s left

While a file among several is read in pieces, its tokens wait for its last piece (pending.py), and
the line counts them apart: `12,345 documents, 5,678,901 tokens, 2,345,678 tokens waiting, ...`.
"""

from __future__ import annotations

import time

from trickster.units import format_duration

LINE_EVERY_S = 60.0


class PassProgress:
    """One pass over `total` bytes of input (None: not known), from `initial` (a continued one).
    `shown` False shows nothing (--no-progress)."""

    def __init__(self, what: str, total: int | None, shown: bool, initial: int = 0):
        from tqdm import tqdm  # looked up at each pass: tests put a recording tqdm in its place

        self.bar = tqdm(
            total=total, initial=initial, unit="B", unit_scale=True, desc=what,
            disable=None if shown else True,  # None: only on a terminal
        )  # fmt: skip
        self.lines = shown and self.bar.disable
        self.what, self.total, self.read, self.initial = what, total, initial, initial
        self.started = self.said = time.monotonic()

    @property
    def shown(self) -> bool:
        """Whether anything is shown (a caller can skip measuring what nobody sees)."""
        return self.lines or not self.bar.disable

    def update(self, size: int, **counts: int) -> None:
        """`size` more bytes read; `counts` (documents, tokens) are totals so far, for the line."""
        self.read += size
        self.bar.update(size)
        now = time.monotonic()
        if self.lines and now - self.said >= LINE_EVERY_S:
            self.said = now
            print(self.line(now - self.started, counts), flush=True)

    def finish(self, **counts: int) -> None:
        """The pass read all its input: it ends at its total, which counts the files' bytes, where
        what it read counts the text's (fewer, with "\r\n" read as "\n", a byte-order mark dropped,
        a file of blanks no document)."""
        if self.total is not None and self.read < self.total:
            self.update(self.total - self.read, **counts)

    def line(self, elapsed: float, counts: dict[str, int]) -> str:
        parts = [f"{value:,} {name}" for name, value in counts.items()]
        read = _size(self.read)
        if self.total:
            read += f" of {_size(self.total)}"
        parts.append(read + " read" + (f" ({100 * self.read / self.total:.0f}%)" if self.total else ""))
        rate = (self.read - self.initial) / elapsed if elapsed > 0 else 0.0
        parts.append(f"{_size(rate)}/s")
        if self.total and rate > 0:
            parts.append(f"{format_duration(max(self.total - self.read, 0) / rate)} left")
        return f"{self.what}: " + ", ".join(parts)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self) -> PassProgress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _size(size: float) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size / 1e3:,.1f} kB"
