"""Which files the paths of `data prepare` name: files, folders and glob patterns, each file once,
without hidden files or data an earlier `data prepare` wrote (sources.py reads what they hold)."""

from __future__ import annotations

import glob
import os
from pathlib import Path

from trickster.data.links import missing
from trickster.errors import UserError

# what `data prepare` writes into its folder: never read back as a corpus, nor replaced unless so
PREPARED_FILES = {"meta.json", "tokenizer.json", "index.json", "train", "val", "report.html"}
PREPARED_FILES |= {"train.bin", "val.bin", "train.mask.bin", "val.mask.bin"}  # flat folders (format 1)


def expand_paths(
    patterns: list[str], suffixes: tuple[str, ...] = ("",), kind: str = "text files"
) -> list[Path]:
    """The files that `patterns` name, each once however it is reached (a symlink loop under a
    '**' glob, a file named twice); a path that exists is taken as it is, brackets and all. From a
    folder, only the files whose names end in one of `suffixes`. `kind` names them to the user: a
    missing JSON Lines file said "pass existing text files"."""
    files: list[Path] = []
    for pattern in patterns:
        if not pattern.strip():  # Path("") is the current folder: all of it would be read
            raise UserError(f"a path is empty (an unset shell variable?); pass {kind} or folders")
        magic = glob.has_magic(pattern) and not os.path.lexists(pattern)
        matches = sorted(glob.glob(pattern, recursive=True)) if magic else [pattern]
        if not matches:
            raise UserError(f"no files match '{pattern}'; check the path or quote the glob pattern")
        for match in map(Path, matches):
            if match.is_dir():
                files.extend(p for p in _files_in(match) if p.name.lower().endswith(suffixes))
            elif match.is_file():
                files.append(match)
            elif match.exists():  # a pipe, socket or device: its text cannot be read twice
                raise UserError(f"{match} is not a regular file (a pipe or device?); pass {kind} or folders")
            else:
                typed = None if magic else pattern
                raise UserError(missing(match, f"pass existing {kind} or folders", typed))
    if not files:
        raise UserError(
            f"no files found in {', '.join(patterns)}; pass folders that contain {kind} (hidden "
            "files, such as .keep, are skipped)"
        )
    seen: set[tuple[int, int]] = set()
    return [p for p in files if not (_inode(p) in seen or seen.add(_inode(p)))]


def _files_in(folder: Path) -> list[Path]:
    """Every file under `folder` but hidden ones (.git, .DS_Store, .env), which ripgrep and Hugging
    Face datasets skip too: a repository's objects are not its text. Nor data prepared before (by
    default in data/ under the folder, or a DIR.partial): its shards and meta.json are no corpus.

    A symlink to a folder is followed, as one to a file is and a '**' glob follows both: a corpus
    that links in a shared collection lost it whole, without a word. Each folder is read once, so
    a link back up the tree ends."""
    found, walked = [], set()
    for root, folders, names in os.walk(folder, onerror=_unreadable, followlinks=True):
        here = _inode(Path(root))
        if here in walked:  # reached again through a link: its files are found already
            folders[:] = []
            continue
        walked.add(here)
        folders[:] = [f for f in folders if not f.startswith(".")]
        if _prepared(root, folders, names):
            folders[:] = []
            continue
        found.extend(Path(root, name) for name in names if not name.startswith("."))
    return sorted(p for p in found if p.is_file())


def _prepared(root: str, folders: list[str], names: list[str]) -> bool:
    """Whether `root` is a folder `data prepare` wrote: its DIR.partial (by its name and progress
    record or meta.json), or a DIR holding nothing but a preparation's files. A corpus's own
    meta.json or index.json beside its texts is no sign of one."""
    visible = {name for name in names if not name.startswith(".")}
    if root.endswith(".partial") and visible & {"progress.json", "meta.json"}:
        return True
    return {"meta.json", "tokenizer.json"} <= visible <= PREPARED_FILES and set(folders) <= {"train", "val"}


def _unreadable(err: OSError) -> None:
    """os.walk leaves out a folder it cannot list: its files would be missing from the corpus."""
    raise UserError(f"{err.filename} cannot be read ({err.strerror}); check its permissions") from None


def _inode(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_dev, info.st_ino


def source_of(path: Path) -> str:
    """The `data prepare` source that reads the file `path`, by its name: parquet, jsonl or text."""
    return "parquet" if path.suffix == ".parquet" else "jsonl" if ".json" in path.name else "text"
