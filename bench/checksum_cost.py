"""What checkpoint checksums cost (train/checksums.py): SHA-256 per GB, the sums taken at a save,
and what checking them adds to loading the checkpoint (generate, serve, export) and to a resume.

    python bench/checksum_cost.py                              # gpt2-small's shape, 3 repeats
    python bench/checksum_cost.py --preset mini --repeats 5 --dir /fast/disk

A checkpoint of the preset's shape (random weights, AdamW moments in trainer.pt as one process
saves them) is written once under --dir. Each load is timed with the weights in the page cache
(`warm`: a file just written, or read before) and evicted from it first (`cold`: posix_fadvise
DONTNEED, as after a reboot or on a cache too small for the file; a file system that ignores the
advice reads warm). "checked" is load_checkpoint as the commands run it; "unchecked" the same with
no sums recorded to check (checksums.recorded answering none). The save is timed with its sums and
without them (checksums.file_sha256 answering at once), so the difference is what the sums add to
it. The median of --repeats counts. Only public functions are changed, so the script times older
sources too (PYTHONPATH=OLD/src) for a before/after.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from trickster import run_checkpoints
from trickster.config import load_config
from trickster.data.tokenizers import ByteTokenizer
from trickster.model.transformer import Transformer
from trickster.train import checkpoint as ckpt
from trickster.train import checkpoint_load, checksums
from trickster.train.resume import RESUME_READS


def both(times: tuple[float, float]) -> str:
    return f"{times[0]:6.2f} s ({times[1]:.2f} s)"


def evict(folder: Path) -> None:
    """Drop the folder's files from the page cache (where the file system takes the advice)."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def seconds(action, repeats: int, before=None, clock=time.perf_counter) -> float:
    """The median time of `action` by `clock`: wall time, or time.process_time, this process's CPU
    time, which other programs on a busy machine do not inflate."""
    times = []
    for _ in range(repeats):
        if before is not None:
            before()
        started = clock()
        action()
        times.append(clock() - started)
    return statistics.median(times)


def timed(action, repeats: int, before=None) -> tuple[float, float]:
    """The median wall time of `action` and the median CPU time of the thread that calls it: work
    handed to other threads (the sums, since 637d032) leaves the second at once, and the first too
    where a core is idle for those threads."""
    walls, cpus = [], []
    for _ in range(repeats):
        if before is not None:
            before()
        wall, cpu = time.perf_counter(), time.thread_time()
        action()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.thread_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    args = parser.parse_args()
    cfg = load_config(
        preset=args.preset, overrides=["device_config.device=cpu", "training_config.optimizer=adamw"]
    )
    if cfg.model.vocab_size == "auto":
        cfg.model.vocab_size = 256
    model = Transformer(cfg.model)
    moments = {
        name: {"exp_avg": torch.randn_like(p), "exp_avg_sq": torch.rand_like(p)}
        for name, p in model.named_parameters()
    }
    root = Path(tempfile.mkdtemp(dir=args.dir))
    real_recorded, real_sha256 = checksums.recorded, checksums.file_sha256
    try:
        final, tokenizer = root / "final", ByteTokenizer()
        saved = lambda: ckpt.save_checkpoint(  # noqa: E731
            final, model, cfg, tokenizer, {"step": 1}, {"optimizer": {"state": moments}}
        )
        fresh = lambda: shutil.rmtree(final, ignore_errors=True)  # noqa: E731 (no timing deletes the last)
        checksums.file_sha256 = lambda path: "0" * 64  # the save without its sums
        save_unsummed = timed(saved, args.repeats, before=fresh)
        checksums.file_sha256 = real_sha256
        save = timed(saved, args.repeats, before=fresh)
        weights, trainer = (
            (final / run_checkpoints.WEIGHTS).stat().st_size,
            (final / "trainer.pt").stat().st_size,
        )
        summing = timed(lambda: checksums.record(final), args.repeats)
        hash_weights = lambda clock: seconds(  # noqa: E731
            lambda: checksums.file_sha256(final / run_checkpoints.WEIGHTS), args.repeats, clock=clock
        )
        per_gb, cpu_per_gb = (
            hash_weights(clock) / (weights / 1e9) for clock in (time.perf_counter, time.process_time)
        )
        load = lambda: checkpoint_load.load_checkpoint(final)  # noqa: E731
        load()  # its first call imports what loading needs: not timed
        checked_warm = timed(load, args.repeats)
        checked_cold = seconds(load, args.repeats, before=lambda: evict(final))
        checksums.recorded = lambda *a, **k: {}  # the load without its check
        unchecked_warm = timed(load, args.repeats)
        unchecked_cold = seconds(load, args.repeats, before=lambda: evict(final))
        checksums.recorded = real_recorded
        resume_warm = timed(lambda: checksums.first_changed(final, RESUME_READS), args.repeats)
        resume_cold = seconds(
            lambda: checksums.first_changed(final, RESUME_READS), args.repeats, before=lambda: evict(final)
        )
    finally:
        checksums.recorded, checksums.file_sha256 = real_recorded, real_sha256
        shutil.rmtree(root)
    params = sum(p.numel() for p in model.parameters())
    print(
        f"{args.preset}: {params:,} parameters, model.safetensors {weights / 1e6:,.0f} MB, trainer.pt "
        f"{trainer / 1e6:,.0f} MB; torch {torch.__version__}, {os.cpu_count()} CPUs, median of {args.repeats}"
    )
    print(
        f"  SHA-256 of model.safetensors (page cache):      {per_gb:6.2f} s per GB ({cpu_per_gb:.2f} s CPU)"
    )
    print("  wall time (and CPU time of the calling thread):")
    print(f"  the save: with its sums / without them:         {both(save)} / {both(save_unsummed)}")
    print(f"  its sums alone (every file, page cache):        {both(summing)}")
    print(f"  load_checkpoint, warm: checked / unchecked:     {both(checked_warm)} / {both(unchecked_warm)}")
    print(f"  load_checkpoint, cold: checked / unchecked:     {checked_cold:6.2f} s / {unchecked_cold:.2f} s")
    print(f"  a resume's check (weights, trainer.pt) warm:    {both(resume_warm)}")
    print(f"  a resume's check (weights, trainer.pt) cold:    {resume_cold:6.2f} s")


if __name__ == "__main__":
    main()
