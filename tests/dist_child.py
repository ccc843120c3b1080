"""Run `trickster ...` as one process of a torchrun job, with a fault planted in rank 1 (used by
test_dist.py):

    torchrun --nproc-per-node 2 -m tests.dist_child FAULT train --config run.yaml

FAULT:
    nan-shard     at the second evaluation, once its loss is computed, rank 1 puts a NaN into its
                  own shard of the final norm's weight: only rank 1 can see it
    stop-token:LOG
                  rank 1 notes each sample it starts in the file LOG, and draws the end-of-text
                  token every time: a rank that followed its own draw would stop at once while
                  rank 0 goes on
    spike         every rank multiplies the learning rate of steps 15 to 17 by 100, the first
                  time they run only (spiking_schedule): a real loss spike, then a rollback
    skip:FIRST:STOP
                  every rank's sampler passes over draws FIRST..STOP-1 from the start (what a
                  rollback makes it do)
    ram:BYTES     every rank's machine has BYTES of RAM (footprint.device_memory), whatever it has
    die-in-save:N rank 1 ends itself with SIGKILL in the Nth checkpoint it saves, before it writes
                  its shard of the FSDP2 optimizer state (rank 0 has made the folder)
    hang-at-step:N
                  rank 1 stops answering (sleeps) at its Nth training step
    term-at-step:N
                  rank 1 alone receives SIGTERM during its Nth training step (and rank 0 takes
                  1.5 s to write the "stopped" event)
    disk-full-in-save:N
                  rank 0's Nth checkpoint write fails as on a full disk (ENOSPC)
    kill-main-opening
                  rank 0 ends itself with SIGKILL (as the kernel's out-of-memory killer would)
                  while it opens the run folder, the others waiting for its answer
    term-disk-full-at-step:N, term-bug-at-step:N
                  as term-at-step, but rank 0's write of the "stopped" event fails: the disk is
                  full (ENOSPC), or a RuntimeError("planted") as a bug would raise

The faults are injected here, in the test, so the product code carries no hooks.
"""

from __future__ import annotations

import errno
import math
import os
import signal
import sys
import time

import torch

from trickster import cli, footprint
from trickster.data import loader
from trickster.model import generate as generate_module
from trickster.observe import events
from trickster.train import checkpoint, dist_checkpoint, loop, optim, setup, validate

# step indices whose learning rate the "spike" fault multiplies by 100, once. Three, not two: after
# two, the third high loss (step 19) fell just under 2x the median on one CPU and over it on another
SPIKED_STEPS = {15, 16, 17}


def spiking_schedule(schedule, steps=SPIKED_STEPS):
    """`schedule` (optim.lr_at) with the learning rate of `steps` x100 the first time each runs:
    a replay after a rollback gets the schedule's own."""
    seen = set()

    def lr_at(step, t):
        lr = schedule(step, t)
        if step in steps and step not in seen:
            seen.add(step)
            return 100 * lr
        return lr

    return lr_at


