"""The only module that runs torch.distributed: process group, device mesh, wrapping, collectives
(peers.py reads its error types: what a process says when the rest of its job is gone).

`trickster train` alone is one process and never touches torch.distributed. Under torchrun
(`torchrun --nproc-per-node N -m trickster train ...`) each process reads RANK / WORLD_SIZE /
LOCAL_RANK, joins the process group and trains its share of every global batch:

    enable_ddp                 DistributedDataParallel: full replicas, gradients all-reduced
    enable_fsdp                FSDP2 `fully_shard` on every block and the root: parameters,
                               gradients and AdamW state sharded over mesh_shape[1] processes,
                               replicated over mesh_shape[0] (hybrid sharding when both > 1);
                               with bfloat16 runs the gathered weights are bfloat16 and the
                               gradients are reduced in float32 (a MixedPrecisionPolicy)

On GPUs the process group has two backends, "cpu:gloo,cuda:nccl": nccl moves CUDA tensors only,
and the few CPU-side collectives (the objects of `broadcast`/`gather`) go over gloo. The tensor
collectives (`sum_across`, `from_rank0`) take tensors on the job's device.

Checkpoints hold gathered weights (rank 0 writes them) and the optimizer state by parameter name,
gathered too, or under FSDP2 written sharded by every process (torch.distributed.checkpoint): a
run saved on N processes resumes on M, and single-process `generate` reads its weights.
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import inspect
import io
import os
import pickle
import socket
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
import torch.distributed.nn.functional  # noqa: F401  first: its defaults hold the group there is on import
from torch.distributed.device_mesh import init_device_mesh
from torch.nn.parallel import DistributedDataParallel

# torch.distributed.checkpoint and torch.distributed.fsdp take about 0.5-0.9 s to import, which
# every `trickster` command would pay: they are imported by the functions that use them.
if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import MixedPrecisionPolicy

from trickster.config import DeviceConfig
from trickster.errors import UserError
from trickster.precision import compute_dtype_name
from trickster.train import dtensor_caches, launch_env, peers


@dataclass(frozen=True)
class MeshShape:
    """[replicate, shard] degrees; their product must be the number of processes."""

    replicate: int
    shard: int

    @classmethod
    def choose(cls, cfg: DeviceConfig, world_size: int) -> MeshShape:
        if cfg.mesh_shape is None:
            return cls(1, world_size) if cfg.enable_fsdp else cls(world_size, 1)
        replicate, shard = cfg.mesh_shape
        if replicate * shard != world_size:
            raise UserError(
                f"device_config.mesh_shape [{replicate}, {shard}] multiplies to {replicate} x {shard} = "
                f"{replicate * shard}, but the job has {world_size} process(es) (torchrun --nnodes x "
                "--nproc-per-node); make the product match, or leave mesh_shape empty"
            )
        if not cfg.enable_fsdp:
            return cls(world_size, 1)  # data parallel only: the mesh is just a grid of replicas
        return cls(replicate, shard)


@dataclass
class Dist:
    """Where this process stands in the job. The default is the single-process run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    mode: str = "single"  # single | ddp | fsdp
    mesh: DeviceMesh | None = None
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # where collectives run
    dtype: str = "float32"  # the run's compute dtype: FSDP2 gathers bfloat16 weights for bfloat16
    local_world_size: int = 1  # the job's processes on this machine (they share its RAM)
    timeout_s: int = 600  # device_config.timeout_s: how long a collective waits for a silent process

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.mode != "single"

    @property
    def gathered_dtype(self) -> torch.dtype | None:
        """The dtype FSDP2 gathers the weights in, and so the forward's; None where the weights
        are not sharded or stay float32. Generation on the sharded model needs it for its KV cache
        (the sharded parameters themselves are float32)."""
        return torch.bfloat16 if self.mode == "fsdp" and self.dtype == "bfloat16" else None


def setup(cfg: DeviceConfig, device_type: str) -> Dist:
    """Join the process group when launched by torchrun or when DDP/FSDP is asked for."""
    world_size = launch_env.world_size()
    mode = launch_env.parallel_mode(cfg, world_size)
    if mode == "single":
        return Dist()
    # before joining: a bad mesh or backend leaves nothing behind
    shape, backend = MeshShape.choose(cfg, world_size), launch_env.backend(cfg.backend, device_type)
    launched = "RANK" in os.environ  # by torchrun; otherwise a group of one, to exercise the path
    rank, local_rank = launch_env.number("RANK", 0), launch_env.number("LOCAL_RANK", 0)
    device = torch.device(device_type, local_rank) if device_type == "cuda" else torch.device(device_type)
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
    # nccl binds its communicator to this process's GPU at once instead of guessing it later
    bound = {"device_id": device} if device_type == "cuda" else {}
    timeout = datetime.timedelta(seconds=cfg.timeout_s)
    with peers.joining(cfg.timeout_s, launched):  # torchrun's launcher gone: one line
        if not dist.is_initialized():
            if launched:
                dist.init_process_group(backend=backend, timeout=timeout, **bound)
            else:
                address = f"tcp://127.0.0.1:{_free_port()}"
                dist.init_process_group(
                    backend, init_method=address, rank=0, world_size=1, timeout=timeout, **bound
                )
        mesh = init_device_mesh(
            device_type, (shape.replicate, shape.shard), mesh_dim_names=("replicate", "shard")
        )
    dtype = compute_dtype_name(cfg.dtype, device)
    local = launch_env.number("LOCAL_WORLD_SIZE", 1, least=1)  # torchrun's --nproc-per-node
    return Dist(rank, world_size, local_rank, mode, mesh, device, dtype, local, cfg.timeout_s)


