"""errors.write_fix: the fix a failed write of a user's file names, picked by why it failed; and
disk_errors' `within`, which turns only what a write meets."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from trickster.errors import UserError, disk_errors, write_fix

PROC = Path("/proc/self")


def refused(code: int, path) -> OSError:
    return OSError(code, os.strerror(code), None if path is None else str(path))


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.ENOSPC, "free disk space, or choose another --out"),
        (errno.EDQUOT, "free disk space, or choose another --out"),
        (errno.EACCES, "make the folder writable, or choose another --out"),
        (errno.EPERM, "make the folder writable, or choose another --out"),
        (errno.EROFS, "make the folder writable, or choose another --out"),
        (errno.EFBIG, "lift the file size limit (ulimit -f), or choose another --out"),
        (errno.ENOTDIR, "choose another --out"),  # a file where a folder of the path should be
    ],
)
def test_the_fix_is_picked_by_the_cause(tmp_path, code, fix):
    assert write_fix("choose another --out")(refused(code, tmp_path / "out")) == fix


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.ENOSPC, "free disk space, then continue with --resume"),
        (errno.EROFS, "make the folder writable, then continue with --resume"),
        (errno.EFBIG, "lift the file size limit (ulimit -f), then continue with --resume"),
        (errno.EIO, "fix that, then continue with --resume"),
    ],
)
def test_a_write_during_a_run_says_what_to_do_once_the_cause_is_fixed(tmp_path, code, fix):
    assert write_fix(then="continue with --resume")(refused(code, tmp_path / "metrics.jsonl")) == fix


def test_a_folder_in_the_way_of_a_file_is_named_with_its_fix(tmp_path):
    """A folder where a run's file goes (config.yaml): the line named only the run folder and said
    to choose another --out, leaving the user to find which of its files was in the way."""
    (tmp_path / "config.yaml").mkdir()
    with (
        pytest.raises(UserError) as caught,
        disk_errors(f"run folder {tmp_path}", write_fix("choose another --out")),
    ):
        (tmp_path / "config.yaml").write_text("model_config: {}\n")
    assert str(caught.value) == (
        f"could not write run folder {tmp_path} (Is a directory: {tmp_path / 'config.yaml'}); "
        "move that folder away, or choose another --out"
    )


@pytest.mark.skipif(not PROC.is_dir(), reason="no /proc on this system")
@pytest.mark.parametrize("code", [errno.ENOENT, errno.EACCES, errno.EPERM])
def test_a_folder_of_the_system_is_told_apart_from_one_to_make_writable(code):
    """/proc tells root ENOENT and others EACCES; /sys tells EPERM or EACCES: none is to be freed
    or made writable."""
    fix = write_fix("choose another --out", then="run the same command again")
    assert (
        fix(refused(code, PROC / "x"))
        == "no file can be written there (as in /proc or /sys); choose another --out"
    )


def test_only_what_a_write_meets_is_turned_within_folders(tmp_path):
    """While a preparation writes its folder it reads its source: a read's error (a network
    error is an OSError too) keeps its own words; a write's (full, read-only, too large, or one
    naming a file in the folder) becomes one line."""
    folder = tmp_path / "out.partial"
    fix = write_fix("choose another --out")
    for error in (
        refused(errno.ENOSPC, None),
        refused(errno.EFBIG, None),
        refused(errno.EACCES, folder / "a.bin"),
    ):
        with pytest.raises(UserError, match=rf"^could not write {folder} \({error.strerror}\); "):
            with disk_errors(str(folder), fix, within=(folder,)):
                raise error
    for error in (refused(errno.ECONNRESET, None), refused(errno.EACCES, tmp_path / "corpus.txt")):
        with pytest.raises(OSError) as raised:
            with disk_errors(str(folder), fix, within=(folder,)):
                raise error
        assert raised.value is error
