"""Records, rows or files that hold no text (null, empty, without the text field): counted as a pass
reads them, none a document; and, when not one of a corpus's holds text, the line that says what
was found and what to pass instead of a bare "empty"."""

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
    first: str = ""  # where the first one was: a file, or FILE line N
    names: dict[str, None] = field(default_factory=dict)  # the fields those records have, in order

    def restart(self) -> None:
        """A new pass: nothing met yet."""
        self.count, self.first = 0, ""
        self.names.clear()

    def skipped(self, where: str = "", names: Iterable = ()) -> None:
        """One more without text, met at `where`, its record having the fields `names`."""
        self.count += 1
        self.first = self.first or where
        for name in names:
            if len(self.names) >= MAX_NAMES:
                break
            self.names.setdefault(str(name))

    def nothing_read(self, corpus: str) -> str | None:
        """The line for a corpus of which nothing held text; None when nothing was met either."""
        if not self.count:
            return None
        every = "its one" if self.count == 1 else f"all {self.count:,} of its"
        if self.unit == "file":
            what = f"{self.first} is empty" if self.count == 1 else f"{every} files are empty"
            first = "" if self.count == 1 else f" (the first: {self.first})"
            return f"corpus '{corpus}' holds no text: {what}{first}; {self.fix}"
        units = self.unit if self.count == 1 else f"{self.unit}s"
        if self.text_field is None:
            found = f"--template gives {every} {units} no text (the fields it names are empty)"
        else:
            where = f"column '{self.text_field}'" if self.unit == "row" else f'field "{self.text_field}"'
            have = "has" if self.count == 1 else "have"
            found = f"{every} {units} {have} no text in {where} (null, empty or missing)"
        fields = f"; they have: {', '.join(self.names)}" if self.names else ""
        return f"corpus '{corpus}' holds no text: {found}{fields}; {self.fix}"
