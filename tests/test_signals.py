"""SIGINT/SIGTERM: the first asks the run to stop after its step, a second ends the process at once
even while one long PyTorch call runs (real processes, real signals)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import trickster
from trickster import run_checkpoints
from trickster.config import save_config
from trickster.observe.runs import find_runs
from trickster.train.loop import train
from trickster.train.signals import REPEAT_WINDOW_S

from . import children
from .conftest import QUIET, micro_config


def start_child(products: int) -> children.Child:
    child = children.Child("tests.signal_child", "products", str(products))
    assert child.stdout.readline().strip() == "busy"
    time.sleep(0.3)  # inside the first matrix product
    return child


def training_child(shakespeare_dir, tmp_path, save_every: int):
    """(its config, a child training a micro model for 50 steps, busy in its step 3)."""
    training = {"max_steps": 50, "save_every": save_every, "eval_every": 100, "sample_tokens": 0}
    cfg = micro_config(shakespeare_dir, tmp_path / "run", training_config=training)
    save_config(cfg, tmp_path / "run.yaml")
    argv = ["train", "3", "train", "--config", str(tmp_path / "run.yaml")]
    child = children.Child("tests.signal_child", *argv)
    while (line := child.stdout.readline()) and line.strip() != "busy":  # the header, then step 3
        pass
    return cfg, child


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_second_signal_ends_the_process_in_the_middle_of_a_pytorch_call(sig):
    # products of about 0.8 s each on an idle core: 3 ended within the repeat window's 2 s wait
    # (0.3 s in), and the second signal found no process; the second signal ends these 8 early
    child = start_child(products=8)
    child.send_signal(sig)
    assert child.stdout.readline().strip() == f"first {sig.value}"  # seen while the product runs
    time.sleep(REPEAT_WINDOW_S)  # a second one sooner is taken as the same (a scheduler's and torchrun's)
    sent = time.monotonic()
    child.send_signal(sig)
    out, err = child.communicate(timeout=60)
    assert time.monotonic() - sent < 2.0
    assert out.strip() == f"second {sig.value}", (out, err)  # never "finished"
    assert child.returncode == 128 + sig.value  # as a shell reports a process killed by `sig`


@pytest.mark.slow
def test_one_signal_lets_the_work_finish():
    child = start_child(products=1)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=120)
    assert out.splitlines() == [f"first {signal.SIGTERM.value}", f"finished, received {signal.SIGTERM.value}"]
    assert child.returncode == 0, err


@pytest.mark.slow
def test_a_second_ctrl_c_ends_a_run_stuck_in_a_long_step(shakespeare_dir, tmp_path):
    cfg, child = training_child(shakespeare_dir, tmp_path, save_every=2)
    time.sleep(0.3)
    child.send_signal(signal.SIGINT)
    assert child.stderr.readline().startswith("SIGINT received: stopping after this step and saving")
    time.sleep(REPEAT_WINDOW_S)
    sent = time.monotonic()
    child.send_signal(signal.SIGINT)
    out, err = child.communicate(timeout=60)
    assert time.monotonic() - sent < 2.0
    assert child.returncode == 130
    assert "second SIGINT: stopped at once; checkpoints/step_000002 is the newest checkpoint" in err
    run = tmp_path / "run"
    assert f"continue with: trickster train --config {run / 'config.yaml'} --resume" in err, err
    assert run_checkpoints.latest(run) == run / "checkpoints" / "step_000002"
    # its heartbeat said `running` to the end, so the table read the stop as a process that died
    assert find_runs(tmp_path)[0].status == "stopped (second SIGINT, stopped at once)"
    cfg.training.max_steps = 4
    resumed = train(cfg, resume=True, **QUIET)  # the newest checkpoint is whole
    assert resumed.state.step == 4 and run_checkpoints.checkpoint_step(run / "checkpoints" / "final") == 4


def test_a_signal_sent_to_every_process_of_a_job_still_saves(shakespeare_dir, tmp_path):
    """SLURM (scancel, preemption) signals every process of a job step: a torchrun worker gets
    SIGTERM from it and again from torchrun, which forwards its own, within milliseconds. Taken as
    a second signal, it ended the worker at once, with no checkpoint of the steps since the last."""
    _, child = training_child(shakespeare_dir, tmp_path, save_every=100)
    child.send_signal(signal.SIGTERM)  # the scheduler's
    assert child.stderr.readline().startswith("SIGTERM received: stopping after this step and saving")
    child.send_signal(signal.SIGTERM)  # torchrun's (sent together, the kernel would merge the two)
    out, err = child.communicate(timeout=120)
    assert child.returncode == 143, err
    assert err.startswith("SIGTERM again within 2 s: taken as the same request"), err
    assert "stopped by SIGTERM at step 3; saved checkpoints/step_000003" in out, out
    assert run_checkpoints.latest(tmp_path / "run") == tmp_path / "run" / "checkpoints" / "step_000003"


@pytest.mark.slow
def test_a_second_signal_before_any_checkpoint_says_a_command_that_works(shakespeare_dir, tmp_path, capsys):
    """Stopped at once before its first checkpoint, a run has nothing to resume: the line said
    'continue with: trickster train --config RUN/config.yaml --resume', which answers 'nothing to
    resume in RUN: no complete checkpoint'. The command it gives now starts the run there afresh."""
    import shlex
    import shutil

    from trickster.cli import main
    from trickster.train.signals import announce_signals

    training = {"max_steps": 2, "warmup_steps": 0, "eval_every": 2, "sample_tokens": 0}
    train(micro_config(shakespeare_dir, tmp_path / "run", training_config=training), **QUIET)
    run = tmp_path / "run"
    shutil.rmtree(run / "checkpoints")  # as a run stopped at once before it saved one leaves it
    (run / "checkpoints").mkdir()
    capsys.readouterr()
    announce_signals(run)[1](signal.SIGINT)
    err = capsys.readouterr().err
    said = "second SIGINT: stopped at once; no checkpoint was saved yet; continue with: trickster "
    assert said in err, err
    command = shlex.split(err.split("continue with: ")[1])
    assert command[:2] == ["trickster", "train"]
    assert main([*command[1:], "--no-progress"]) == 0
    assert run_checkpoints.latest(run) is not None


