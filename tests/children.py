"""`python -m MODULE ARGS...` as a child process that the tests can signal or kill, started without
the two seconds a fresh interpreter spends importing torch and trickster on a 2-core machine.

The children are forked from a server that imported them once (multiprocessing's forkserver, one
per test worker; nothing else runs in it, so no test's state leaks into a child). A child then
runs MODULE as `__main__`, as `python -m` does, with its own stdout and stderr pipes, its exit
status as a return code (`-9` when SIGKILL ended it, like subprocess) and the default signal
handlers. The tests about the interpreter's own start (exit status 2 without a traceback, torchrun,
`trickster serve`) still start real interpreters.

`job` starts the processes of a distributed job the same way, with the variables torchrun gives
its workers, for the tests that are about the job rather than about torchrun.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.reduction
import os
import runpy
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).parent.parent
# what the children import: torch's compiler is imported by every optimizer step
PRELOAD = ["torch", "torch._dynamo", "trickster.cli"]

_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(PRELOAD)


def _main(module: str, args: list[str], cwd: str, env: dict[str, str], stdout, stderr) -> None:
    # as from a terminal, whatever the suite was started under: a test process started by nohup or
    # in the background without job control ignores SIGHUP or SIGINT, and its children inherit that
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.chdir(cwd)
    os.environ.update(env)
    for fd, pipe in ((1, stdout), (2, stderr)):
        os.dup2(pipe.detach(), fd)
    sys.stdout = open(1, "w", closefd=False)  # block-buffered, as a piped interpreter's is
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # line-buffered, as ever
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


class Child:
    """The part of subprocess.Popen the tests use, for a forked child."""

    def __init__(self, module: str, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None):
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        pipes = (multiprocessing.reduction.DupFd(out_w), multiprocessing.reduction.DupFd(err_w))
        self._process = _context.Process(target=_main, args=(module, list(args), str(cwd), env or {}, *pipes))
        try:
            self._process.start()
        finally:
            os.close(out_w)
            os.close(err_w)
        self.pid = self._process.pid
        self.stdout = open(out_r)
        self.stderr = open(err_r)

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self.returncode

    def send_signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def kill(self) -> None:
        self._process.kill()

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.returncode is None:
            raise subprocess.TimeoutExpired(self._process.name, timeout)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """Everything left on stdout and stderr once the child has ended."""
        self.start_reading()
        self.wait(timeout)
        return self.output(timeout)

    def start_reading(self) -> None:
        """Read stdout and stderr to their ends in two threads (a full pipe would stop the child)."""
        self._texts = {}

        def read(name):
            stream = getattr(self, name)
            self._texts[name] = stream.read()
            stream.close()

        self._readers = [threading.Thread(target=read, args=(n,), daemon=True) for n in ("stdout", "stderr")]
        for reader in self._readers:
            reader.start()

    def output(self, timeout: float | None = None) -> tuple[str, str]:
        """What start_reading read, once the child has ended: (stdout, stderr)."""
        for reader in self._readers:
            reader.join(timeout)
        return self._texts.get("stdout", ""), self._texts.get("stderr", "")


def run(module: str, *args: str, timeout: float = 300, **options) -> subprocess.CompletedProcess:
    """Run the child to its end, like subprocess.run(..., capture_output=True, text=True)."""
    child = Child(module, *args, **options)
    try:
        out, err = child.communicate(timeout)
    finally:
        if child.returncode is None:
            child.kill()
    return subprocess.CompletedProcess([module, *args], child.returncode, out, err)


def job(
    module: str, *args: str, processes: int = 2, timeout: float = 300, end_others: bool = True
) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node PROCESSES -m MODULE ARGS`, without torchrun: forked
    children with the environment it gives each worker for `env://` (RANK, LOCAL_RANK, WORLD_SIZE,
    LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). When one ends with an error the others are
    killed, as torchrun kills them; with `end_others=False` each runs to its own end (or to
    `timeout`), as the processes of another node would, whose torchrun sees only its own. The
    return code is the first error's (0 if none). stdout and stderr are the ranks' own, one after
    the other, as torchrun's interleave them."""
    from trickster.train.dist import _free_port

    port, size = str(_free_port()), str(processes)
    workers = []
    for rank in range(processes):
        env = {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": size, "LOCAL_WORLD_SIZE": size}
        workers.append(Child(module, *args, env={**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}))
    for worker in workers:
        worker.start_reading()
    deadline, failed = time.monotonic() + timeout, None
    while any(w.poll() is None for w in workers) and time.monotonic() < deadline:
        if failed is None:
            failed = next((w.returncode for w in workers if w.poll() not in (None, 0)), None)
        if failed is not None and end_others:
            break
        time.sleep(0.05)
    for worker in workers:
        if worker.poll() is None:  # after another's error, or past the deadline
            worker.kill()
        worker.wait(10)
    if failed is None:
        failed = next((w.returncode for w in workers if w.returncode != 0), 0)
    outputs = [worker.output(10) for worker in workers]
    out, err = ("".join(texts) for texts in zip(*outputs, strict=True))
    return subprocess.CompletedProcess([module, *args], failed, out, err)


@contextlib.contextmanager
def held(moment: str, n: int, argv: list[str], hold: Path, timeout: float = 120):
    """`trickster ARGV` under tests/crash_child.py, stopped at the N-th MOMENT (a hold-... one):
    the block runs while it waits there (its output read meanwhile), and it goes on after."""
    child = Child("tests.crash_child", moment, str(n), *argv, env={"TRICKSTER_TEST_HOLD": str(hold)})
    child.start_reading()
    deadline = time.monotonic() + timeout
    while not hold.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert hold.exists(), child.output(5)
    try:
        yield child
    finally:
        hold.unlink()
