"""OUT.partial, the visible folder beside OUT where a preparation is built (prepare.py): a fresh
one, one to continue (its progress.json), or one that finished but was stopped before it took the
name OUT, which the same command renames into place; and one that a complete OUT of the same
preparation makes useless, which the same command deletes. And what killed preparations left
around OUT, tidied before one starts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from trickster.atomic import held, leftovers, remove_leftovers, replace_dir, restore_replaced
from trickster.data.meta import (
    already_prepared,
    files_changed,
    moved,
    other_version,
    recorded_meta,
    same_but_version,
    settings_told,
    why_prepared_again,
)
from trickster.data.paths import PREPARED_FILES
from trickster.data.shards import Progress
from trickster.errors import UserError
from trickster.plural import counted

ONE_DOCUMENT = "one_document.npy"  # the one distinct document's tokens while its shards are rewritten
ONE_DOCUMENT_MASK = "one_document_mask.npy"  # ... and its loss mask (prompt/response records)
# in OUT.partial until the end, not in OUT (pending.bin: pending.PENDING)
SCRATCH = ("dedup.bin", ONE_DOCUMENT, ONE_DOCUMENT_MASK, "pending.bin")
FILE_MANAGERS = {".DS_Store", "Thumbs.db"}


def partial_dir(out_dir: Path) -> Path:
    return out_dir.parent / f"{out_dir.name}.partial"


def check_out_dir(out_dir: Path) -> None:
    """Tidy what killed preparations left beside `out_dir`, then refuse one that is no data folder."""
    restore_replaced(out_dir)  # a preparation killed between its two renames: replaced whole below
    remove_leftovers(out_dir.parent, of=out_dir.name)  # what one stopped after them left (.DIR.old-PID)
    remove_leftovers(out_dir.parent, of=partial_dir(out_dir).name)  # a half-deleted spent DIR.partial
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"output {out_dir} is a file; pass a folder path to --out")
    if out_dir.is_dir() and _others(out_dir) and not _holds_prepared(out_dir):
        raise UserError(
            f"{out_dir} already exists and is not a prepared data folder; choose another --out "
            "(nothing was changed)"
        )


def refuse_others(out_dir: Path, settings: dict, revision: str | None) -> None:
    """Before a prepared `out_dir` is prepared again with `settings`: refuse it while it holds what
    data prepare did not write (a README, the user's notes), which the new folder replacing it
    would delete, saying why it is prepared again. Kept as it is, it is only read: such files are
    no reason to refuse it then."""
    others = _others(out_dir) if out_dir.is_dir() else []
    if not others:
        return
    why = why_prepared_again(out_dir, settings, revision)
    reason = f"{out_dir} is to be prepared again" if why is None else why[0]
    shown = ", ".join(others[:3]) + (f" and {len(others) - 3:,} more" if len(others) > 3 else "")
    them = "it" if len(others) == 1 else "them"
    raise UserError(
        f"{reason}; beside the data it holds {shown}, which data prepare did not write and would "
        f"delete with the folder it replaces: move {them} out of {out_dir}, or choose another --out "
        "(nothing was changed)"
    )


def _others(out_dir: Path) -> list[str]:
    """The names in `out_dir` that are not a prepared folder's, in name order. What a killed `data
    report --html` left there, and a file manager's record of how it showed the folder (macOS
    Finder's .DS_Store, Windows' Thumbs.db), go with the folder they lie in."""
    dead = {path.name for path, _ in leftovers(out_dir)}
    return sorted({p.name for p in out_dir.iterdir()} - dead - PREPARED_FILES - FILE_MANAGERS)


def _holds_prepared(out_dir: Path) -> bool:
    """Whether `out_dir` holds a preparation's meta.json and tokenizer.json, whatever lies beside."""
    return (out_dir / "tokenizer.json").is_file() and recorded_meta(out_dir) is not None


def finished_in_partial(
    partial: Path, out_dir: Path, settings: dict, echo: Callable[[str], None], revision: str | None = None
) -> dict | None:
    """A preparation with these settings that finished in `partial` but was stopped before it took
    its name: renamed into place, as it would have been, said in one line; its meta.json. Finished
    for certain: progress.json is gone (deleted once index.json and meta.json were written), and the
    folder is complete as already_prepared checks one (meta.json with these settings, every shard
    whole). None if `partial` holds no such preparation. One of a Hub dataset's commit that the Hub
    (`revision`) has moved from is renamed too, to be prepared again as that DIR would be: until
    then it is the newest there is on this disk."""
    if (partial / "progress.json").exists() or (meta := already_prepared(partial, settings)) is None:
        return None
    for name in SCRATCH:  # what the preparation deletes after progress.json
        (partial / name).unlink(missing_ok=True)
    replace_dir(partial, out_dir)
    held_what = "this preparation"
    if moved(meta, revision):
        held_what += f" from revision {meta['source_revision'][:12]} of the dataset"
    echo(
        f"{partial} held {held_what}, finished but stopped before it took the name {out_dir.name}: "
        f"renamed to {out_dir}" + ("" if moved(meta, revision) else " (nothing was prepared again)")
    )
    return meta


def remove_spent(partial: Path, settings: dict, revision: str | None) -> str | None:
    """Delete `partial` beside a complete OUT prepared with these settings, when it holds the same
    preparation: finished (no progress.json, its meta.json of these settings) or not (its
    progress.json of these settings: continuing it would give what OUT holds), from the source's
    same `revision` as OUT (a Hub dataset's commit; None for other sources). Only under its lock,
    so never while a preparation works in it (nor where the file system cannot lock); never a folder
    of other settings (another command's work) or one this cannot read. It is renamed first to a
    hidden name the next preparation deletes, so a kill halfway leaves no half folder behind.
    Returns what went, for the `already prepared` line, or None if it was kept."""
    if not partial.is_dir():
        return None
    trash = partial.parent / f".{partial.name}.deleted-{os.getpid()}"
    try:
        with held(partial, "", "", create=False) as locked:
            what = _same_preparation(partial, settings, revision) if locked else None
            if what is None:
                return None
            size = sum(p.stat().st_size for p in partial.rglob("*") if p.is_file())
            partial.rename(trash)
    except (UserError, OSError):  # in use, not this user's, or it went meanwhile: kept
        return None
    shutil.rmtree(trash, ignore_errors=True)
    return f"removed {partial}, {what} of this preparation ({size / 1e6:,.1f} MB)"


def _same_preparation(partial: Path, settings: dict, revision: str | None) -> str | None:
    """'a finished copy' or 'an unfinished copy' if `partial` records these settings and this
    revision, else None."""
    if (partial / "progress.json").is_file():
        try:
            record = Progress.load(partial)
        except UserError:  # damaged: nobody can tell what it holds
            return None
        same = record.settings == settings and record.source_revision == revision
        return "an unfinished copy" if same else None
    if not (partial / "index.json").is_file() or (meta := recorded_meta(partial)) is None:
        return None
    same = meta.get("settings") == settings and meta.get("source_revision") == revision
    return "a finished copy" if same else None


def open_partial(
    partial: Path, settings: dict, echo: Callable[[str], None], revision: str | None = None
) -> Progress:
    """The record of an unfinished run with these settings (continued), or a fresh one (reading the
    source's `revision`, when known)."""
    if (partial / "progress.json").is_file():
        record = Progress.load(partial)
        if record.settings != settings and same_but_version(record.settings, settings):
            started = other_version(record.settings, settings)
            raise UserError(
                f"{partial} holds an unfinished preparation started by {started}, which this one "
                f"cannot continue; delete {partial} to start again"
            )
        if record.settings != settings:
            changed = [k for k in settings if record.settings.get(k) != settings[k]]
            files = files_changed(record.settings.get("source") or {}, settings.get("source") or {})
            if changed == ["source"] and files:  # an input file edited, added or gone since
                raise UserError(
                    f"{partial} holds an unfinished preparation of other input ({files}); it continues "
                    f"only the same input: put the input back as it was, or delete {partial} to start again"
                )
            raise UserError(
                f"{partial} holds an unfinished preparation with other settings "
                f"({settings_told(record.settings, settings, changed)}); "
                f"run the command that started it to continue, or delete {partial} to start again"
            )
        pieces = f" and {counted(record.next_piece, 'piece')} of the next" if record.next_piece else ""
        shards = counted(record.finished_shards(), "finished shard")
        echo(
            f"continuing the preparation in {partial}: {shards}, "
            f"{counted(record.next_document, 'document')}{pieces} done"
        )
        return record
    # finished, but not one finished_in_partial renames: another command's, or an older version's
    if (partial / "meta.json").is_file() and (partial / "index.json").is_file():
        out = partial.with_name(partial.name.removesuffix(".partial"))
        raise UserError(
            f"{partial} holds a finished preparation that was stopped before it took the name {out.name}, "
            "not with these settings (or by another version of trickster, or damaged); to keep it, "
            f"move {out.name} aside (if there) and rename {partial.name} to {out.name}, or delete it to "
            "start again"
        )
    if any(partial.iterdir()):
        raise UserError(f"{partial} exists but holds no progress.json; delete it to start again")
    record = Progress(settings, source_revision=revision)
    record.save(partial)
    return record
