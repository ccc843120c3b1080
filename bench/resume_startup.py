"""What a resume costs before it trains: the time from `trickster.train` until the Trainer is built
(checkpoint loaded and checked, run files written: Trainer.train begins), and how much of the
checkpoint it reads and sums meanwhile.

    python bench/resume_startup.py                          # midi's shape with AdamW, 3 repeats
    PYTHONPATH=OLD/src python bench/resume_startup.py       # the same with older sources
    python bench/resume_startup.py --preset mini --repeats 5 --evict --dir /fast/disk

A run of the preset's shape (AdamW, so trainer.pt holds two moments per weight) trains one step of
one short window and saves `final`; each repeat resumes a fresh copy of it for one more step. The
copy leaves the files in the page cache (`--evict` drops them first with posix_fadvise DONTNEED,
where the file system takes the advice). Measured per resume: wall seconds from train() to
Trainer.train (an evaluation the checkpoint was saved before, and the step, not counted), how many
times each checkpoint file was summed (checksums.file_sha256), and the bytes this process read
through read() (/proc/self/io rchar: the sums' reads and torch.load's; safetensors maps the
weights, which rchar does not see) and from storage (read_bytes). "unchecked" resumes with no sums
to check (checksums.recorded answering none): the floor the check adds to. "waiting for sums": the
seconds the start-up stood still for the sums (in checksums._first_different, where the sums taken
in threads are awaited: before any load in older sources, after the load since 2026-11-30). Only
functions both versions have are changed, so older sources run it too (PYTHONPATH=OLD/src).
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from trickster.config import load_config
from trickster.data import sources
from trickster.data.prepare import prepare
from trickster.train import checksums, loop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from checksum_cost import evict  # noqa: E402  (sibling script)

TEXTS = [
    ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
    ROOT / "tests" / "data" / "shakespeare_excerpt.txt",
]


def config(preset: str, data_dir: Path, out: Path, steps: int, overrides: list[str]):
    return load_config(
        preset=preset,
        overrides=[
            f"data_config.path={data_dir}",
            f"logging_config.output_dir={out}",
            "logging_config.progress_bar=false",
            "logging_config.loss_plot=false",
            "model_config.vocab_size=auto",
            "device_config.device=cpu",
            "training_config.optimizer=adamw",
            f"training_config.max_steps={steps}",
            "training_config.batch_size=1",
            "training_config.seq_len=64",
            "training_config.warmup_steps=0",
            "training_config.eval_every=1000",
            "training_config.eval_batches=1",
            "training_config.sample_every=0",
            *overrides,
        ],
    )


def io_counters() -> dict[str, int]:
    """This process's rchar (bytes through read() and the like) and read_bytes (from storage)."""
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return {key: int(fields[key]) for key in ("rchar", "read_bytes")}


class Built(Exception):
    """Raised as Trainer.train begins: the start-up is over."""


def resume_once(cfg, run: Path, pristine: Path, checked: bool, cold: bool) -> dict:
    """A fresh copy of the run resumed up to Trainer.train: seconds, sums per file, bytes read."""
    shutil.rmtree(run, ignore_errors=True)
    shutil.copytree(pristine, run)
    if cold:
        evict(run)
    sums = collections.Counter()
    real_sha256, real_recorded, real_train = checksums.file_sha256, checksums.recorded, loop.Trainer.train
    real_wait, waits = checksums._first_different, []
    checksums.file_sha256 = lambda path: sums.update([path.name]) or real_sha256(path)

    def waited(*args):
        started = time.perf_counter()
        try:
            return real_wait(*args)
        finally:
            waits.append(time.perf_counter() - started)

    checksums._first_different = waited
    if not checked:
        checksums.recorded = lambda *a, **k: {}

    def built(trainer):
        raise Built

    loop.Trainer.train = built
    before, started = io_counters(), time.perf_counter()
    try:
        loop.train(cfg, resume=True, echo=lambda *a, **k: None)
    except Built:
        pass
    finally:
        checksums.file_sha256, checksums.recorded, loop.Trainer.train = real_sha256, real_recorded, real_train
        checksums._first_different = real_wait
    seconds, after = time.perf_counter() - started, io_counters()
    read = {key: after[key] - before[key] for key in after}
    return {"seconds": seconds, "waits": sum(waits), "sums": dict(sums), **read}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="midi")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--evict", action="store_true", help="drop the checkpoint from the page cache first")
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    parser.add_argument("--text", type=Path, default=next((p for p in TEXTS if p.exists()), None))
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        data_dir, pristine, run = Path(tmp) / "data", Path(tmp) / "pristine", Path(tmp) / "run"
        prepare(sources.shakespeare(args.text), "char", data_dir, progress=False)
        result = loop.train(
            config(args.preset, data_dir, pristine, 1, args.overrides), echo=lambda *a, **k: None
        )
        final = pristine / "checkpoints" / "final"
        sizes = {
            p.name: p.stat().st_size for p in final.iterdir() if p.name in ("model.safetensors", "trainer.pt")
        }
        cfg = config(args.preset, data_dir, run, 2, args.overrides)
        rows = {True: [], False: []}
        for _ in range(args.repeats):
            for checked in (True, False):
                rows[checked].append(resume_once(cfg, run, pristine, checked, args.evict))
    mb = {name: f"{size / 1e6:,.0f} MB" for name, size in sizes.items()}
    where = "evicted" if args.evict else "in the page cache"
    print(
        f"{args.preset} (AdamW): {result.params:,} parameters; model.safetensors {mb['model.safetensors']}, "
        f"trainer.pt {mb['trainer.pt']}; torch {torch.__version__}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} threads; {where}; median of {args.repeats}"
    )
    print("resume      until built (each run)      waiting for sums   read() MB   from storage MB   sums")
    for checked in (True, False):
        runs = rows[checked]
        seconds = statistics.median(r["seconds"] for r in runs)
        rchar = statistics.median(r["rchar"] for r in runs) / 1e6
        storage = statistics.median(r["read_bytes"] for r in runs) / 1e6
        each = ", ".join(f"{t:.2f}" for t in sorted(r["seconds"] for r in runs))
        waiting = statistics.median(r["waits"] for r in runs)
        name, sums = "checked" if checked else "unchecked", runs[0]["sums"]
        print(
            f"{name:<10}  {seconds:6.2f} s ({each})  {waiting:14.2f} s  {rchar:9,.0f}   {storage:15,.0f}   "
            f"{sums}"
        )


if __name__ == "__main__":
    main()