def test_a_second_signal_in_a_job_of_several_processes_names_torchrun(tmp_path, capsys):
    """The first signal's line names torchrun with as many processes again (one alone may not hold
    what FSDP shared over them); the second's said plain `trickster train` whatever the job."""
    from trickster.train.dist import Dist
    from trickster.train.signals import announce_signals

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    announce_signals(run, Dist(rank=0, world_size=4, local_world_size=2))[1](signal.SIGTERM)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert (
        f"continue with: torchrun --nproc-per-node 2 -m trickster train --config {run / 'config.yaml'} "
        "training_config.resume=auto (on each node, with the job's other torchrun options)"
    ) in err, err


def test_ctrl_c_stops_a_preparation_with_workers_in_one_line(tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: the tokenizing workers too, and each
    printed a KeyboardInterrupt traceback above the line that says what was kept."""
    import numpy as np

    words = np.array(["thou", "art", "the", "king", "of", "naples", "and", "milan", "hence", "away"])
    rng = np.random.default_rng(0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for n in range(24):  # about 12 MB: chunks of 1 MB keep both workers busy for a while
        (corpus / f"{n:02d}.txt").write_text(" ".join(rng.choice(words, 100_000)), encoding="utf-8")
    out = tmp_path / "data"
    argv = ["data", "prepare", "text", str(corpus), "--tokenizer", "byte", "--workers", "2",
            "--shard-tokens", "100000", "--dedup", "exact", "--out", str(out), "--no-progress"]  # fmt: skip
    first_shard = tmp_path / "data.partial" / "train" / "000000.bin"

    def start() -> subprocess.Popen:
        shutil.rmtree(out, ignore_errors=True)  # prepared whole by a try this test woke too late for
        return in_its_own_group(argv)

    err = ctrl_c_once(start, first_shard.exists, seconds=120)
    assert err.count("\n") == 1 and " kept in " in err and "finished shard" in err, err
    assert (tmp_path / "data.partial" / "progress.json").is_file()


SLOW_WORKER_START = """
import os, sys, time
if "--multiprocessing-fork" in sys.orig_argv and os.environ.get("SLOW_WORKER_MARK"):
    open(os.environ["SLOW_WORKER_MARK"] + str(os.getpid()), "w").close()
    time.sleep(4)
"""


def test_ctrl_c_while_the_workers_start_is_one_line(tmp_path):
    """A Ctrl-C that reaches a tokenizing worker before it could ignore it (still starting up,
    here held 4 s by a sitecustomize that only spawned workers run) printed the worker's
    KeyboardInterrupt traceback above the line that says what was kept."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for n in range(40):  # 2.4 MB: two chunks' worth, or one worker would do it all
        (corpus / f"{n:02d}.txt").write_text(f"story {n}: " + "the king of naples " * 3200, encoding="utf-8")
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_WORKER_START, encoding="utf-8")
    mark = tmp_path / "started-"
    argv = ["data", "prepare", "text", str(corpus), "--tokenizer", "byte", "--workers", "2", "--out",
            str(tmp_path / "data"), "--no-progress"]  # fmt: skip

    def start() -> subprocess.Popen:
        shutil.rmtree(tmp_path / "data", ignore_errors=True)  # as in the test above
        for started in tmp_path.glob("started-*"):
            started.unlink()
        return in_its_own_group(argv, slow, SLOW_WORKER_MARK=str(mark))

    err = ctrl_c_once(start, lambda: any(tmp_path.glob("started-*")), seconds=60)
    assert len(err.splitlines()) == 1, err


