"""Why a folder given as prepared data is not: the line for `train --data`, `eval`, `data report`
and the other readers of a prepared folder, when it has no meta.json.

A user meets these right after preparing: a misspelt folder (`data/jsonl-bp`), the corpus folder
itself (`--data stories`), or a preparation stopped with Ctrl-C whose DIR.partial is all there is.
Each said `no prepared data in DIR (meta.json missing)`, which names none of them.
"""

from __future__ import annotations

import difflib
import itertools
import os
from pathlib import Path

from trickster.data.paths import source_of
from trickster.errors import UserError

GIVE = "give a folder written by `trickster data prepare`"
EXAMPLE = "(for example `trickster data prepare shakespeare --out DIR`)"
CORPUS_SUFFIXES = {".txt", ".md", ".jsonl", ".json", ".ndjson", ".parquet", ".gz", ".bz2", ".xz", ".csv"}
RUN_FILES = ("checkpoints", "metrics.jsonl", "model.safetensors", "COMPLETE")
FINISH = "run the same `trickster data prepare` command again to finish it"


def not_prepared(path: Path) -> UserError:
    """The one line for `path`, a file, a folder without meta.json, or nothing at all."""
    partial = Path(f"{path}.partial")  # not with_name: `--data .` has no name
    if path.is_file():  # the corpus itself (`data report input.txt`, `train --data input.txt`)
        first = _prepare_first(source_of(path), path)
        return UserError(f"{path} is a file, not a prepared data folder; {first}")
    if path.name.endswith(".partial") and path.is_dir():
        finished = path.with_name(path.name.removesuffix(".partial"))
        return UserError(
            f"no prepared data in {path}: it is an unfinished preparation; {FINISH}, then give {finished}"
        )
    if not path.exists() and partial.is_dir():
        return UserError(f"no prepared data in {path}: {partial} holds its unfinished preparation; {FINISH}")
    if not path.exists():
        near = _prepared_near(path)
        told = f" (did you mean {near}?)" if near else ""
        return UserError(f"no prepared data in {path}: it does not exist{told}; {GIVE} {EXAMPLE}")
    if any((path / name).exists() for name in RUN_FILES):  # its metrics.jsonl is no corpus
        return UserError(f"no prepared data in {path}: it is a run or checkpoint folder; {GIVE} {EXAMPLE}")
    if (path.absolute().parent / "meta.json").is_file():  # a split's folder (`--data data/sh/train`)
        above = Path(os.path.relpath(path.absolute().parent)) if not path.is_absolute() else path.parent
        inside = f"it is inside the prepared folder {above}"
        return UserError(f"no prepared data in {path}: {inside}; give {above}")
    if source := _corpus_source(path):
        first = _prepare_first(source, path)
        return UserError(f"no prepared data in {path}: it holds {source} files, not prepared data; {first}")
    return UserError(f"no prepared data in {path} (meta.json missing); {GIVE} {EXAMPLE}")


def _prepare_first(source: str, path: Path) -> str:
    """The fix for a corpus given where its prepared folder belongs."""
    return f"prepare it first (`trickster data prepare {source} {path}`) and give the folder that writes"


def _prepared_near(path: Path) -> Path | None:
    """The prepared folder beside `path` whose name is closest to its name, if one is close."""
    parent = path.parent
    if not parent.is_dir():
        return None
    try:
        names = [p.name for p in itertools.islice(parent.iterdir(), 10_000) if (p / "meta.json").is_file()]
    except OSError:
        return None
    close = difflib.get_close_matches(path.name, names, n=1)
    return parent / close[0] if close else None


def _corpus_source(folder: Path) -> str | None:
    """The `data prepare` source for a folder whose visible files (its first thousand entries) are
    all corpus files (parquet, jsonl or text, by the first), or None: a project folder that holds
    its corpus among other things is not taken for one."""
    try:
        entries = list(itertools.islice(folder.iterdir(), 1000))
        files = sorted(p for p in entries if p.is_file() and not p.name.startswith("."))
    except OSError:
        return None
    if not files or any(p.suffix not in CORPUS_SUFFIXES for p in files):
        return None
    return source_of(files[0])
