"""The checkpoints a server found damaged (a config.yaml edited wrong, weights cut short), each
remembered by its files as they were when read (disk.contents): one is read again only once they
change (a repair, a new save), not at every request or rescan, and a served checkpoint replaced by
a damaged one, or a damaged checkpoint a rescan finds, gets one warning line on stderr for each
change of its files, not one a request or rescan."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from trickster.serve import disk


class Damaged:
    def __init__(self) -> None:
        self.found: dict[Path, tuple[tuple, str]] = {}  # the files as read, and what was wrong
        self.warned: dict[Path, tuple | None] = {}  # the files as they were when the last line was said

    def unchanged(self, path: Path) -> str | None:
        """What was wrong with `path` if it was found damaged and its files are as they were then."""
        files, problem = self.found.get(path, (None, ""))
        return problem if files is not None and files == disk.contents(path) else None

    def remember(self, path: Path, before: tuple | None, problem: str, settle: float) -> None:
        """`path` found damaged, its files as they were `before` the read; not remembered where they
        changed within `settle` seconds of it (an edit in the same tick of a coarse clock would leave
        them looking as read), nor where the folder could not be listed."""
        if before is not None and time.time_ns() - max(mtime for *_, mtime in before) >= settle * 1e9:
            self.found[path] = (before, problem)

    def forget(self, path: Path) -> None:
        """`path` read whole: repaired, or replaced by a whole checkpoint."""
        self.found.pop(path, None)
        self.warned.pop(path, None)

    def keep_only(self, paths: set[Path]) -> None:
        """Forget the folders that left the disk (a folder made again there is another)."""
        self.found = {path: seen for path, seen in self.found.items() if path in paths}

    def said(self, path: Path, files: tuple | None) -> None:
        """A line about `path`, its files as they were `files` when read, was said elsewhere (serve's
        lines for the checkpoints left out at its start): warn() says nothing more of them."""
        self.warned[path] = files

    def warn(self, path: Path, before: tuple | None, line: str) -> None:
        """Say `line` on stderr, once for the files `before` the read that failed; not where they
        changed as it read them (a replace under way: read again)."""
        if (path in self.warned and self.warned[path] == before) or disk.contents(path) != before:
            return
        self.warned[path] = before
        print(f"warning: {line}", file=sys.stderr, flush=True)