def test_ctrl_c_while_the_pool_spawns_its_workers_stops_the_preparation(tmp_path):
    """Spawning a worker writes its start-up data into a pipe and, past the 64 KiB a pipe holds,
    waits for the worker to read it, once its interpreter has started (held 4 s here, as a loaded
    machine can). The preparing process ignored SIGINT all that time, so that the workers are born
    ignoring it, and a Ctrl-C then was lost: the preparation went on to its end (exit 0). The bulk
    of that data is the tokenizer (here a `char` vocabulary of 38,000 characters; a Hugging Face
    tokenizer.json is megabytes), which now goes through a file."""
    many = [*range(0x3400, 0x4DC0), *range(0x4E00, 0xA000), *range(0xAC00, 0xD7A4)]  # CJK, Hangul
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "chars.txt").write_text("".join(map(chr, many)), encoding="utf-8")
    for n in range(40):  # 2.4 MB: two chunks' worth, or one worker would do it all
        (corpus / f"{n:02d}.txt").write_text(f"story {n}: " + "the king of naples " * 3200, encoding="utf-8")
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_WORKER_START, encoding="utf-8")
    argv = ["data", "prepare", "text", str(corpus), "--tokenizer", "char", "--workers", "2", "--out",
            str(tmp_path / "data"), "--no-progress"]  # fmt: skip
    child = in_its_own_group(argv, slow, SLOW_WORKER_MARK=str(tmp_path / "started-"))
    deadline = time.monotonic() + 60
    while not any(tmp_path.glob("started-*")) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert child.poll() is None, child.communicate()
    # the spawns themselves ignore SIGINT for milliseconds (a Ctrl-C then is lost), which a loaded
    # machine stretches: waited out, but for 2 s at most, half the 4 s each spawn held it before
    settled = time.monotonic() + 2
    while ignores_sigint(child.pid) and child.poll() is None and time.monotonic() < settled:
        time.sleep(0.02)
    os.killpg(child.pid, signal.SIGINT)  # not waiting longer until it takes SIGINT, as ctrl_c_once does
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err


