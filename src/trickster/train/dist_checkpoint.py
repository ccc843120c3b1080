"""A checkpoint's model and optimizer state across the job's processes, through
torch.distributed.checkpoint: gathered whole by parameter name on rank 0's CPU (rank 0 writes the
weights and trainer.pt), or under FSDP2 the optimizer moments written in shards by every process;
read back into this job's layout. A run saved on N processes resumes on M, and single-process
`generate` reads its weights. The sharded index is read without running code (_MetadataUnpickler).

torch.distributed.checkpoint is imported by the functions that use it, as in dist.py: every
`trickster` command would pay for its import.
"""

from __future__ import annotations

import contextlib
import io
import pickle
import warnings
from concurrent.futures import Future
from pathlib import Path

import torch

from trickster.errors import UserError
from trickster.train import dist


def full_optimizer_state(model, optimizer, on_cpu: bool = True) -> dict:
    """The optimizer state keyed by parameter name, not position, gathered on rank 0's CPU: the
    same file loads on any number of processes. Call it after full_weights: under FSDP2, asking
    for the optimizer's state first after an evaluation fails to find the tied embedding by name
    (KeyError; tests/test_dist.py). `on_cpu` False (not under FSDP2): the live tensors where they
    are, for a snapshot that copies them once (async_save.py)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer_parts(optimizer), options=_gathered_on_cpu(on_cpu))


def _gathered_on_cpu(on_cpu: bool = True):
    """State-dict options: whole tensors, not shards, on the CPU (rank 0 keeps them)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=on_cpu)


def optimizer_parts(optimizer):
    """Muon + AdamW (optim.MuonAdamW): both optimizers, whose states share one name-keyed dict."""
    return getattr(optimizer, "parts", optimizer)


def load_full_optimizer_state(model, optimizer, state: dict, d: dist.Dist) -> None:
    """The full state (gathered by parameter name, as trainer.pt holds it) into this job's
    optimizer: rank 0 passes it, and in a job broadcasts it a tensor at a time; the other ranks'
    `state` is not read, so none of them touches a copy of it in host memory (8 processes on one
    machine would hold 8 copies of a 1.1B model's AdamW moments, 8.8 GB each). FSDP2 keeps its own
    shard of each tensor as it arrives."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=d.active)
    given = state if d.is_main or not d.active else {}
    set_optimizer_state_dict(model, optimizer_parts(optimizer), given, options=options)


def full_weights(model, on_cpu: bool = True) -> dict:
    """The gathered, unsharded weights (all ranks call; rank 0 gets the tensors, on the CPU);
    `on_cpu`: as full_optimizer_state's."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(model, options=_gathered_on_cpu(on_cpu))


def load_full_weights(model, tensors: dict[str, torch.Tensor]) -> None:
    """Whole tensors by name (every process read the same file) into a model sharded by FSDP2:
    each process keeps its own shard."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    model.reshard()  # the root stays gathered after a forward: its gathered copy would go stale
    # not strict: a tied output matrix is the embedding's, which the file holds once
    options = StateDictOptions(full_state_dict=True, strict=False)
    set_model_state_dict(model, tensors, options=options)


def save_sharded_optimizer(model, optimizer, folder: Path) -> dict:
    """Each process writes its own shard of the optimizer moments into `folder` (one
    torch.distributed.checkpoint per job): no process gathers the whole state. Returns the
    parameter groups, which are not tensors and go into trainer.pt with the rest."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer_parts(optimizer))  # keyed by parameter name
    dcp.save({"state": state["state"]}, checkpoint_id=str(folder))
    return state["param_groups"]


def save_sharded_optimizer_async(model, optimizer, folder: Path, timeout_s: int) -> tuple[list, Future]:
    """save_sharded_optimizer in the background: torch.distributed.checkpoint.async_save copies
    this process's shard into CPU memory, then writes it from a thread of its own, whose
    collectives go over a gloo group apart from the training's (two threads must not share one).
    Returns the parameter groups and the write's future (all ranks call; their futures end
    together)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    state = get_optimizer_state_dict(model, optimizer_parts(optimizer))
    shards = {"state": state["state"]}
    group = dist.background_group(timeout_s)
    future = dcp.async_save(shards, checkpoint_id=str(folder), process_group=group)
    return state["param_groups"], future


def load_sharded_optimizer(model, optimizer, folder: Path, param_groups: list) -> None:
    """Read a sharded optimizer state written by any number of processes into this job's layout
    (torch.distributed.checkpoint reshards), then hand it to the optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    template = get_optimizer_state_dict(model, optimizer_parts(optimizer))  # this job's shards
    state = {"state": template["state"]}
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):  # dcp.load logs tracebacks
            warnings.filterwarnings("ignore", "torch.distributed is disabled")  # one process may read it
            dcp.load(state, storage_reader=_safe_reader(str(folder)))
    except (CheckpointException, AssertionError, OSError, RuntimeError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[-1][-200:] if str(err).strip() else type(err).__name__
        raise UserError(f"{folder} refused or damaged ({reason}); resume from another checkpoint") from None
    options = StateDictOptions(full_state_dict=False)
    loaded = {"state": state["state"], "param_groups": param_groups}
    set_optimizer_state_dict(model, optimizer_parts(optimizer), loaded, options=options)


class _MetadataUnpickler(pickle.Unpickler):
    """The checkpoint's index may name torch.distributed.checkpoint's own records, torch sizes and
    dtypes, and nothing else: a checkpoint is never a way to run code."""

    def find_class(self, module: str, name: str):
        found = super().find_class(module, name)
        if module.startswith("torch.distributed.checkpoint.") or (module, name) == ("torch", "Size"):
            return found
        if module == "torch" and isinstance(found, (torch.dtype, torch.layout, torch.memory_format)):
            return found
        if module == "pathlib" and name.endswith("Path"):  # where it was written; read, never run
            return found
        if (module, name) in (("torch.serialization", "_get_layout"), ("collections", "OrderedDict")):
            return found
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint index")


def _safe_reader(path: str):
    """A FileSystemReader whose index goes through _MetadataUnpickler (the class is made here, at
    first use, because torch.distributed.checkpoint is imported only when needed)."""
    import torch.distributed.checkpoint as dcp

    class SafeReader(dcp.FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            with open(Path(self.path) / ".metadata", "rb") as f:
                metadata = _MetadataUnpickler(f).load()
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = dcp.metadata.StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(path)
