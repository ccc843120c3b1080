"""Checks nano-trickster's CUDA and multi-GPU paths on one GPU, in seven steps, and prints one table.

    scripts/gpu_check.sh                          # the seven checks
    scripts/gpu_check.sh --steps probe nano       # some of them
    scripts/gpu_check.sh --cpu-dry-run            # every step at toy size on the CPU
    scripts/gpu_check.sh --steps tutorial nanogpt generate --nanogpt ../nanoGPT   # issue 14's figures
    scripts/gpu_check.sh --steps $(scripts/gpu_check.sh --order) --time-limit 540 --out OUT
                                                  # a lent GPU's attempt: the most telling first

1 probe    SDPA forward and backward restricted to the flash kernel (full and grouped-query
           attention, bf16); fused AdamW; a pinned contiguous host-to-GPU copy that does not block;
           bf16 and TF32 matmul ceilings next to the datasheet; KV-cache logits equal to a full
           forward; every collective of train/dist.py on a one-process nccl group
2 nano     `nano` in bf16 with compile, 300 steps: the loss falls; MFU, peak memory, checkpoints
3 resume   the same run continued to 350 steps, then `generate` and `eval` with --device cuda
4 gpt2     `gpt2-small` throughput in bf16, eager and compiled (bench/train_throughput.py)
5 fsdp     torchrun --nproc-per-node 1, FSDP2 on nccl, activation checkpointing, bf16, compile:
           a 2-layer model of mega's shape killed with SIGKILL at its step-20 checkpoint and
           resumed, matching an uninterrupted run; then resumed on the CPU and generated from
6 mega     the 1.1B `mega` preset for 50 steps: peak memory and step time within 15% and 30%
           of `trickster plan`'s predictions, and the time to save and load its checkpoint
7 maxbatch the largest micro-batch of `mega` at context 2048 that trains on this GPU, against
           the plan's formula

and, asked for by name, the figures of issue 14:

8 tutorial  the `nano` preset's whole schedule (10,000 steps) in bf16 with compile: wall time to
            the final checkpoint and the final validation loss
9 nanogpt   nanoGPT's own train.py (--nanogpt DIR) next to ours at GPT-2 small's shape, bf16,
            compiled, matched FLOPs per token: both FLOP rates and MFUs
10 generate `generate` with the KV cache, batch 1, bf16, next to transformers' generate on the
            exported weights (`nano` and `gpt2-small`; needs transformers)
11 serve    `trickster serve` on the GPU: concurrent completions (each prompt tokenized off the
            event loop while the model decodes on the GPU), answered alike in one batch
            (needs starlette and uvicorn)

Every step runs whatever the others did; the exit status is 1 if any step failed, 2 for a bad
command line or no GPU. It installs nothing (see docs/distributed.md for bringing pydantic).
With --out DIR, each step's result is written there as it ends (results.jsonl, summary.txt, the
logs in logs.tgz), after versions.txt at the start: a command killed later still leaves them.
The speed steps gpt2 and tutorial also write there the operators that took their time
(STEP_top_ops.txt, quoted in their notes; scripts/gpu_profile.py).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHECKS = ("probe", "nano", "resume", "gpt2", "fsdp", "mega", "maxbatch")
STEPS = (*CHECKS, "tutorial", "nanogpt", "generate", "serve")
# a lent GPU's minutes are few: the figures issues 14 and 15 ask for first, then the other checks
# (`resume` and `serve` use the tutorial's run when `nano` has not run). PLANNED_S: the seconds each
# is expected to take on an H100/H200 (estimated from the work each does; not yet measured). With
# --time-limit on a GPU, a step is not started when less than its planned time is left (the next
# that fits is), and none runs longer than CAP_S, so that one step running long leaves time to the rest
ORDER = (
    "tutorial",
    "gpt2",
    "fsdp",
    "mega",
    "maxbatch",
    "nanogpt",
    "generate",
    "resume",
    "serve",
    "probe",
    "nano",
)
PLANNED_S = {"tutorial": 150, "gpt2": 100, "fsdp": 180, "mega": 100, "maxbatch": 60, "nanogpt": 150,
             "generate": 60, "resume": 60, "serve": 30, "probe": 40, "nano": 80}  # fmt: skip
CAP_S = {step: 2 * seconds for step, seconds in PLANNED_S.items()}


if str(ROOT / "scripts") not in sys.path:  # run as a script it is there already
    sys.path.insert(0, str(ROOT / "scripts"))
import gpu_figures  # noqa: E402  (the siblings with the steps themselves)
import gpu_out  # noqa: E402
import gpu_runs  # noqa: E402
import gpu_serve  # noqa: E402
import gpu_steps as steps  # noqa: E402

Result, Context, StepFailed = gpu_runs.Result, gpu_runs.Context, gpu_runs.StepFailed
STEP_FUNCTIONS = {**steps.STEP_FUNCTIONS, **gpu_figures.STEP_FUNCTIONS, **gpu_serve.STEP_FUNCTIONS}
assert sorted(ORDER) == sorted(STEPS) == sorted(STEP_FUNCTIONS)


# --------------------------------------------------------------------------- the table and main


def summary_table(results: list[Result]) -> str:
    def cell(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    header = (
        f"{'step':<7} {'status':<6} {'val loss':>8} {'tokens/s':>11} {'MFU':>6} {'peak GiB':>8} "
        f"{'save s':>7} {'load s':>7} {'time s':>7}  notes"
    )
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(
            f"{r.step:<7} {r.status:<6} {cell(r.val_loss, '.3f'):>8} {cell(r.tokens_per_sec, ',.0f'):>11} "
            f"{cell(r.mfu, '.1%'):>6} {cell(r.peak_gib, '.2f'):>8} {cell(r.save_s, '.1f'):>7} "
            f"{cell(r.load_s, '.1f'):>7} {cell(r.seconds, '.0f'):>7}  {'; '.join(r.notes)}"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", nargs="+", choices=STEPS, help="the steps to run, in order (default: the seven checks)"
    )
    parser.add_argument(
        "--order", action="store_true", help="print every step, the most telling first, and exit"
    )
    parser.add_argument(
        "--cpu-dry-run", action="store_true", help="the steps (default: all) at toy size on the CPU"
    )
    parser.add_argument(
        "--work", type=Path, help="folder for the runs and logs (default: a new temporary one)"
    )
    parser.add_argument(
        "--out", type=Path, help="folder where each step's result and the logs are written as it ends"
    )
    parser.add_argument("--text", type=Path, default=next((t for t in steps.TEXTS if t.is_file()), None))
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout, for the nanogpt step")
    parser.add_argument(
        "--time-limit",
        type=float,
        metavar="SECONDS",
        help="stop the step still running after this long (its processes too) and skip the rest: "
        "the table still comes, where a killed command would print nothing; on a GPU a step is then "
        "not started with less than its planned time left, nor run for more than twice it",
    )
    args = parser.parse_args(argv)
    if args.time_limit is not None and args.time_limit <= 0:
        parser.error(f"--time-limit must be a positive number of seconds (got {args.time_limit:g})")
    if args.steps is None:
        args.steps = list(STEPS if args.cpu_dry_run else CHECKS)
    return args


class OutOfTime(BaseException):
    """Raised in the step running when --time-limit is reached; a BaseException, so that no step's
    own `except Exception` takes it for a failure of its own."""


def run_steps(
    ctx: Context,
    names: list[str],
    echo=print,
    time_limit: float | None = None,
    caps: dict[str, float] | None = None,
    out: Path | None = None,
    planned: dict[str, float] | None = None,
) -> list[Result]:
    """The steps in order, each stopped at the time limit or at its cap (caps[name] seconds), and
    not started with less than planned[name] seconds left; with `out`, each result is written
    there as the step ends (gpu_out.record)."""
    results = []
    deadline = None if time_limit is None else time.monotonic() + time_limit
    for name in names:
        left = None if deadline is None else deadline - time.monotonic()
        needs = (planned or {}).get(name)
        if left is not None and left <= 0:
            result = Result(name, "SKIP", notes=[f"not started: the time limit of {time_limit:.0f} s"])
        elif left is not None and needs is not None and needs > left:
            result = Result(name, "SKIP", notes=[f"not started: planned {needs:.0f} s, {left:.0f} s left"])
        else:
            result = run_step(ctx, name, echo, left, (caps or {}).get(name), time_limit)
        results.append(result)
        if out is not None:
            gpu_out.record(out, ctx.work, results, summary_table(results))
    return results


def run_step(ctx: Context, name: str, echo, left: float | None, cap: float | None, time_limit) -> Result:
    """One step, stopped after `left` or `cap` seconds, whichever comes first (None: never)."""
    allowed = min((t for t in (left, cap) if t is not None), default=None)
    echo(f"[gpu_check] {name} ...", flush=True)
    started = time.perf_counter()
    ctx.deadline = None if allowed is None else time.monotonic() + allowed
    timer = Alarm(allowed, spare=gpu_runs.children())
    try:
        with timer:
            result = STEP_FUNCTIONS[name](ctx)
    except OutOfTime:
        result = Result(name, "SKIP")
    except StepFailed as failed:
        result = Result(name, "FAIL", notes=[str(failed)])
    except SystemExit as exited:  # a bench script's own command-line error (sys.exit("error: ..."))
        result = Result(name, "FAIL", notes=[str(exited.code)])
    except Exception as error:  # a bug or an unexpected failure: the table still comes
        (ctx.work / f"{name}.traceback").write_text(traceback.format_exc())
        result = Result(
            name, "FAIL", notes=[f"{type(error).__name__}: {str(error)[:300]} (see {name}.traceback)"]
        )
    if timer.fired:  # whatever the step made of its killed processes
        stopped = f"its cap of {cap:.0f} s" if allowed == cap else f"the time limit of {time_limit:.0f} s"
        result = Result(name, "SKIP", notes=[f"stopped at {stopped}"])
    result.seconds = time.perf_counter() - started
    echo(f"[gpu_check] {name}: {result.status} in {result.seconds:.0f} s", flush=True)
    return result


class Alarm:
    """Stops the running step after `seconds` (None: never): kills every process started
    meanwhile with its descendants (torchrun's workers too, which killing the launcher would leave
    running; those in `spare` are not this step's), and again every half second any it starts
    after, so that its waits return and the step ends. It raises OutOfTime only when the step runs
    no process (work in this one): raised inside subprocess's waits, the exception can land between
    the acquiring of Popen's wait lock and the `try` that releases it, and the wait that
    subprocess.run then makes on its way out hangs for ever (seen under load, in a test)."""

    def __init__(self, seconds: float | None, spare: set[int]):
        self.seconds, self.spare, self.fired = seconds, spare, False

    def __enter__(self) -> Alarm:
        if self.seconds is not None:
            self.previous = signal.signal(signal.SIGALRM, self.out_of_time)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def __exit__(self, *exc) -> None:
        if self.seconds is not None:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.previous)

    def out_of_time(self, signum, frame) -> None:
        self.fired = True
        started = gpu_runs.children() - self.spare
        if not started:
            raise OutOfTime
        for pid in started:
            gpu_runs.kill_tree(pid)
        signal.setitimer(signal.ITIMER_REAL, 0.5)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.order:
        print(" ".join(ORDER))
        return 0
    import torch

    if not args.cpu_dry_run and not torch.cuda.is_available():
        print(
            "gpu_check: no CUDA GPU is visible; run it on a GPU machine, or try --cpu-dry-run",
            file=sys.stderr,
        )
        return 2
    if args.text is None or not args.text.is_file():
        print(f"gpu_check: --text {args.text} is not a file; pass a plain-text corpus", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu_check-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        versions = gpu_out.versions()
        (args.out / "versions.txt").write_text(versions)
        print(versions, end="", flush=True)
    from trickster.data import sources
    from trickster.data.dedup import DedupSettings
    from trickster.data.prepare import prepare

    data = work / "data"
    if not (data / "meta.json").is_file():  # exact copies only: one text has no copies to look for
        exact = DedupSettings(mode="exact")
        prepare(sources.shakespeare(args.text), "char", data, progress=False, dedup_settings=exact)
    device = "cpu (dry run)" if args.cpu_dry_run else torch.cuda.get_device_name()
    print(f"gpu_check on {device}, torch {torch.__version__}, runs and logs in {work}", flush=True)
    context = Context(work, data, args.cpu_dry_run, text=args.text, nanogpt=args.nanogpt, out=args.out)
    on_gpu = not args.cpu_dry_run  # the planned times and caps are a GPU's
    caps, planned = (CAP_S, PLANNED_S) if on_gpu else (None, None)
    results = run_steps(
        context, args.steps, time_limit=args.time_limit, caps=caps, out=args.out, planned=planned
    )
    print(summary_table(results))
    return 1 if any(r.status == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
