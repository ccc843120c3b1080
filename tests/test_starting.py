"""A Ctrl-C while a command is still loading (the interpreter importing cli.py's modules, then
torch) ends it at once: `interrupted`, exit status 130, nothing written (real interpreters)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

# The child interrupts itself as the import of TRIGGER begins. Python's own handler raised
# KeyboardInterrupt there, inside the import: outside cli.main's `except` (a traceback, killed by
# SIGINT), or, inside torch's loading, in Python code its C++ called, which aborted the process
# (pybind11's `terminate called after throwing`): the child aborts likewise if one reaches it.
CHILD = textwrap.dedent(
    """
    import os, runpy, signal, sys, time
    ENTRY, TRIGGER, ARGS = sys.argv[1], sys.argv[2], sys.argv[3:]

    class Interrupt:
        def find_spec(self, name, path=None, target=None):
            if name == TRIGGER:
                sys.meta_path.remove(self)
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(10)
                except KeyboardInterrupt:
                    os.abort()
            return None

    signal.signal(signal.SIGINT, signal.default_int_handler)  # as from a terminal
    sys.meta_path.insert(0, Interrupt())
    sys.argv = ["trickster", *ARGS]
    if ENTRY == "-m":  # python -m trickster, as torchrun starts its workers
        runpy.run_module("trickster", run_name="__main__", alter_sys=True)
    else:  # the `trickster` command pip writes from [project.scripts]
        from trickster.__main__ import run
        sys.exit(run())
    """
)


@pytest.fixture
def sigint_restored():
    """The test process's own SIGINT handler back after the test."""
    previous = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("entry", ["-m", "script"])
@pytest.mark.parametrize("trigger", ["argparse", "torch"])
def test_a_ctrl_c_while_the_command_loads_ends_it_at_once_in_one_line(tmp_path, entry, trigger):
    run = tmp_path / "run"
    argv = ["train", "--preset", "tiny", "--data", str(tmp_path / "data"), "--out", str(run)]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, entry, trigger, *argv], capture_output=True, text=True, timeout=60
    )
    assert (done.returncode, done.stderr) == (130, "interrupted\n")
    assert done.stdout == "" and not run.exists()


def test_the_command_itself_and_its_caller_get_python_s_handler_back(monkeypatch, tmp_path, sigint_restored):
    """Past loading, a Ctrl-C is the command's to handle (training stops after its step, a
    preparation keeps its partial folder): it must raise KeyboardInterrupt again, there and in a
    caller of cli.main in the same process."""
    from trickster import cli, commands

    # as from a terminal: a pytest-xdist worker starts with SIGINT ignored, which the command keeps
    signal.signal(signal.SIGINT, signal.default_int_handler)
    during = []
    monkeypatch.setattr(
        commands, "runs_command", lambda folder: during.append(signal.getsignal(signal.SIGINT))
    )
    assert cli.main(["runs", str(tmp_path)]) == 0
    assert during == [signal.default_int_handler]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
