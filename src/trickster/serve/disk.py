"""What the server reads of a run's checkpoints on disk without loading them: which there are, which
version of each (a checkpoint replaced in place is another), and whether the list may have changed;
and the run's own config and tokenizer, which shape `untrained` before the run's first save."""

from __future__ import annotations

import os
from pathlib import Path

from trickster import run_checkpoints
from trickster.config import Config
from trickster.config_saved import read_saved
from trickster.data.tokenizers import Tokenizer, load_tokenizer
from trickster.train import checkpoint_path
from trickster.train.settled import identity


def version(path: Path) -> tuple[int, ...] | None:
    """The checkpoint's identity (its first four) and what its info.json says (a rewrite renames
    a new file over it). None when any is missing."""
    checkpoint = identity(path)
    try:
        info = (path / "info.json").stat()
    except OSError:
        return None
    return None if checkpoint is None else (*checkpoint, info.st_ino, info.st_mtime_ns, info.st_size)


def checkpoints(target: Path) -> dict[str, Path]:
    """Complete checkpoints by name: best and final first, then the numbered ones, oldest first."""
    if one_checkpoint(target):
        # `.` is named as its folder
        return {Path(os.path.abspath(target)).name: checkpoint_path.resolve(target)}
    found = listing(target / "checkpoints")
    if not found and not started_run(target):
        checkpoint_path.resolve(target)  # raises the error that says what is missing
    return found


def one_checkpoint(target: Path) -> bool:
    """Whether `target` is a checkpoint folder (complete, or with weights), served alone, rather than
    a run whose checkpoints/ is listed."""
    return run_checkpoints.is_complete(target) or (target / run_checkpoints.WEIGHTS).exists()


def started_run(target: Path) -> bool:
    """Whether `target` is a run folder, checkpoints or not: training writes its tokenizer.json and
    config.yaml before its first save (a checkpoint folder holds them too, beside its weights)."""
    files = [target / name for name in ("tokenizer.json", "config.yaml")]
    return all(f.is_file() for f in files) and not (target / run_checkpoints.COMPLETE).exists()


def run_files(run: Path) -> tuple[Config, Tokenizer]:
    """The config.yaml and tokenizer.json training writes into a run folder before its first save.
    A damaged one is to be repaired or put back (the config is text a user may edit), or the run
    served once a checkpoint, with copies of its own, is saved: there is no other checkpoint to use."""
    later = "or serve the run once it has saved a checkpoint"
    cfg = read_saved(run / "config.yaml", f"repair it or put back the one training wrote, {later}")
    fix = f"copy there the one in the folder of its data (data_config.path), {later}"
    return cfg, load_tokenizer(run / "tokenizer.json", fix=fix)


def listing(folder: Path) -> dict[str, Path]:
    """The complete checkpoints in a run's checkpoints/ folder, in the order of `checkpoints`."""
    named = [folder / n for n in ("best", "final") if run_checkpoints.is_complete(folder / n)]
    return {p.name: p for p in [*named, *run_checkpoints.numbered(folder.parent)]}


def stamp(folder: Path | None) -> tuple[int, int] | None:
    """What tells a folder's listing changed: its inode and modification time (a checkpoint renamed
    in or out changes it). None when there is no folder."""
    if folder is None:
        return None
    try:
        found = folder.stat()
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns


def contents(path: Path) -> tuple[tuple, ...] | None:
    """What tells a checkpoint folder's files changed without reading them: the folder's and each
    file's name, inode, size and modification time (an edit in place, a file renamed over another,
    one added or removed). None when the folder cannot be listed."""
    try:
        folder = path.stat()
        with os.scandir(path) as entries:
            files = [(e.name, e.stat()) for e in entries]
    except OSError:
        return None
    every = [(".", folder), *sorted(files, key=lambda named: named[0])]
    return tuple((name, s.st_ino, s.st_size, s.st_mtime_ns) for name, s in every)
