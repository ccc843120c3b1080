"""Running and watching `trickster` processes for the steps of scripts/gpu_check.py: a step's
Context and Result, the commands it runs (and kills, as a crashed machine), the processes it
leaves, and the figures read back from a run's metrics.jsonl and checkpoints."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class StepFailed(Exception):
    """A step's check did not hold; the message says which."""


@dataclass
class Result:
    step: str
    status: str = "PASS"  # PASS | FAIL | SKIP
    val_loss: float | None = None
    tokens_per_sec: float | None = None
    mfu: float | None = None  # against the datasheet peak where the GPU is in the table
    peak_gib: float | None = None
    save_s: float | None = None
    load_s: float | None = None
    seconds: float | None = None  # how long the step took
    notes: list[str] = field(default_factory=list)


@dataclass
class Context:
    work: Path  # runs, data and logs of this check
    data: Path  # Tiny Shakespeare (or the tests' excerpt), prepared with the char tokenizer
    dry_run: bool  # toy sizes on the CPU
    runs: dict = field(default_factory=dict)  # step -> run folder, for the steps that follow
    text: Path | None = None  # the corpus `data` was prepared from (nanoGPT prepares its own)
    nanogpt: Path | None = None  # a nanoGPT checkout, for the `nanogpt` step
    out: Path | None = None  # --out: what comes back from a lent GPU (the steps' profiles too)
    deadline: float | None = None  # time.monotonic() at which the running step is stopped

    def seconds_left(self) -> float | None:
        """What the running step has left before its cap or the time limit stops it."""
        return None if self.deadline is None else self.deadline - time.monotonic()

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def trained_run(self, *steps: str) -> Path | None:
        """The run of the first of `steps` that trained one: in this command, or in an earlier one
        with the same --work (a later call on the same GPU machine), whose final checkpoint is
        complete."""
        for step in steps:
            run = self.runs.get(step) or self.work / step
            if (run / "checkpoints" / "final" / "COMPLETE").is_file():
                return run
        return None

    def require_gpu(self, step: str) -> None:
        import torch

        if not self.dry_run and not torch.cuda.is_available():
            raise StepFailed(f"{step} needs a CUDA GPU and none is visible")


# --------------------------------------------------------------------------- running commands


def command_and_env(ctx: Context, argv: tuple[str, ...], torchrun: bool) -> tuple[list[str], dict]:
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"] if torchrun else []
    command = [sys.executable, *launcher, "-m", "trickster", *argv]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    if ctx.dry_run:
        env["OMP_NUM_THREADS"] = "1"
    return command, env


def trickster(ctx: Context, name: str, *argv: str, torchrun: bool = False, timeout: int = 600) -> str:
    """Run `python -m trickster ARGV` (under torchrun with one process if asked); its output is
    kept in WORK/NAME.log. Fails the step on a non-zero exit."""
    command, env = command_and_env(ctx, argv, torchrun)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ctx.work, env=env, capture_output=True, text=True, timeout=timeout)
    log = ctx.work / f"{name}.log"
    log.write_text(f"$ {' '.join(command)}\n{done.stdout}\n{done.stderr}")
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
        took = time.perf_counter() - started
        raise StepFailed(
            f"`trickster {argv[0]}` exited {done.returncode} after {took:.0f} s: {last[:200]} (see {log})"
        )
    return done.stdout


