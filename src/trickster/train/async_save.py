"""Where a run's checkpoint folders are written: on the training thread, or, with
training_config.async_save, a numbered one by a background thread while training goes on (the
idea of torchtitan's async checkpointing, as one plain worker thread). Under FSDP2 each process
first writes its shard of the optimizer moments into the folder being built (stage_shards).

A background save starts with a snapshot on the training thread: the weights, the optimizer
moments and the trainer state copied into CPU memory (copied over from a GPU, cloned on a CPU),
so that nothing the next step changes is shared with it; from the second one on, into the memory
of the one before (kept for the run: one more copy of the state in CPU memory). The worker thread
then writes the folder exactly as a save on the training thread does (checkpoint.save_checkpoint:
staging, checksums, rename, COMPLETE; then keep_last's rotation). Under FSDP2 every process's
optimizer shard goes through torch.distributed.checkpoint.async_save
(dist_checkpoint.save_sharded_optimizer_async), and rank 0's thread writes the rest into the folder once
every shard is in.

At most one write is in flight. `settle()` waits for it on every process of the job and raises its
error (the one line a save on the training thread raises) on all of them: the Trainer settles before
any save, before a rollback looks for its checkpoint, before an evaluation records its loss in the
checkpoint of its step, and when the run ends or stops. `drain()` waits on this process alone, for
the way out of an error, where the job may be broken. A kill during a write leaves a staging folder
without COMPLETE, which latest() ignores and the next resume removes (run_checkpoints.recover).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from copy import deepcopy
from pathlib import Path

import torch

from trickster import run_checkpoints
from trickster.atomic import staging_dir
from trickster.model import lora
from trickster.run_checkpoints import STEP_DIR
from trickster.train import checkpoint as ckpt
from trickster.train import dist, dist_checkpoint
from trickster.train.rank0 import on_main
from trickster.train.weights import weights_to_save


class Writer:
    """Writes one run's checkpoints; `enabled`: numbered ones may go to the background."""

    def __init__(self, enabled: bool, job: dist.Dist, keep_last: int | None, say: Callable[[str], None]):
        self.enabled, self.job, self.keep_last, self.say = enabled, job, keep_last, say
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="checkpoint-write") if enabled else None
        self._pending: Future | None = None
        self._spare: dict = {}  # the last snapshot's tensors (snapshot's `spare`)

    def write(
        self, target: Path, parts: tuple, reuse: Path | None, background: bool, shards: Future | None
    ) -> None:
        """Checkpoint `target` from `parts` (save_checkpoint's model, cfg, tokenizer, info,
        trainer_state, weights, staging), now or (`background`) from a snapshot of them; `shards`:
        this process's optimizer shard still being written (FSDP2). Every process calls it."""
        numbered = STEP_DIR.match(target.name) is not None
        if not background:  # rank 0 writes, the others wait: its error (a full disk) ends them all
            on_main(self.job, ckpt.save_checkpoint, target, *parts, reuse)
            if self.job.is_main and numbered:
                run_checkpoints.prune(target.parent.parent, self.keep_last)
            return
        if not self.job.is_main:
            self._pending = shards  # its own shard's write, waited for at the next settle()
            return
        model, cfg, tokenizer, info, trainer_state, weights, staging = parts
        tensors = {**weights_to_save(model, weights), **lora.adapter_weights(model, weights)}
        # the next background save copies into this one's tensors after settle(): this write is done
        (info, trainer_state, tensors), self._spare = snapshot((info, trainer_state, tensors), self._spare)
        written = (target, model, cfg, tokenizer, info, trainer_state, tensors, staging)
        self._pending = self._pool.submit(self._write, *written, shards)

    def _write(self, target, model, cfg, tokenizer, info, trainer_state, tensors, staging, shards) -> None:
        if shards is not None:
            try:
                shards.result()  # every process's optimizer shard is in the staging folder
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        ckpt.save_checkpoint(target, model, cfg, tokenizer, info, trainer_state, tensors, staging)
        run_checkpoints.prune(target.parent.parent, self.keep_last)

    def settle(self) -> None:
        """Wait for the write in flight, on every process (all call it at the same point); a
        failed one raises its error on all of them (rank 0's; else this process's own shard's)."""
        if not self.enabled:
            return
        pending, self._pending = self._pending, None
        own = None if self.job.is_main else _error_of(pending)  # rank 0 meets it too, and tells all
        on_main(self.job, _finished, pending)
        if own is not None:
            raise own

    def drain(self) -> None:
        """Wait for this process's write in flight, on the way out of an error that ends the run
        (other processes may be gone: nothing is asked of them). A failure of that write is said
        in its line, not raised: the error on its way out ends the run."""
        pending, self._pending = self._pending, None
        if pending is None:
            return
        try:
            pending.result()
        except Exception as err:
            self.say(f"the checkpoint written in the background failed too: {err}")

    def close(self) -> None:
        self.drain()
        if self._pool is not None:
            self._pool.shutdown()


def stage_shards(
    job: dist.Dist, model, optimizer, target: Path, background: bool = False
) -> tuple[Path, list, Future | None]:
    """Under FSDP2: the staging folder of checkpoint `target` (made by rank 0, known to all), with
    every process's shard of the optimizer moments in it; the optimizer's param_groups; and
    (`background`) the future of this process's shard, still being written (Writer.write waits for it)."""
    staging = on_main(job, staging_dir, target)
    folder = staging / ckpt.OPTIMIZER
    try:
        if background:
            shards = dist_checkpoint.save_sharded_optimizer_async(model, optimizer, folder, job.timeout_s)
            return staging, *shards
        return staging, dist_checkpoint.save_sharded_optimizer(model, optimizer, folder), None
    except BaseException:
        if job.is_main:
            shutil.rmtree(staging, ignore_errors=True)
        raise


def _finished(pending: Future | None) -> None:
    if pending is not None:
        pending.result()


def _error_of(pending: Future | None) -> BaseException | None:
    return None if pending is None else pending.exception()


def snapshot(value, spare: dict | None = None) -> tuple:
    """`value` with every tensor in it copied into CPU memory (from a GPU: copied over; on the
    CPU: cloned) and everything else deep-copied, so that training on changes nothing in it. A
    tensor found twice (a tied weight) is copied once. `spare`: the tensors of an earlier snapshot
    no one reads any more, by shape, strides and dtype, copied into where one has the layout:
    memory allocated afresh costs a page fault per page when first written, on this CPU more than
    the copy itself. Pageable memory, not pinned (on a GPU machine a pinned copy would be faster;
    not measured). Returns the copy and its own tensors by layout: the `spare` of the next one."""
    copies: dict[int, torch.Tensor] = {}

    def copy_of(item):
        if isinstance(item, torch.Tensor):
            if id(item) not in copies:
                fits, whole = (spare or {}).get(_layout(item)), item.detach()
                copies[id(item)] = fits.pop().copy_(whole) if fits else whole.to("cpu", copy=True)
            return copies[id(item)]
        if isinstance(item, dict):
            return {key: copy_of(v) for key, v in item.items()}
        if isinstance(item, list):
            return [copy_of(v) for v in item]
        if isinstance(item, tuple) and not hasattr(item, "_fields"):
            return tuple(copy_of(v) for v in item)
        return deepcopy(item)

    copied, next_spare = copy_of(value), {}
    for tensor in copies.values():
        next_spare.setdefault(_layout(tensor), []).append(tensor)
    return copied, next_spare


def _layout(tensor: torch.Tensor) -> tuple:
    return tuple(tensor.shape), tensor.stride(), tensor.dtype
