"""What a path that names nothing readable is, in words: a symlink to a target that does not exist,
a symlink in a loop, or simply not there; `ls` shows a broken link as a file, so "not found" alone
sends the user looking for a file they can see."""

from __future__ import annotations

import errno
import os
from pathlib import Path


def missing(path: Path, fix: str, typed: str | None = None) -> str:
    """The line for `path`, which exists as a name but not as a file or folder (or not at all),
    named as the user `typed` it when given (Path drops the slash of `stories/`)."""
    name = typed or path
    if not path.is_symlink():
        return f"{name} not found; {fix}"
    if in_a_loop(path):
        return f"{name} is a symlink loop (following it leads back to itself); fix or remove the link"
    target = os.readlink(path)
    chained = (path.parent / target).is_symlink()  # a link to a link: where the chain breaks
    through = f" (which leads to {os.path.realpath(path)})" if chained else ""
    return f"{name} is a symlink to {target}{through}, which does not exist; fix the link or {fix}"


def in_a_loop(path: Path) -> bool:
    """Whether following `path` comes back to a link already followed (the system's ELOOP)."""
    try:
        os.stat(path)
    except OSError as err:
        return err.errno == errno.ELOOP
    return False