def install(fault: str) -> None:
    rank1 = os.environ.get("RANK") == "1"
    if fault == "nan-shard":
        evaluate, calls = loop.evaluate, 0

        def patched_evaluate(model, *args):
            nonlocal calls
            calls += 1
            loss = evaluate(model, *args)
            if calls == 2:
                model.reshard()  # FSDP2 keeps the root's gathered weights after a forward (all ranks)
                if rank1:
                    with torch.no_grad():
                        model.norm.weight.to_local()[0] = math.nan
            return loss

        loop.evaluate = patched_evaluate
    elif fault.startswith("stop-token:") and rank1:
        sample, sample_text, stop = generate_module.sample, validate.sample_text, []
        log = fault.split(":", 1)[1]

        def patched_sample_text(model, tokenizer, *args, **kwargs):
            stop[:] = [tokenizer.eot_id]
            with open(log, "a") as f:
                f.write("rank 1 sampled\n")
            return sample_text(model, tokenizer, *args, **kwargs)

        def patched_sample(logits, *args, **kwargs):
            return torch.full_like(sample(logits, *args, **kwargs), stop[0])

        validate.sample_text = patched_sample_text
        generate_module.sample = patched_sample
    elif fault == "spike":
        optim.lr_at = spiking_schedule(optim.lr_at)
    elif fault.startswith("skip:"):
        first, stop = (int(n) for n in fault.split(":")[1:])
        init = loader.BatchSampler.__init__

        def skipping_init(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.skip(first, stop)

        loader.BatchSampler.__init__ = skipping_init
    elif fault.startswith("ram:"):
        ram = int(fault.split(":")[1])
        footprint.device_memory = lambda device: (ram, "RAM")
    elif fault.startswith("die-in-save:") and rank1:
        _die_in_save(int(fault.split(":")[1]))
    elif fault.startswith("disk-full-in-save:") and os.environ.get("RANK") == "0":
        _disk_full_in_save(int(fault.split(":")[1]))
    elif fault == "kill-main-opening" and os.environ.get("RANK") == "0":
        setup.open_run_dir = lambda *args: os.kill(os.getpid(), signal.SIGKILL)
    elif fault.startswith(("hang-at-step:", "term-")) and rank1:
        _at_step(int(fault.split(":")[1]), hang=fault.startswith("hang"))
    elif fault.startswith("term-at-step:"):
        _slow_to_write("stopped")
    elif fault.startswith(("term-disk-full-at-step:", "term-bug-at-step:")):
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _fail_to_write("stopped", full if fault.startswith("term-disk-full") else None)
    elif not fault.startswith(
        ("stop-token:", "die-in-save:", "disk-full-in-save:", "kill-main-opening", "hang-at-step:", "term-")
    ):
        raise SystemExit(f"unknown fault {fault!r}")


def _die_in_save(n: int) -> None:
    """Rank 1 kills itself (SIGKILL: no handler, no cleanup) as its Nth checkpoint begins."""
    original, calls = dist_checkpoint.save_sharded_optimizer, 0

    def dying(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    dist_checkpoint.save_sharded_optimizer = dying


def _disk_full_in_save(n: int) -> None:
    """Rank 0's Nth checkpoint write raises ENOSPC, as a full disk would (the write turns it into
    its line)."""
    original, calls = checkpoint._write_checkpoint, 0

    def failing(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(*args, **kwargs)

    checkpoint._write_checkpoint = failing


def _slow_to_write(event: str, seconds: float = 1.5) -> None:
    """Rank 0 takes `seconds` to write `event` to metrics.jsonl, as on a loaded machine or a slow
    file system."""
    original = events.MetricsLog.write

    def write(self, name, *args, **kwargs):
        if name == event:
            time.sleep(seconds)
        return original(self, name, *args, **kwargs)

    events.MetricsLog.write = write


def _fail_to_write(event: str, disk_error: OSError | None) -> None:
    """Rank 0's write of `event` to metrics.jsonl fails: opening the file raises `disk_error` (as
    a full disk would: the write turns it into its line), or, if None, the write raises
    RuntimeError("planted") (a bug). The other events are written as ever."""
    original = events.MetricsLog.write

    def failing_open(*args, **kwargs):
        raise disk_error

    def write(self, name, *args, **kwargs):
        if name != event:
            return original(self, name, *args, **kwargs)
        if disk_error is None:
            raise RuntimeError("planted")
        events.open = failing_open  # found before the builtin by the module's code
        try:
            return original(self, name, *args, **kwargs)
        finally:
            del events.open

    events.MetricsLog.write = write


def _at_step(n: int, hang: bool) -> None:
    """Rank 1 sleeps through its Nth step, as a process stuck in a driver or a file system would
    (`hang`), or sends itself SIGTERM as the step begins."""
    original, calls = loop.Trainer.step, 0

    def step(self):
        nonlocal calls
        calls += 1
        if calls == n:
            if hang:
                time.sleep(3600)
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self)

    loop.Trainer.step = step


if __name__ == "__main__":
    install(sys.argv[1])
    sys.exit(cli.main(sys.argv[2:]))
