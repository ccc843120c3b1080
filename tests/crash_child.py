"""Run `trickster ...` in this process and SIGKILL (or stop) it at a chosen moment (used by test_resume.py,
test_long_runs.py, test_hf.py, test_data.py; the hold moments through children.held, by test_gguf.py too).

    python -m tests.crash_child MOMENT N train --config run.yaml

MOMENT, counted from 1 with N:
    before-batch          just before the N-th micro-batch is drawn (the loop draws each one while
                          the step before it still runs: inside a step, before its update)
    during-eval           inside the N-th evaluation, after its first batch
    before-hellaswag      as the N-th HellaSwag scoring during training starts
    after-hellaswag       just after the N-th HellaSwag scoring during training wrote its event
    during-trainer-write  half-way through writing the N-th trainer.pt of a checkpoint
    during-background-write
                          half-way through the N-th trainer.pt written by a thread other than the
                          main one (training_config.async_save), once the training thread has
                          drawn a batch since it handed that checkpoint over (exit status 3 if it
                          never does)
    before-prune          the N-th time keep_last's rotation is about to delete older checkpoints
                          (the numbered one just saved is in place)
    during-best-replace   the N-th time `best` is replaced: after the old folder is moved aside,
                          before the new one takes its name
    during-write-of-NAME  half-way through the N-th write of a whole file whose name holds NAME
                          (config.yaml, manifest.json, metrics.csv, metrics.jsonl: the rewrite of
                          a resume; or its temporary name)
    before-staged-rename  the N-th time a staging folder (`.NAME.tmp-PID`, or a preparation's
                          `NAME.partial`) is about to take its name NAME

and moments at which it stops instead, until the test lets it go on: it writes the file named by
the environment variable TRICKSTER_TEST_HOLD when it gets there and waits until that file is gone
(meanwhile the test runs a second command):
    hold-before-gguf-tensors   before the N-th GGUF export writes its tensors
    hold-after-progress-save   after the N-th save of a preparation's progress.json

SIGKILL cannot be caught: nothing in the process gets to clean up, as with an OOM kill or a
power cut. The faults are injected here, in the test, so the product code carries no hooks.
"""

from __future__ import annotations

import builtins
import io
import os
import pathlib
import signal
import sys
import time

import torch

from trickster import cli
from trickster.data import loader
from trickster.train import loop as train_module