def killed_when(ctx: Context, name: str, ready: Path, *argv: str, timeout: int = 600) -> None:
    """Run `trickster ARGV` under torchrun and SIGKILL the launcher and its worker together, as a
    crashed machine, as soon as the file `ready` exists."""
    command, env = command_and_env(ctx, argv, torchrun=True)
    with open(ctx.work / f"{name}.log", "w") as log:
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        job = subprocess.Popen(command, cwd=ctx.work, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while job.poll() is None and time.monotonic() < deadline:
            if ready.exists():
                kill_tree(job.pid)
                job.wait()
                return
            time.sleep(0.02)
        if job.poll() is None:
            kill_tree(job.pid)
    raise StepFailed(f"`trickster {argv[0]}` ended or timed out before {ready} was written (see {name}.log)")


def kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun puts each worker in a session of its
    own, so killing the launcher's process group would leave the workers running). Linux."""
    found, todo, by_parent = [], [pid], children_by_parent()
    while todo:
        parent = todo.pop()
        found.append(parent)
        todo += by_parent.get(parent, [])
    for process in found:
        try:
            os.kill(process, signal.SIGKILL)
        except ProcessLookupError:
            pass


def children() -> set[int]:
    """The processes this one started that still run."""
    return set(children_by_parent().get(os.getpid(), []))


def children_by_parent() -> dict[int, list[int]]:
    """Every running process by its parent, from /proc/PID/stat, which every Linux has, and
    gVisor (the runtime of some GPU machines) too; /proc/PID/task/TID/children needs a kernel built
    with CONFIG_PROC_CHILDREN, and came late to gVisor."""
    by_parent: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # after "PID (command name)"
        except (OSError, IndexError):  # the process ended meanwhile
            continue
        by_parent.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return by_parent


def drop_checkpoints(*runs: Path) -> None:
    """Delete runs' checkpoints once a step has what it needs of them: `mega`'s take 15 GB each,
    and the GPU machine has 64 GiB of disk for all the steps."""
    for run in runs:
        shutil.rmtree(run / "checkpoints", ignore_errors=True)


def events(run: Path, kind: str | None = None) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise StepFailed(f"{path} was not written")
    from trickster.observe.events import read_metrics

    return [r for r in read_metrics(path) if kind is None or r["event"] == kind]


def check(condition: bool, message: str) -> None:
    if not condition:
        raise StepFailed(message)


def training_figures(result: Result, run: Path, skip: int = 1) -> None:
    """Fill the table's training columns from a run's metrics.jsonl (the first `skip` train
    records are warm-up and compilation). A run on a GPU of the datasheet table must log an MFU
    against that datasheet for every record, each within (0, 100%]: None there would say the run
    beat the datasheet (device.utilisation), whose ceiling is not timed again off a CPU."""
    train = events(run, "train")
    steady = train[skip:] or train
    result.tokens_per_sec = statistics.median(r["tokens_per_sec"] for r in steady)
    mfus = [r["mfu"] for r in steady if r.get("mfu") is not None]
    result.mfu = statistics.median(mfus) if mfus else None
    memory = [r["peak_memory_gib"] for r in train if r.get("peak_memory_gib") is not None]
    result.peak_gib = max(memory) if memory else None
    losses = [r["val_loss"] for r in events(run, "eval") if r.get("val_loss") is not None]
    result.val_loss = losses[-1] if losses else None
    start = events(run, "start")
    source = start[0].get("peak_source") if start else None
    if source:
        result.notes.append(f"MFU against {source}")
    if start and str(start[0].get("device", "")).startswith("cuda") and str(source).startswith("datasheet"):
        check(
            len(mfus) == len(steady) and all(0 < m <= 1 for m in mfus),
            f"MFU against {source} missing or out of (0, 100%] in {len(steady) - len(mfus)} of "
            f"{len(steady)} train records: {mfus[:5]}",
        )
        result.notes.append("MFU PASS: every record within (0, 100%] of the datasheet")


def save_and_load_times(result: Result, run: Path, device: str) -> None:
    """load_s: `load_checkpoint` of the final weights onto the device; save_s: the run's own
    saves at its last step (best and final), from the times of its events."""
    import torch

    from trickster.train import checkpoint_load

    started = time.perf_counter()
    loaded = checkpoint_load.load_checkpoint(run / "checkpoints" / "final", device)
    if device == "cuda":
        torch.cuda.synchronize()
    result.load_s = time.perf_counter() - started
    del loaded
    if device == "cuda":  # give the memory back for the steps after this one (their own processes)
        torch.cuda.empty_cache()
    last_eval, end = events(run, "eval")[-1], events(run, "end")
    if end:
        result.save_s = end[0]["time"] - last_eval["time"]


def load_script(folder: Path, name: str):
    """A script of bench/ or scripts/ as a module (neither folder is a package)."""
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))  # for the scripts' own sibling imports
    spec = importlib.util.spec_from_file_location(f"{folder.name}_{name}", folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
