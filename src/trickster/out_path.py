"""Checks of a path a user gave to write to (--out), made before any work: a path that runs through
a file (`notes.txt/model.gguf`) cannot be made, and the write would only say "File exists" or "Not a
directory" after the model was loaded or the corpus read."""

from __future__ import annotations

import os
from pathlib import Path

from trickster.errors import UserError
from trickster.run_checkpoints import is_complete


def names_a_folder(out: str | Path | None) -> bool:
    """Whether an --out was written as a folder (`--out pages/`), whether it exists or not."""
    return str(out or "").endswith(("/", os.sep))


def refuse_path_through_a_file(path: Path, flag: str = "--out") -> None:
    """One line naming the file that stands where a folder of `path` should be, if one does."""
    refuse_inside_a_checkpoint(path, flag)
    for above in path.parents:
        if above.is_dir():  # the nearest folder that exists: everything below it can be made
            return
        if above.exists() or above.is_symlink():
            what = "a file" if above.exists() else "a link to nothing"
            raise UserError(
                f"{above} is {what}, so {path} cannot be made under it; choose another {flag} "
                "(nothing was changed)"
            )


def refuse_inside_a_checkpoint(path: Path, flag: str = "--out") -> None:
    """A checkpoint folder is training's own: a new `best`, `keep_last` or a rollback replaces or
    deletes it whole, and what a user wrote inside (`--out runs/x/checkpoints/best/hf`) went with it."""
    for above in path.parents:
        if above.is_dir() and is_complete(above):
            raise UserError(
                f"{flag} {path} lies inside the checkpoint folder {above}, which training replaces or "
                f"deletes whole (a new best, keep_last, a rollback); choose another {flag} outside it "
                "(nothing was changed)"
            )