def die() -> None:
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def write_half_then_die(save, obj, f, *args, **kwargs) -> None:
    """The first half of what torch.save (`save`) writes of `obj` into `f`, then SIGKILL."""
    buffer = io.BytesIO()
    save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    if isinstance(f, str | os.PathLike):
        f = open(f, "wb")
    f.write(data[: len(data) // 2])  # the file checkpoint.py opened, or the one opened here
    f.flush()
    die()


def on_nth_call(n: int):
    count = 0

    def due() -> bool:
        nonlocal count
        count += 1
        return count == n

    return due


def install(moment: str, n: int) -> None:
    due = on_nth_call(n)
    if moment == "before-batch":
        next_rows = loader.BatchSampler.next_rows

        def patched_next_rows(self, *args, **kwargs):
            if due():
                die()
            return next_rows(self, *args, **kwargs)

        loader.BatchSampler.next_rows = patched_next_rows
    elif moment == "during-eval":
        evaluate = train_module.evaluate

        def patched_evaluate(model, batches, *args):
            if due():
                evaluate(model, batches[:1], *args)
                die()
            return evaluate(model, batches, *args)

        train_module.evaluate = patched_evaluate
    elif moment in ("before-hellaswag", "after-hellaswag"):
        from trickster.train import hellaswag_eval

        score = hellaswag_eval.score

        def patched_score(trainer):
            if moment == "before-hellaswag" and due():
                die()
            score(trainer)
            if moment == "after-hellaswag" and due():
                die()

        hellaswag_eval.score = patched_score
    elif moment == "during-trainer-write":
        save = torch.save

        def patched_save(obj, f, *args, **kwargs):
            if due():
                write_half_then_die(save, obj, f, *args, **kwargs)
            return save(obj, f, *args, **kwargs)

        torch.save = patched_save
    elif moment == "during-background-write":
        install_background_kill(due)
    elif moment == "before-prune":
        from trickster import run_checkpoints

        prune = run_checkpoints.prune

        def patched_prune(*args, **kwargs):
            if due():
                die()
            return prune(*args, **kwargs)

        run_checkpoints.prune = patched_prune
    elif moment == "during-best-replace":
        rename = pathlib.Path.rename

        def patched_rename(self, target):
            # replace_dir's second rename: staging folder -> `best`, once the old one is aside
            if self.name.startswith(".best.tmp-") and pathlib.Path(target).name == "best":
                if any(p.name.startswith(".best.old-") for p in self.parent.iterdir()) and due():
                    die()
            return rename(self, target)

        pathlib.Path.rename = patched_rename
    elif moment.startswith("during-write-of-"):
        name, real_open = moment.removeprefix("during-write-of-"), io.open

        def patched_open(file, mode="r", *args, **kwargs):
            f = real_open(file, mode, *args, **kwargs)
            if "w" in mode and name in os.path.basename(os.fspath(file)) and due():
                return HalfWriter(f)
            return f

        io.open = builtins.open = patched_open  # pathlib opens through io.open
    elif moment == "before-staged-rename":
        rename = pathlib.Path.rename

        def patched_rename(self, target):
            name = pathlib.Path(target).name
            staged = self.name.startswith(f".{name}.tmp-") or self.name == f"{name}.partial"
            if staged and self.is_dir() and due():
                die()
            return rename(self, target)

        pathlib.Path.rename = patched_rename
    elif moment == "hold-before-gguf-tensors":
        import gguf

        write = gguf.GGUFWriter.write_tensors_to_file

        def patched_write(self, *args, **kwargs):
            if due():
                hold()
            return write(self, *args, **kwargs)

        gguf.GGUFWriter.write_tensors_to_file = patched_write
    elif moment == "hold-after-progress-save":
        from trickster.data import shards

        save = shards.Progress.save

        def patched_save(self, folder):
            save(self, folder)
            if due():
                hold()

        shards.Progress.save = patched_save
    else:
        raise SystemExit(f"unknown moment {moment!r}")


def install_background_kill(due) -> None:
    """during-background-write: the writer thread waits until the training thread has drawn a batch
    since it handed over that checkpoint (a write on the training thread would wait forever: exit
    status 3 after 60 s). Counted from the hand-over, not from the write's start: on a busy machine
    the training thread drew the next step's batch before the writer reached trainer.pt, then
    waited for that write at its next save, and drew nothing more (exit status 3 on a clean clone)."""
    import threading

    from trickster.train import async_save

    save, next_rows, write = torch.save, loader.BatchSampler.next_rows, async_save.Writer.write
    drawn = threading.Condition()
    draws, handed_at, written = [0], [], []  # batches drawn; draws at each hand-over; writes begun

    def patched_next_rows(self, *args, **kwargs):
        with drawn:
            draws[0] += 1
            drawn.notify_all()
        return next_rows(self, *args, **kwargs)

    def patched_write(self, target, parts, reuse, background, shards):
        if background:
            handed_at.append(draws[0])
        return write(self, target, parts, reuse, background, shards)

    def patched_save(obj, f, *args, **kwargs):
        if threading.current_thread() is threading.main_thread():
            return save(obj, f, *args, **kwargs)
        written.append(obj)  # the writer thread writes one trainer.pt a checkpoint, in hand-over order
        if not due():
            return save(obj, f, *args, **kwargs)
        with drawn:
            if not drawn.wait_for(lambda: draws[0] > handed_at[len(written) - 1], timeout=60):
                os._exit(3)
        write_half_then_die(save, obj, f, *args, **kwargs)

    loader.BatchSampler.next_rows = patched_next_rows
    async_save.Writer.write = patched_write
    torch.save = patched_save


def hold() -> None:
    """Say so in the file TRICKSTER_TEST_HOLD, and wait until the test deletes it."""
    flag = pathlib.Path(os.environ["TRICKSTER_TEST_HOLD"])
    flag.write_text(str(os.getpid()))
    while flag.exists():
        time.sleep(0.02)


class HalfWriter:
    """A file opened for writing whose first write stops half-way: the process dies there."""

    def __init__(self, f):
        self.f = f

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def write(self, data):
        self.f.write(data[: len(data) // 2])
        self.f.flush()
        os.fsync(self.f.fileno())
        die()


if __name__ == "__main__":
    install(sys.argv[1], int(sys.argv[2]))
    sys.exit(cli.main(sys.argv[3:]))