def in_its_own_group(argv: list[str], first_on_path: Path | None = None, **env: str) -> subprocess.Popen:
    """`python -m trickster ARGV` in a process group of its own, as a terminal starts a command
    (Ctrl-C reaches the whole group); `first_on_path` goes before the sources on PYTHONPATH."""
    source = str(Path(trickster.__file__).parent.parent)
    path = source if first_on_path is None else f"{first_on_path}{os.pathsep}{source}"
    return subprocess.Popen(
        [sys.executable, "-m", "trickster", *argv],
        env={**os.environ, "PYTHONPATH": path, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # SIGINT as a terminal leaves it: a suite started in the background by a shell without job
        # control (`cmd &`: CI, nohup) ignores it, which its children inherit through exec
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def ignores_sigint(pid: int) -> bool:
    """Whether the process has SIGINT ignored, from the SigIgn mask Linux shows in /proc."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
    return bool(ignored & (1 << (signal.SIGINT - 1)))


def _state(pid: int) -> str:
    """The process's state letter from /proc (R running, S sleeping, T stopped, Z exited)."""
    status = Path(f"/proc/{pid}/status").read_text(encoding="utf-8")
    return next(line for line in status.splitlines() if line.startswith("State:")).split()[1]


def ctrl_c_once(start: Callable[[], subprocess.Popen], ready: Callable[[], bool], seconds: float) -> str:
    """Once `ready()`, what Ctrl-C in a terminal does (SIGINT to the group) to the child `start()`
    gives; its stderr, after checking it stopped with status 130 and no traceback. It waits while
    the child ignores SIGINT: data prepare does so for the moment its pool spawns the workers
    (encode._sigint_ignored). The group is held (SIGSTOP) while ready() and that are checked and
    until the Ctrl-C is sent, so it lands where they were seen: a preparation ends about 2 s after
    its first shard at load 10, and this process, held that long on a loaded machine between its
    look and its kill, sent the Ctrl-C to one exiting (status -2 or 0, nothing said) or ended. A
    child that ended on its own before it was seen ready is started again (twice at most), after
    checking that it ended well."""
    for _ in range(3):
        child, deadline = start(), time.monotonic() + seconds
        while child.poll() is None and time.monotonic() < deadline:
            if ready() and _held_ctrl_c(child, ready):
                _, err = child.communicate(timeout=60)
                assert child.returncode == 130, err
                assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
                return err
            time.sleep(0.02)
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
            raise AssertionError(f"not ready in {seconds} s: {child.communicate()}")
        out, err = child.communicate()
        assert child.returncode == 0 and not err, (out, err)  # ended its work before it was seen ready
    raise AssertionError("the child ended its work three times before this test saw it ready")


def _held_ctrl_c(child: subprocess.Popen, ready: Callable[[], bool]) -> bool:
    """SIGINT to the group if, held still, the child is ready and takes it; whether it was sent."""
    os.killpg(child.pid, signal.SIGSTOP)
    try:
        while (state := _state(child.pid)) not in ("T", "Z"):  # the stop is delivered asynchronously
            time.sleep(0.001)
        takes = state == "T" and ready() and not ignores_sigint(child.pid)
        if takes:
            os.killpg(child.pid, signal.SIGINT)  # pending until the group runs again
        return takes
    finally:
        os.killpg(child.pid, signal.SIGCONT)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_while_the_run_starts_stops_it_in_one_line_and_leaves_nothing(
    shakespeare_dir, tmp_path, sig
):
    """SIGTERM or SIGHUP while a run was still starting (here while it chose its batch size, after
    it had claimed its folder and made checkpoints/) ended it at once, by their default: the
    folder kept `.lock` and an empty checkpoints/. Now it stops as Ctrl-C does, in one line."""
    cfg = micro_config(shakespeare_dir, tmp_path / "run", training_config={"max_steps": 4, "warmup_steps": 0})
    save_config(cfg, tmp_path / "run.yaml")
    child = children.Child(
        "tests.signal_child", "starting", "20", "train", "--config", str(tmp_path / "run.yaml")
    )
    assert child.stdout.readline().strip() == "busy"
    time.sleep(0.3)  # inside the first matrix product
    assert (tmp_path / "run" / ".lock").is_file() and (tmp_path / "run" / "checkpoints").is_dir()
    child.send_signal(sig)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 128 + sig.value, err
    assert (
        err
        == f"interrupted: {sig.name} before the first step; nothing was written; run the same command again\n"
    )
    assert not (tmp_path / "run").exists()  # this start made it: removed with its lock and checkpoints/


def test_a_signal_while_a_resume_starts_names_the_command_that_continues(shakespeare_dir, tmp_path):
    cfg = micro_config(
        shakespeare_dir,
        tmp_path / "run",
        training_config={"max_steps": 2, "warmup_steps": 0, "eval_every": 2},
    )
    train(cfg, **QUIET)
    run = tmp_path / "run"
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    child = children.Child(
        "tests.signal_child",
        "starting",
        "20",
        "train",
        "--config",
        str(run / "config.yaml"),
        "--resume",
        "training_config.max_steps=4",
    )
    assert child.stdout.readline().strip() == "busy"
    time.sleep(0.3)
    child.send_signal(signal.SIGTERM)
    out, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    assert err == (
        f"interrupted: SIGTERM before the first step; the checkpoints are as they were; continue with: "
        f"trickster train --config {run / 'config.yaml'} --resume\n"
    )
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before  # no .lock left
