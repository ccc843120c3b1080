"""Tensors written to a file so that a failed write is the OSError it is, for disk_errors to put
in one line: safetensors (checkpoints' weights and adapters, a Hugging Face export's) and torch.save
(trainer.pt); a safetensors file gets the mode the umask gives its folder's other files."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

OS_ERROR = re.compile(r"\(os error (\d+)\)")  # the errno in a SafetensorError's message


def save_tensors(tensors: dict[str, torch.Tensor], file: Path, metadata: dict[str, str]) -> None:
    """safetensors' save_file, whose failed writes become the OSError they are: it reports a full
    disk as SafetensorError("Error while serializing: I/O error: No space left on device (os
    error 28)"), which disk_errors would not turn into one line. The file gets the mode the other
    files of its folder get: safetensors 0.8 writes 0o600 whatever the umask (safetensors#782),
    which left model.safetensors the one file of an export that another user (a container's)
    could not read."""
    try:
        save_file(tensors, file, metadata=metadata)
    except SafetensorError as err:
        code = OS_ERROR.search(str(err))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(file)) from None
    umask = _umask()
    if umask is not None:
        os.chmod(file, 0o666 & ~umask)


def _umask() -> int | None:
    """This process's umask, read where Linux shows it: os.umask can only read it by setting it,
    which would change it for files other threads create meanwhile (async_save writes from one)."""
    try:
        status = Path("/proc/self/status").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    found = re.search(r"^Umask:\s+([0-7]+)$", status, re.M)
    return int(found[1], 8) if found else None


def save_trainer_state(state: dict, file: Path) -> None:
    """torch.save, whose failed write becomes the OSError it is: torch reports any (a full disk, a
    quota, a file size limit) as a RuntimeError without an errno ("unexpected pos 704 vs 598"), so
    it writes through `_Writes`, which keeps the error. A RuntimeError without one is a bug."""
    with open(file, "wb") as f:
        out = _Writes(f)
        try:
            torch.save(state, out)
        except RuntimeError:
            if out.error is None:
                raise
            raise out.error from None


class _Writes:
    """A file for torch.save that remembers the first OSError of its writes."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.f.flush()
