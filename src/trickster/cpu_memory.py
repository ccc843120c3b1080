"""The memory a process on this machine may use: its RAM, or less where a limit says so.

A container's or a batch job's cgroup (`docker run --memory`, Slurm's memory cgroup) caps what all
of its processes hold together, and the kernel's out-of-memory killer ends a process past it with
no line of its own (`Killed`); `ulimit -v` (address space) and `ulimit -d` (data segment) cap one
process, whose allocations past them fail. Measured against the whole RAM, a run under such a cap
passed the memory check before its first step and died, or ended with `out of memory (RAM of cpu,
23.5 GiB)` in a process allowed 4, and `trickster plan` and `batch_size: auto` sized it for the
machine. Each of a job's processes on the machine has its share of the smaller of the RAM and the
cgroup's limit, or its own ulimit if less: a ulimit is not divided among them (`ulimit -v` counts
the address space the libraries map as well, torch alone about 0.6 GiB: a run holds somewhat less
than it).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
OWN_CGROUPS = Path("/proc/self/cgroup")  # `0::/PATH` (v2), `N:memory:/PATH` (v1)
RLIMITS = ((resource.RLIMIT_AS, "ulimit -v"), (resource.RLIMIT_DATA, "ulimit -d"))


def machine_memory() -> tuple[int, str]:
    """The bytes of memory all of the processes on this machine share, and what says so ("RAM", or
    a cgroup's limit below it)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return min([(ram, "RAM"), *cgroup_limits()], key=lambda cap: cap[0])  # RAM on a tie


def process_share(capacity: int, what: str, processes: int = 1) -> tuple[int, str]:
    """The bytes one of `processes` on this machine may use, and what says so: its share of the
    `capacity` they share ("RAM / 2 processes"), or a ulimit below that share, which caps each
    process on its own and so is not divided."""
    share = (capacity, what) if processes <= 1 else (capacity // processes, f"{what} / {processes} processes")
    return min([share, *process_limits()], key=lambda cap: cap[0])  # the share on a tie


def process_limits() -> Iterator[tuple[int, str]]:
    for limit, command in RLIMITS:
        soft, _ = resource.getrlimit(limit)
        if soft != resource.RLIM_INFINITY:
            yield soft, f"RAM allowed by {command}"


def cgroup_limits() -> Iterator[tuple[int, str]]:
    """The memory limits of this process's cgroups and of those above them. Inside a container the
    path /proc/self/cgroup gives may name the host's hierarchy: its root (the container's own) is
    read as well."""
    try:
        lines = OWN_CGROUPS.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "" and path:
            base, file = CGROUP_ROOT, "memory.max"
        elif "memory" in controllers.split(","):
            base, file = CGROUP_ROOT / "memory", "memory.limit_in_bytes"
        else:
            continue
        own = base / path.lstrip("/")
        for folder in {base, own, *(p for p in own.parents if p.is_relative_to(base))}:
            value = _read_limit(folder / file)
            if value is not None:
                yield value, f"RAM allowed by its cgroup ({file})"


def _read_limit(file: Path) -> int | None:
    try:
        text = file.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max": none (v1's none is a huge number)
