"""Checks of a path a user gave to write to (--out), made before any work: a path that runs through
a file (`notes.txt/model.gguf`) cannot be made, and the write would only say "File exists" or "Not a
directory" after the model was loaded or the corpus read."""

from __future__ import annotations

import os
from pathlib import Path

from trickster.errors import UserError


def names_a_folder(out: str | Path | None) -> bool:
    """Whether an --out was written as a folder (`--out pages/`), whether it exists or not."""
    return str(out or "").endswith(("/", os.sep))


def refuse_path_through_a_file(path: Path, flag: str = "--out") -> None:
    """One line naming the file that stands where a folder of `path` should be, if one does."""
    for above in path.parents:
        if above.is_dir():  # the nearest folder that exists: everything below it can be made
            return
        if above.exists() or above.is_symlink():
            what = "a file" if above.exists() else "a link to nothing"
            raise UserError(
                f"{above} is {what}, so {path} cannot be made under it; choose another {flag} "
                "(nothing was changed)"
            )