def shutdown() -> None:
    """Leave the process group, if this process joined one, and free its groups now: a group lives
    on, with gloo's threads, until what holds it is collected (the trainer, its mesh, DTensor's
    caches of FSDP2's meshes: dtensor_caches). Left to the interpreter's exit, a gloo thread that
    needs the GIL can no longer take it: the process aborts ("terminate called without an active
    exception", SIGABRT instead of its exit status). Call it once nothing holds the trainer any more
    (commands.train_command drops an error's traceback for this)."""
    global _background_group
    if dist.is_initialized():
        dist.destroy_process_group()  # every group, the background saves' too
        _background_group = None
        dtensor_caches.empty()
        gc.collect()


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def parallelize(
    model: torch.nn.Module, d: Dist, device: torch.device, compile: bool = False
) -> torch.nn.Module:
    """Wrap a finished model for the job. Returns the module to call for training steps.

    `compile`: compile each block's forward (as torchtitan does), before any wrapping, so that
    FSDP2's hooks run outside the compiled code, the names of parameters and checkpoints stay
    plain, and one compiled graph serves every block. The embedding and the loss stay eager.

    FSDP2 shards in place (the same object, still the model for sampling and saving); DDP returns
    a wrapper around the unchanged model.
    """
    if compile:
        compile_blocks(model)
    if d.mode == "ddp":
        return DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            gradient_as_bucket_view=True,  # gradients live in the all-reduce buckets: no copy
            **NO_BUFFER_SYNC,
        )
    if d.mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        mesh = d.mesh if d.mesh.shape[0] > 1 else d.mesh["shard"]  # 2-D mesh: hybrid sharding
        policy = mixed_precision(d)
        last = len(model.layers) - 1
        for i, block in enumerate(model.layers):
            # the last block's backward comes right after its forward: keep it gathered
            fully_shard(block, mesh=mesh, mp_policy=policy, reshard_after_forward=i < last)
        # the root (embedding, final norm, output) is needed again at once by the backward
        fully_shard(model, mesh=mesh, mp_policy=policy, reshard_after_forward=False)
    return model


# the only buffers are the rotary tables, equal everywhere: no broadcast before every forward
# (torch 2.13 renamed the switch; older versions, as on some GPU machines, know the first name)
NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def mixed_precision(d: Dist) -> MixedPrecisionPolicy:
    """bfloat16 runs gather bfloat16 weights (half the bytes, and autocast has nothing left to
    cast); gradients are reduced in float32 whatever the dtype, so the sum loses nothing.

    The blocks' inputs are not cast: the residual stream is bfloat16 already (the embedding's
    weights are), and the rotary tables stay float32, as without FSDP (bfloat16 cos/sin are off by
    up to 0.4% at every position). It also keeps activation checkpointing working on torch before
    2.13, whose FSDP2 skips that cast when a block is recomputed in the backward pass: the
    recomputed tensors then differ in dtype from the saved ones and torch.utils.checkpoint fails.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(
        param_dtype=d.gathered_dtype, reduce_dtype=torch.float32, cast_forward_inputs=False
    )


def compile_blocks(model: torch.nn.Module) -> None:
    """torch.compile each block's forward in place. Generation runs them eagerly (see
    model/generate.py): a KV cache would recompile them for every length."""
    for block in model.layers:
        block.forward = torch.compile(block.forward)


def micro_batch(step_model: torch.nn.Module, d: Dist, last: bool):
    """The context of one micro-batch of a step; `last` is the step's final one.

    Gradients are averaged across processes once, on the last micro-batch. Under FSDP2 the
    gathered weights also stay gathered from one micro-batch to the next (no second all-gather
    before the next forward) and are sharded again after the last backward, before the update.
    """
    if d.mode == "ddp" and not last:
        return step_model.no_sync()
    if d.mode == "fsdp":
        step_model.set_requires_gradient_sync(last)
        step_model.set_reshard_after_backward(last)
    return contextlib.nullcontext()


def sum_across(values: torch.Tensor, d: Dist) -> list[float]:
    """The sum over processes of a small packed tensor, on the host: one all-reduce and one copy.

    The training step packs everything the ranks must agree on (loss, non-finite flag, stop flag)
    into one such tensor, so a step waits for the device once, not once per value.
    """
    if d.active:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values.tolist()


def from_rank0(value: torch.Tensor, d: Dist) -> torch.Tensor:
    """Rank 0's tensor, in place on every rank (e.g. a sampled token, so the ranks stay in step)."""
    if d.active:
        dist.broadcast(value, src=0)
    return value


def broadcast(obj, d: Dist):
    """Rank 0's value of `obj` on every rank."""
    if not d.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, d: Dist) -> list:
    if not d.active:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def to_full(value):
    """A plain tensor from a DTensor (FSDP2 gradient norms are DTensors)."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


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


def load_full_optimizer_state(model, optimizer, state: dict, d: Dist) -> None:
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

    global _background_group
    if _background_group is None:  # made once, by every process at the same save
        _background_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    state = get_optimizer_state_dict(model, optimizer_parts(optimizer))
    shards = {"state": state["state"]}
    future = dcp.async_save(shards, checkpoint_id=str(folder), process_group=_background_group)
    return state["param_groups"], future


_background_group = None  # save_sharded_optimizer_async's process group


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
