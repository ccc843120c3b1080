"""Reading a long run: peak memory and wall time of `trickster runs` and `trickster report` on a
synthetic run folder whose metrics.jsonl logs every step, each command in a fresh process.

    python bench/long_run_read.py                                 # 1,000,000 steps, this checkout
    python bench/long_run_read.py --baseline-src /tmp/old/src     # and another checkout, in turns
    python bench/long_run_read.py --steps 20000 --rounds 1 --dir /tmp/x

A baseline's src comes from `git archive`: `mkdir /tmp/old && git archive 1892aa5 src | tar -x -C
/tmp/old`. The folder is what a finished `tiny` run writes, without checkpoints: config.yaml (the
preset with --steps, `log_every: 1`, --eval-every and --sample-chars as sample_tokens) and a
metrics.jsonl with a start event, a train event per step with every field the training loop writes,
an evaluation with a --sample-chars sample at step 0, every --eval-every steps and at the last
step, and an end event. Its numbers are seeded noise around a falling curve: what the commands do
with a line does not depend on them.

Each command runs as `python -m trickster runs DIR` / `python -m trickster report DIR --out FILE`
with PYTHONPATH set to one src folder alone, started by a small launcher process of its own. Its
peak memory is its ru_maxrss as the launcher sees it (started from this benchmark, it would include
the benchmark's own peak; from one launcher for all, the largest of them so far) and its time is
from start to exit, imports included. In each round the baseline runs just before this checkout, command by
command, so that a change in the machine's load falls on both alike. The first row, on a 30-step
run, is the floor: the interpreter and its imports. Memory is steady from round to round; times
move with whatever else the machine runs (the load average is printed before and after).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START_TIME = 1764400000.0  # 2025-11-29, a fixed clock: the file is the same on every machine
TOKENS_PER_STEP = 2048  # the tiny preset's 16 x 128


def write_run(
    folder: Path, steps: int, eval_every: int = 1000, sample_chars: int = 200, seed: int = 0
) -> Path:
    """A finished run's config.yaml and metrics.jsonl in `folder` (made if missing); the metrics path."""
    from trickster.config import load_config, save_config

    folder.mkdir(parents=True, exist_ok=True)
    overrides = [
        "model_config.vocab_size=128",  # as a run saves it: resolved (Shakespeare's 65 characters, padded)
        f"training_config.max_steps={steps}",
        f"training_config.warmup_steps={min(100, steps - 1)}",  # the preset's, or fewer than the steps
        "training_config.log_every=1",
        f"training_config.eval_every={eval_every}",
        f"training_config.sample_tokens={sample_chars}",
    ]
    save_config(load_config(preset="tiny", overrides=overrides), folder / "config.yaml", by_run=True)
    rng, clock, best = random.Random(seed), START_TIME, math.inf
    sample = ("ROMEO: " + "the quick brown fox jumps over the lazy dog " * (sample_chars // 40 + 1))[
        :sample_chars
    ]
    path = folder / "metrics.jsonl"
    with open(path, "w", encoding="utf-8") as f:

        def write(event: str, step: int, **values) -> None:  # as observe/events.py MetricsLog writes
            record = {"event": event, "step": step, "time": round(clock, 3), **values}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")

        def evaluate(step: int) -> float:
            loss = 1.4 + 3 / (1 + step / 2000) + rng.gauss(0, 0.01)
            seen = step * TOKENS_PER_STEP
            write("eval", step, val_loss=loss, val_perplexity=math.exp(loss), tokens_seen=seen, sample=sample)
            return loss if step else math.inf  # the untrained evaluation is never `best`

        write(
            "start",
            0,
            params=869504,
            tokens_per_step=TOKENS_PER_STEP,
            global_batch=16,
            world_size=1,
            parallel="none",
            flops_per_token=5.6e6,
            init_from=None,
            device="cpu",
            peak_flops_per_device=2.4e11,
            peak_source="measured",
            measured_flops_per_device=2.4e11,
        )
        evaluate(0)
        for step in range(1, steps + 1):
            clock += 0.12 + rng.random() * 0.01
            ms = 120 + rng.random() * 10
            write(
                "train",
                step,
                train_loss=1.3 + 3 / (1 + step / 2000) + rng.gauss(0, 0.05),
                lr=3e-4 * (1 - step / steps),
                grad_norm=0.5 + rng.random(),
                tokens_per_sec=TOKENS_PER_STEP * 1000 / ms,
                ms_per_step=ms,
                mfu=None,
                peak_memory_gib=None,
                tokens_seen=step * TOKENS_PER_STEP,
                skipped_steps=0,
            )
            if step % eval_every == 0 or step == steps:
                best = min(best, evaluate(step))
        write("end", steps, best_val_loss=best if best < math.inf else None, skipped_steps=0)
    return path


# Runs the command and writes its wall seconds and ru_maxrss to argv[1]. A child's ru_maxrss starts
# from the peak of the process that spawned it (Linux keeps it across fork/vfork and exec), so the
# command is spawned from this small interpreter, not from the benchmark (or a test that holds torch).
LAUNCHER = """
import resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.call(sys.argv[2:])
seconds = time.perf_counter() - started
with open(sys.argv[1], "w") as f:
    f.write(f"{seconds} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
sys.exit(code)
"""


def measure(src: Path, argv: list[str]) -> tuple[float, int, str]:
    """Wall seconds, peak RSS in bytes and the output of `python -m trickster ARGV` run with
    PYTHONPATH=SRC alone, in a fresh process whose parent holds nothing else."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    with tempfile.TemporaryDirectory() as tmp:
        figures, out = Path(tmp) / "figures", Path(tmp) / "output"
        command = [sys.executable, "-c", LAUNCHER, str(figures), sys.executable, "-m", "trickster", *argv]
        with open(out, "wb") as f:
            done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=env)
        output = out.read_text(errors="replace")
        if done.returncode:
            raise SystemExit(
                f"trickster {' '.join(argv)} with {src} failed ({done.returncode}):\n{output[-2000:]}"
            )
        seconds, peak = figures.read_text().split()
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
    return float(seconds), int(peak) * scale, output


def describe(src: Path) -> str:
    try:
        sha = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"{src} (not in a git checkout)"
    dirty = subprocess.run(
        ["git", "-C", str(src), "status", "--porcelain", "--", "."], capture_output=True, text=True
    )
    return f"{src} (git {sha}{', uncommitted changes' if dirty.stdout.strip() else ''})"


def one_round(label: str, run: Path, sources: dict[str, Path], pages: Path) -> tuple[list[str], dict]:
    """The table's cells for one round, and what each command printed or wrote."""
    cells, outputs = [label], {}
    for command in ("runs", "report"):
        for name, src in sources.items():
            page = pages / f"{name}.html"
            argv = ["runs", str(run)] if command == "runs" else ["report", str(run), "--out", str(page)]
            seconds, peak, output = measure(src, argv)
            cells.append(f"{seconds:.1f} s, {peak / 2**20:,.0f} MiB")
            outputs[command, name] = output if command == "runs" else page.stat().st_size
    return cells, outputs


def print_row(cells: list[str]) -> None:
    print(f"{cells[0]:<11}" + "".join(f" {c:>19}" for c in cells[1:]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1_000_000, help="train events, one per step")
    parser.add_argument("--eval-every", type=int, default=1000, help="steps between evaluations")
    parser.add_argument(
        "--sample-chars", type=int, default=200, help="characters of each evaluation's sample"
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline-src", type=Path, help="another checkout's src folder, measured in turns")
    parser.add_argument("--dir", type=Path, help="where to write the run (default: a temporary folder)")
    args = parser.parse_args()
    sources = {}
    if args.baseline_src:
        if not (args.baseline_src / "trickster" / "__main__.py").is_file():
            sys.exit(
                f"error: {args.baseline_src} holds no trickster package; pass the src folder of a checkout"
            )
        sources["baseline"] = args.baseline_src.resolve()
    sources["this"] = ROOT / "src"

    root = Path(tempfile.mkdtemp(prefix="long-run-read-", dir=args.dir))
    try:
        started = time.perf_counter()
        metrics = write_run(root / "long", args.steps, args.eval_every, args.sample_chars)
        written = time.perf_counter() - started
        lines = sum(1 for _ in open(metrics, "rb"))
        write_run(root / "floor", 30, 10, args.sample_chars)
        print(
            f"metrics.jsonl: {args.steps:,} train steps, an evaluation every {args.eval_every:,} with a "
            f"{args.sample_chars}-character sample: {lines:,} lines, {metrics.stat().st_size / 1e6:,.1f} MB "
            f"(written in {written:.0f} s)"
        )
        print(f"Python {platform.python_version()}, {platform.platform()}, {os.cpu_count()} CPUs")
        for name, src in sources.items():
            print(f"{name}: {describe(src)}")
        when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        print(f"{when}, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        header = ["round (UTC)"] + [f"{c} {n}" for c in ("runs", "report") for n in sources]
        print_row(header)
        print_row(one_round("floor", root / "floor", sources, root)[0])
        for _ in range(args.rounds):
            cells, outputs = one_round(time.strftime("%H:%M", time.gmtime()), root / "long", sources, root)
            print_row(cells)
        print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print("report page: " + ", ".join(f"{n} {outputs['report', n] / 1e3:,.0f} KB" for n in sources))
        if "baseline" in sources:
            same = outputs["runs", "baseline"] == outputs["runs", "this"]
            print(f"trickster runs prints the same with both: {'yes' if same else 'no'}")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
