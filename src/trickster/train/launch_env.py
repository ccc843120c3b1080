"""A job's launch checked before its process joins it (dist.setup): torchrun's variables as a job
needs them, how the job trains in parallel (parallel_mode), and a collective backend the device
can run. Each mistake is one line, before the run folder is touched; left to torch, each was a
traceback from inside init_process_group or the device mesh."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from trickster.errors import UserError

if TYPE_CHECKING:
    from trickster.config import DeviceConfig


def world_size() -> int:
    """The job's processes, from the WORLD_SIZE torchrun gives each (1 when unset). torchrun sets
    RANK beside it: a WORLD_SIZE above 1 without RANK was exported by hand or left from another job,
    and made a group of one that the device mesh then refused ("Mesh should not be bigger than
    default world size 1, but found 2 ranks!")."""
    size = number("WORLD_SIZE", 1, least=1)
    if size > 1 and "RANK" not in os.environ:
        raise UserError(
            f"the environment says WORLD_SIZE={size} but sets no RANK: torchrun sets both for each "
            f"process it starts; launch the job with torchrun --nproc-per-node {size}, or unset "
            "WORLD_SIZE to train in one process"
        )
    return size


def number(name: str, default: int, least: int = 0) -> int:
    """The integer torchrun sets in the environment variable `name` (`default` when unset). Any
    other text, exported by hand or left from another job, is one line (ASCII digits only:
    str.isdigit passes "²", which int() refused with a traceback)."""
    text = os.environ.get(name, str(default))
    digits = text.strip()
    if not (digits.isascii() and digits.isdigit()) or int(digits) < least:
        what = "a number of processes" if least else "a process number"
        raise UserError(
            f"the environment's {name}={text!r} is not {what}; launch the job with torchrun, which "
            f"sets it, or unset {name} to train in one process"
        )
    return int(text)


def parallel_mode(device: DeviceConfig, processes: int) -> str:
    """How a job of `processes` trains: "fsdp" when asked; "ddp" when asked, or when torchrun
    launched several processes (it needs no asking there); else "single". The one rule that
    dist.setup joins the job by and that every memory check (footprint.py) sizes the job by."""
    if device.enable_fsdp:
        return "fsdp"
    return "ddp" if device.enable_ddp or processes > 1 else "single"


def backend(choice: str, device_type: str) -> str:
    """The process group's backend for device_config.backend `choice` on `device_type`. nccl has
    no CPU tensors ("No backend type associated with device type cpu"): a CUDA job pairs it with
    gloo for whatever collective still runs on the CPU. Asked for off CUDA, nccl is refused: torch
    raised "Distributed package doesn't have NCCL built in" (a CPU build) or failed later."""
    if choice == "nccl" and device_type != "cuda":
        raise UserError(
            f"device_config.backend=nccl runs on CUDA GPUs only, and this job runs on {device_type}; "
            "set device_config.backend=auto (gloo off CUDA) or gloo"
        )
    if choice == "gloo" or (choice == "auto" and device_type != "cuda"):
        return "gloo"
    return "cpu:gloo,cuda:nccl"
