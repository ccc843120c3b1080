"""A checkpoint's SHA-256 sums: recorded in its info.json when it is saved, checked before its
files are used.

A flipped bit inside model.safetensors, lora.safetensors, trainer.pt or an optimizer shard
(optimizer/*.distcp) still parses: without the sums a resume would continue from wrong weights or
moments, and generate, serve and export would compute with them. The sums are taken from the
files of the finished folder just before COMPLETE is written (the files are still in the page
cache), by the one process that writes it (rank 0 under FSDP2, once every shard is in), in
threads, one file beside another, while the save flushes them to disk. load_checkpoint and a
resume (train/setup.resume_verified) sum the files they read while they load them (`verified`):
each file is summed once, beside its load rather than before it, and nothing loaded is used before
the sums match.

Every file is summed but these three:
- info.json holds the sums, and is rewritten after the checkpoint's evaluation (update_info);
- COMPLETE is written after them;
- config.yaml is text a user may edit (a training setting: docs/training.md), and every reader
  checks it in full against the shapes and the model_config that the weights' header records.

A checkpoint written before the sums (no `sha256` in its info.json) loads as it did.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath

from trickster.data.shards import file_sha256
from trickster.errors import UserError

SUMS = "sha256"  # info.json's key: {path inside the checkpoint, with "/": hex digest}
UNSUMMED = ("info.json", "COMPLETE", "config.yaml")


def record(
    folder: Path, linked_from: Path | None = None, meanwhile: Callable[[], object] | None = None
) -> dict[str, str]:
    """The sums of a checkpoint folder's files (all but UNSUMMED), for its info.json, taken in
    threads at once (_summing). A file hard-linked from the checkpoint `linked_from` (a `best`
    saved at the step of the checkpoint just written: its weights and optimizer shards) is that
    very file: it takes the sum recorded there, without reading gigabytes again. `meanwhile` (a
    save flushes the files to disk) runs in this thread while the sums are taken."""
    known = recorded(linked_from) if linked_from is not None else {}
    names, to_read = [], {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name in UNSUMMED:
            continue
        names.append(name)
        source = linked_from / name if name in known else None
        if source is None or not source.is_file() or not os.path.samefile(path, source):
            to_read[name] = path
    with _summing(list(to_read.values())) as sums:
        if meanwhile is not None:
            meanwhile()
        read = {name: digest.result() for name, digest in zip(to_read, sums, strict=True)}
    return {name: read[name] if name in read else known[name] for name in names}


def recorded(checkpoint: Path, info: dict | None = None) -> dict[str, str]:
    """The sums saved with `checkpoint` (read from its info.json unless `info` is given); none
    for one saved before them, or whose info.json cannot be read (its readers say so)."""
    if info is None:
        try:
            info = json.loads((checkpoint / "info.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return {}
    sums = info.get(SUMS) if isinstance(info, dict) else None
    return sums if isinstance(sums, dict) else {}


def first_changed(checkpoint: Path, names: Iterable[str], info: dict | None = None) -> str | None:
    """The first of the files `names` of `checkpoint` (a name ending in "/": every file in that
    folder) whose bytes no longer have the sum recorded for them; None if all do. A file with no
    sum recorded, missing, or unreadable is not judged here: the loader that reads it says what
    is wrong with it in its own words."""
    judged = _judged(checkpoint, names, info)
    with _summing([checkpoint / name for name in judged]) as sums:
        return _first_different(judged, sums)


def _judged(checkpoint: Path, names: Iterable[str], info: dict | None) -> dict[str, str]:
    """The recorded sums of the files `names` that are there to judge: {name: hex digest}."""
    wanted, judged = tuple(names), {}
    for name, digest in recorded(checkpoint, info).items():
        inside = PurePosixPath(name)
        if inside.is_absolute() or ".." in inside.parts:  # an edited info.json: only its own files
            continue
        if any(name == w or (w.endswith("/") and name.startswith(w)) for w in wanted):
            if (checkpoint / inside).is_file():
                judged[name] = digest
    return judged


def _first_different(judged: dict[str, str], sums: list[Future[str]]) -> str | None:
    for (name, digest), actual in zip(judged.items(), sums, strict=True):
        try:
            if actual.result() != digest:
                return name
        except OSError:  # unreadable: its loader says so
            continue
    return None


@contextlib.contextmanager
def _summing(paths: list[Path]) -> Iterator[list[Future[str]]]:
    """The SHA-256 of each file, taken in threads (one per file, up to one per CPU) while the
    block runs: hashlib lets go of the GIL as it hashes a buffer, so on N cores N files take the
    time of the largest rather than of all, and the block's own work (a flush to disk, a load of
    the same files) goes on meanwhile. A sum not started when the block ends is not taken."""
    pool = ThreadPoolExecutor(max_workers=max(1, min(len(paths), os.cpu_count() or 1)))
    try:
        yield [pool.submit(file_sha256, path) for path in paths]
    finally:
        pool.shutdown(cancel_futures=True)


def changed_line(file: Path, fix: str) -> str:
    return (
        f"{file} no longer matches the checksum saved with it (changed or damaged on disk since it "
        f"was written); {fix}"
    )


def verify(checkpoint: Path, names: Iterable[str], fix: str, info: dict | None = None) -> None:
    """Refuse, in one line ending with `fix`, a checkpoint whose files `names` (see first_changed)
    changed since they were saved."""
    with verified(checkpoint, names, fix, info):
        pass


@contextlib.contextmanager
def verified(
    checkpoint: Path, names: Iterable[str], fix: str | Callable[[], str], info: dict | None = None
) -> Iterator[None]:
    """verify, done while the block runs: the block loads the files `names` as other threads sum
    them, and nothing it loaded may be used before it ends. At its end a changed file is refused
    with verify's line, also in place of an error the block raised: a changed file that fails to
    load, or a load that fails for another reason, is refused as changed, as when verify came first.
    `fix` may be a function, called only to refuse (a resume's looks for an intact checkpoint)."""
    judged = _judged(checkpoint, names, info)
    with _summing([checkpoint / name for name in judged]) as sums:
        try:
            yield
        except Exception:
            changed = _first_different(judged, sums)
            if changed is None:
                raise
            raise _refused(checkpoint / changed, fix) from None
        changed = _first_different(judged, sums)
    if changed is not None:
        raise _refused(checkpoint / changed, fix)


def _refused(file: Path, fix: str | Callable[[], str]) -> UserError:
    return UserError(changed_line(file, fix if isinstance(fix, str) else fix()))
