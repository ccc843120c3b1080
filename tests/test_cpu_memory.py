"""The memory a CPU run may use: the machine's RAM, or a cgroup's or ulimit's limit below it, as
`trickster plan`, the check before training and the out-of-memory line measure against."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from trickster import cpu_memory

GiB = 1024**3
ROOT = Path(__file__).resolve().parent.parent


def trickster_under(limit: int, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python -m trickster ARGV` in a process whose address space `ulimit -v` caps at `limit`."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))

    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "trickster", *argv]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, preexec_fn=cap, timeout=300
    )


def test_plan_measures_against_a_ulimit_below_the_ram(tmp_path):
    done = trickster_under(3 * GiB, "plan", "--preset", "tiny", "--no-bench", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "fits: 98.0 MiB of 2.70 GiB usable (90% of 3.00 GiB RAM allowed by ulimit -v)" in done.stdout


def test_a_ulimit_is_not_divided_among_the_processes_of_a_job(tmp_path):
    """The processes of a CPU job share the RAM, but a ulimit caps each of them on its own: two
    processes under `ulimit -v 3G` were each planned with 1.5 GiB ("RAM allowed by ulimit -v / 2
    processes"), and under a ulimit above their share of the RAM, with half the ulimit."""
    argv = ["plan", "--preset", "tiny", "--no-bench", "--processes", "2"]
    done = trickster_under(3 * GiB, *argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "of 2.70 GiB usable (90% of 3.00 GiB RAM allowed by ulimit -v)" in done.stdout
    ram, what = cpu_memory.machine_memory()  # RAM, or a cgroup's limit below it
    done = trickster_under(ram * 3 // 4, *argv, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"of {ram // 2 / GiB:.2f} GiB {what} / 2 processes)" in done.stdout


def test_a_step_past_the_ulimit_is_refused_before_the_run_folder_is_made(tmp_path, shakespeare_dir):
    """The tiny model's micro-batch of 2,048 windows needs about 11 GiB by the formula: within the
    RAM of the machines the tests run on, past a 3 GiB ulimit. It was let through, and the step
    ended in `out of memory (RAM of cpu, ...)`, the machine's RAM."""
    argv = ["train", "--preset", "tiny", "--data", str(shakespeare_dir), "--out", "run", "--no-progress"]
    argv += ["training_config.max_steps=2"]  # were it let through
    done = trickster_under(3 * GiB, *argv, "training_config.batch_size=2048", cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        "error: one training step does not fit in memory (RAM allowed by ulimit -v of cpu, 3.0 GiB): "
    ), done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "run").exists()


def test_a_cgroup_limit_is_read_where_the_process_is_and_above_it(tmp_path, monkeypatch):
    """cgroup v2 names the process's cgroup by its path under the root; a limit on a cgroup above
    it holds too; v1's "no limit" is a huge number and "max" says none."""
    own = tmp_path / "job.slice" / "step_0"
    own.mkdir(parents=True)
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "job.slice" / "memory.max").write_text(f"{6 * GiB}\n")
    (own / "memory.max").write_text("max\n")
    v1 = tmp_path / "memory"
    v1.mkdir()
    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    listing = tmp_path / "cgroup"
    listing.write_text("12:pids:/job.slice\n4:memory:/elsewhere\n0::/job.slice/step_0\n")
    monkeypatch.setattr(cpu_memory, "CGROUP_ROOT", tmp_path)
    monkeypatch.setattr(cpu_memory, "OWN_CGROUPS", listing)
    limits = sorted(cpu_memory.cgroup_limits())
    assert limits == [
        (6 * GiB, "RAM allowed by its cgroup (memory.max)"),
        (9223372036854771712, "RAM allowed by its cgroup (memory.limit_in_bytes)"),
    ]
    assert cpu_memory.machine_memory()[0] <= 6 * GiB  # whatever the machine's RAM
