"""What scripts/gpu_check.py --out DIR writes, as the check goes: versions.txt at the start (the
machine, driver, torch, CUDA: what docs/PERFORMANCE.md records with each figure), then after every
step results.jsonl (one line per step), summary.txt (the table so far) and logs.tgz (the work
folder's logs and metrics, without checkpoints or weights). A GPU machine lent for minutes kills a
command that runs over: whatever was done by then is there."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOG_BYTES = 4 << 20  # a bigger file in the work folder is data or weights, not a log
SKIPPED_DIRS = {"checkpoints", "data"}  # checkpoints, prepared tokens (nanoGPT's too)
SKIPPED_SUFFIXES = {".safetensors", ".distcp", ".pt", ".bin", ".gguf", ".npy"}


def versions() -> str:
    """The machine and software a check ran on, one item a line."""
    import torch

    lines = [f"date {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}"]
    lines.append(_command(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,"
                           "clocks.max.sm", "--format=csv,noheader"]))  # fmt: skip
    cuda = torch.version.cuda if torch.cuda.is_available() else "none visible"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    lines.append(f"python {platform.python_version()} torch {torch.__version__} cuda {cuda} ({gpu})")
    lines.append(_command(["git", "-C", str(ROOT), "log", "-1", "--format=commit %H %s"]))
    lines.append(f"cpus {os.cpu_count()}; {_meminfo()}")
    return "\n".join(lines) + "\n"


def _command(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"{argv[0]}: {err}"
    return (done.stdout.strip() or done.stderr.strip() or f"{argv[0]}: no output").replace("\n", "; ")


def _meminfo() -> str:
    """RAM as the kernel reports it (on some GPU machines MemTotal starts low and grows)."""
    try:
        fields = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    except OSError:
        return "no /proc/meminfo"
    return ", ".join(f"{key} {fields[key].strip()}" for key in ("MemTotal", "MemAvailable") if key in fields)


def record(out: Path, work: Path, results: list, table: str) -> None:
    """After a step: its result appended to results.jsonl, the table so far, the logs so far."""
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(dataclasses.asdict(results[-1])) + "\n")
    _replace(out / "summary.txt", lambda path: path.write_text(table + "\n"))
    _replace(out / "logs.tgz", lambda path: _pack(work, path))


def _replace(target: Path, write) -> None:
    """Written beside it, then renamed over it: a kill mid-write leaves the previous one whole."""
    partial = target.with_name(target.name + ".partial")
    write(partial)
    os.replace(partial, target)


def _pack(work: Path, archive: Path) -> None:
    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        path = Path(info.name)
        if SKIPPED_DIRS & set(path.parts[1:]) or path.suffix in SKIPPED_SUFFIXES:
            return None
        return None if info.isfile() and info.size > LOG_BYTES else info

    with tarfile.open(archive, "w:gz") as tar:
        tar.add(work, arcname=work.name, filter=keep)
