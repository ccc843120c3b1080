"""Records, rows or files that hold no text (null, empty, without the text field): counted as a pass
reads them, none a document; and, when not one of a corpus's holds text, the line that says what
was found (those, and the documents of whitespace only dropped beside them) and what to pass
instead of a bare "empty"."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_NAMES = 12  # field names kept to show: enough to spot the one holding the text


@dataclass
class NoText:
    """What a pass met without text. `unit` is what a source counts ("record", "row", "file");
    `text_field` where it reads the text (--text-field; None for files and --template); `fix` what the
    user passes instead when none has text."""

    unit: str = "record"
    text_field: str | None = None
    fix: str = "pass files that contain text"
    count: int = 0
    blank: int = 0  # the one text file, when it holds whitespace only (several: deduplication drops them)
    first: str = ""  # where the first one was: a file, or FILE line N
    names: dict[str, None] = field(default_factory=dict)  # the fields those records have, in order

    def restart(self) -> None:
        """A new pass: nothing met yet."""
        self.count, self.blank, self.first = 0, 0, ""
        self.names.clear()

    def skipped(self, where: str = "", names: Iterable = ()) -> None:
        """One more without text, met at `where`, its record having the fields `names`."""
        self.count += 1
        self.first = self.first or where
        for name in names:
            if len(self.names) >= MAX_NAMES:
                break
            self.names.setdefault(str(name))

    def skipped_blank(self, where: str) -> None:
        """One more of whitespace only, met at `where`."""
        self.blank += 1
        self.first = self.first or where

    def nothing_read(self, corpus: str, dropped_blank: int = 0) -> str | None:
        """The line for a corpus of which nothing held text: what was met without text, and the
        documents of whitespace only (`dropped_blank` of them by deduplication); None when nothing
        was met either."""
        blank = self.blank + dropped_blank
        if not self.count and not blank:
            return None
        total = self.count + blank
        every = "its one" if total == 1 else f"all {total:,} of its"
        if self.unit == "file":
            return f"corpus '{corpus}' holds no text: {self._files(every, blank)}; {self.fix}"
        units = self.unit if total == 1 else f"{self.unit}s"
        if self.text_field is None:
            found = f"--template gives {every} {units} no text (the fields it names are "
            found += "empty)" if not blank else "empty or whitespace only)"
        else:
            where = f"column '{self.text_field}'" if self.unit == "row" else f'field "{self.text_field}"'
            have = "has" if total == 1 else "have"
            kinds = "null, empty or missing" if not blank else "null, empty, missing or whitespace only"
            found = f"{every} {units} {have} no text in {where} ({kinds})"
        fields = f"; they have: {', '.join(self.names)}" if self.names else ""
        return f"corpus '{corpus}' holds no text: {found}{fields}; {self.fix}"

    def _files(self, every: str, blank: int) -> str:
        """What the files held: empty ones (the first named) and ones of whitespace only (named when
        it is the one text file; deduplication drops those among several unnamed)."""
        if not blank:
            return (
                f"{self.first} is empty"
                if self.count == 1
                else f"{every} files are empty (the first: {self.first})"
            )
        if not self.count:
            return (
                f"{self.first} holds only whitespace" if self.first else f"{every} files hold only whitespace"
            )
        return (
            f"{every} files are empty or hold only whitespace ({self.count:,} empty, the first: "
            f"{self.first}; {blank:,} of whitespace only)"
        )


def none_held(source) -> str:
    """What a corpus of records or rows that met none at all holds, its files named ("holds no text:
    a.jsonl holds no records"); "is empty" where it has no files to name (a Hub dataset)."""
    files, unit = source.files, source.no_text.unit
    if not files or unit == "file":
        return "is empty"
    if len(files) == 1:
        return f"holds no text: {files[0]} holds no {unit}s"
    return f"holds no text: none of its {len(files):,} files holds a {unit} (the first: {files[0]})"
