"""Processes that receive real signals in the middle of long PyTorch calls (test_signals.py and
test_profiling.py).

    python -m tests.signal_child products N          StopSignals around N matrix products
    python -m tests.signal_child train N ARGS...     `trickster train ARGS`, its N-th step made long
    python -m tests.signal_child profile N ARGS...   the same, and the profiler's trace export long
    python -m tests.signal_child starting N ARGS...  `trickster train ARGS`, the batch size chosen
                                                     (batch_size: auto's trial steps) long, N products

Each prints "busy" just before each long part: matrix products of a few seconds each on one
thread, during which no Python code runs in the main thread, as in a training step that takes
hours. In `products` mode the callbacks print what the watcher thread saw and "finished" means
the process ran to its end. The slow step is made here, in the test, so the product code
carries no hooks.
"""

from __future__ import annotations

import sys
import tempfile

import torch

from trickster import cli
from trickster.train import loop
from trickster.train.signals import StopSignals


def long_products(count: int) -> torch.Tensor:
    a = torch.randn(4096, 4096)
    print("busy", flush=True)
    for _ in range(count):
        a = torch.mm(a, a) / 64
    return a


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, n = sys.argv[1], int(sys.argv[2])
    if mode == "products":
        with StopSignals(
            on_first=lambda signum: print(f"first {signum}", flush=True),
            on_second=lambda signum: print(f"second {signum}", flush=True),
        ) as stop:
            long_products(n)
            print(f"finished, received {stop.received}", flush=True)
    elif mode == "starting":  # once the run folder is claimed and its checkpoints/ made
        resolve_batch = loop.resolve_batch

        def slow_resolve(*args, **kwargs):
            long_products(n)
            return resolve_batch(*args, **kwargs)

        loop.resolve_batch = slow_resolve
        sys.exit(cli.main(sys.argv[3:]))
    else:
        step, calls = loop.Trainer.step, []

        def slow_step(self):
            calls.append(1)
            if len(calls) == n:
                long_products(5)
            return step(self)

        loop.Trainer.step = slow_step
        if mode == "profile":  # long after torch has written its uncompressed trace, as a big model's
            export = torch.profiler.profile.export_chrome_trace

            def slow_export(self, path, *args, **kwargs):
                export(self, path, *args, **kwargs)
                long_products(5)

            torch.profiler.profile.export_chrome_trace = slow_export
            tempfile.tempdir = None  # read TMPDIR again: the forkserver's imports may have read it
        sys.exit(cli.main(sys.argv[3:]))
