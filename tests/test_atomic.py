"""What a writer killed mid-write leaves (`.NAME.tmp-PID`, `.NAME.old-PID`): deleted by the next
writer when that process is dead, never while it runs."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from trickster.atomic import leftovers, remove_leftovers, replace_dir, replace_file


def _plant(folder, name: str, as_folder: bool = False):
    path = folder / name
    if as_folder:
        path.mkdir()
        (path / "model.safetensors").write_bytes(b"half")
    else:
        path.write_text("half", encoding="utf-8")
    return path


def test_only_our_names_of_dead_writers_are_removed(tmp_path, dead_pid, live_pid):
    dead = [
        _plant(tmp_path, f".status.json.tmp-{dead_pid}"),
        _plant(tmp_path, f".step_000008.tmp-{dead_pid}", as_folder=True),
        _plant(tmp_path, f".best.old-{dead_pid}", as_folder=True),  # best is in place: a stale copy
    ]
    (tmp_path / "best").mkdir()
    kept = [
        _plant(tmp_path, f".report.html.tmp-{live_pid}"),  # another process is writing it now
        _plant(tmp_path, f".step_000012.tmp-{live_pid}", as_folder=True),
        _plant(tmp_path, f".final.old-{dead_pid}", as_folder=True),  # final is missing: the only copy
        _plant(tmp_path, ".lock"),
        _plant(tmp_path, ".notes.tmp"),  # not a name this product writes
        _plant(tmp_path, f"status.json.tmp-{dead_pid}"),  # not hidden
        _plant(tmp_path, f".status.json.tmp-{dead_pid}x"),
    ]

    assert sorted(remove_leftovers(tmp_path)) == sorted(dead)

    assert not any(path.exists() for path in dead)
    assert all(path.exists() for path in kept)
    assert (tmp_path / f".step_000012.tmp-{live_pid}" / "model.safetensors").read_bytes() == b"half"


def test_this_process_id_counts_as_dead(tmp_path):
    """A container's processes get the same ids at each start: a name bearing ours was left by an
    earlier process, as nothing here writes while we look."""
    mine = _plant(tmp_path, f".metrics.jsonl.tmp-{os.getpid()}")
    assert [path for path, _ in leftovers(tmp_path)] == [mine]


def test_rewriting_a_file_removes_its_own_killed_writes_only(tmp_path, dead_pid, live_pid):
    page = tmp_path / "report[1].html"  # a name with glob characters
    mine = _plant(tmp_path, f".report[1].html.tmp-{dead_pid}")
    others = [
        _plant(tmp_path, f".report[1].html.tmp-{live_pid}"),
        _plant(tmp_path, f".other.html.tmp-{dead_pid}"),
        _plant(tmp_path, f".report.html.tmp-{dead_pid}"),
    ]

    replace_file(page, "<p>new</p>")
    replace_file(tmp_path / "loss.png", b"\x89PNG", durable=False)

    assert page.read_text(encoding="utf-8") == "<p>new</p>"
    assert (tmp_path / "loss.png").read_bytes() == b"\x89PNG"
    assert not mine.exists() and all(path.exists() for path in others)
    assert not list(tmp_path.glob(f".*-{os.getpid()}"))  # nothing of its own left either


def test_on_windows_no_process_is_signalled_to_check_it(monkeypatch, dead_pid):
    """There signal 0 is CTRL_C_EVENT: os.kill(pid, 0) would interrupt a console process group."""
    from trickster import atomic

    def refuse(*_):
        raise AssertionError("os.kill called")

    monkeypatch.setattr(atomic.os, "name", "nt")
    monkeypatch.setattr(atomic.os, "kill", refuse)
    assert atomic.process_exists(dead_pid)  # cannot be checked: not known to be dead


def test_a_link_to_a_device_or_a_pipe_is_written_into_never_replaced(tmp_path):
    """A file linked to /dev/null or /dev/full (to drop it, or to test a full disk), or to a pipe a
    tool reads: replacing the link's target would put a regular file in its place, in /dev for a
    device. A pipe in tmp_path stands in for the device here, so that a failure harms nothing."""
    pipe = tmp_path / "pipe"
    os.mkfifo(pipe)
    (tmp_path / "metrics.csv").symlink_to(pipe)
    got = []
    reader = threading.Thread(target=lambda: got.append(pipe.read_bytes()), daemon=True)
    reader.start()
    replace_file(tmp_path / "metrics.csv", ["event,step\n", "train,2\n"])
    reader.join(10)
    assert stat.S_ISFIFO(pipe.stat().st_mode) and got == [b"event,step\ntrain,2\n"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "pipe"]


def test_a_folder_being_replaced_is_never_deleted_before_its_successor_is_in_place(tmp_path, monkeypatch):
    """replace_dir moves the old folder aside, then the new one in: a writer killed between the two
    renames leaves the old one whole under `.NAME.old-PID`, for run_checkpoints.recover to put back. The
    kill is a rename of the new folder that never happens."""
    old, new = tmp_path / "best", tmp_path / ".best.tmp-1"
    for folder, text in [(old, "old"), (new, "new")]:
        folder.mkdir()
        (folder / "model.safetensors").write_text(text)
    real_rename = Path.rename

    def killed_before_the_new_one_moves(self, target):
        if self == new:
            raise KeyboardInterrupt("killed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_before_the_new_one_moves)
    with pytest.raises(KeyboardInterrupt):
        replace_dir(new, old)
    aside = tmp_path / f".best.old-{os.getpid()}"
    assert not old.exists() and (aside / "model.safetensors").read_text() == "old"
    monkeypatch.undo()
    replace_dir(new, old)  # the next writer: the new folder in place, the old one then deleted
    assert (old / "model.safetensors").read_text() == "new"
    assert remove_leftovers(tmp_path) == [aside] and [p.name for p in tmp_path.iterdir()] == ["best"]


def test_replace_dir_replaces_a_file_at_the_targets_name_each_time(tmp_path):
    """A file where a checkpoint folder goes (`best`): rmtree left it under the old name, and the
    next replace (the next `best` of the same run) failed to rename the folder onto it, a resume
    ending in 'could not write checkpoint ... (Not a directory)' after writing it."""
    target = tmp_path / "best"
    target.write_text("not a checkpoint")
    for n in range(2):
        new = tmp_path / f"new-{n}"
        new.mkdir()
        (new / "info.json").write_text(str(n))
        replace_dir(new, target)
        assert (target / "info.json").read_text() == str(n)
    assert [p.name for p in tmp_path.iterdir()] == ["best"]  # no hidden copy left behind
