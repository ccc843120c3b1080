"""The job's processes through torch.distributed: process group, device mesh, wrapping,
collectives. Only this module and dist_checkpoint.py (a checkpoint's state across the processes)
run torch.distributed; peers.py reads its error types (what a process says when the rest of its
job is gone).

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
"""

from __future__ import annotations

import contextlib
import datetime
import gc
import inspect
import os
import socket
from dataclasses import dataclass, field
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
        if cfg.mesh_shape is not None:  # a grid for several processes, run without torchrun: not ignored
            MeshShape.choose(cfg, world_size)
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


def background_group(timeout_s: int):
    """A gloo group apart from the training's, for collectives from a thread of their own (two
    threads must not share one group): made at the first call, which every process makes at the
    same point (dist_checkpoint.save_sharded_optimizer_async), then kept until shutdown."""
    global _background_group
    if _background_group is None:
        _background_group = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return _background_group


_background_group = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
