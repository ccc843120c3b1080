"""Folders (and pages) that appear whole or not at all: build under a temporary name, then rename
into place."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from trickster.errors import UserError


def staging_dir(target: Path) -> Path:
    """A fresh empty folder beside `target` (same file system, so the final rename is atomic)."""
    staging = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    return staging


def replace_dir(new: Path, target: Path) -> None:
    """Move `new` to `target`; an old `target` is deleted only after the new one is in place."""
    _fsync_tree(new)
    if not target.exists():
        new.rename(target)
    else:
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    _fsync_dir(target.parent)


def replace_file(path: Path, text: str) -> None:
    """Replace the file at `path` with `text` in one rename: a reader, or a kill at any moment,
    sees the old file whole or the new one. Written beside the file `path` links to, if it is a
    link, so the link and the folder it points into stay as they are."""
    target = path.resolve()
    staging = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        with open(staging, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(staging, target)
    except BaseException:
        with contextlib.suppress(OSError):
            staging.unlink()
        raise
    _fsync_dir(target.parent)


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def new_folder(target: Path, flag: str = "--out"):
    """Yield an empty staging folder; when the block succeeds it becomes `target` in one rename.

    On any failure (Ctrl-C included) the staging folder is removed and `target` is untouched; a
    failed write (disk full, no permission) becomes one line naming `target` and `flag`.
    """
    staging = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = staging_dir(target)
        yield staging
        replace_dir(staging, target)
    except BaseException as err:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError):
            raise UserError(
                f"could not write {target} ({err.strerror or err}); choose another {flag}"
            ) from None
        raise


def write_page(path: Path, page: str, fix: str) -> None:
    """Write an HTML page in one rename. An existing file is replaced only if it is a page too (a
    report written before): never a run's metrics, a config or a corpus named by mistake.
    `fix`: what to do instead, e.g. "choose another --out"."""
    if path.is_file() and path.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"{path} already exists and is not an .html page; {fix} (nothing was changed)")
    try:
        replace_file(path, page)
    except OSError as err:
        raise UserError(f"could not write {path} ({err.strerror or err}); {fix}") from None
