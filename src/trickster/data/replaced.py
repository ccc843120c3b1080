"""The line `data prepare` says before it prepares anew a complete folder of other settings or
other input (another --tokenizer, a corpus file edited since): the folder is replaced once the new
one is done, and a run trained on it then refuses --resume, so the change is said, not silent."""

from __future__ import annotations

from pathlib import Path

from trickster.data.meta import recorded_meta, same_but_version
from trickster.data.partial import files_changed

AFTER = "preparing it again; it is replaced once this preparation is done"


def replaced_line(out_dir: Path, settings: dict) -> str | None:
    """What differs between the settings `out_dir` was prepared with and `settings`, in one line;
    None when it holds no record of settings, or the same ones (another version's: meta.prepared_again)."""
    meta = recorded_meta(out_dir)
    recorded = None if meta is None else meta.get("settings")
    if not isinstance(recorded, dict) or same_but_version(recorded, settings):
        return None
    changed = [key for key in settings if key != "version" and recorded.get(key) != settings[key]]
    files = files_changed(recorded.get("source") or {}, settings.get("source") or {})
    if changed == ["source"] and files:
        return f"{out_dir} holds data prepared from other input ({files}): {AFTER}"
    told = ", ".join(_told(key, recorded.get(key), settings[key]) for key in changed)
    return f"{out_dir} holds data prepared with other settings ({told}): {AFTER}"


def _told(key: str, before, now) -> str:
    """A setting by its name, with both values when they are one word or number each."""
    plain = (str, int, float, type(None))
    return f"{key} {before}, now {now}" if isinstance(before, plain) and isinstance(now, plain) else key
