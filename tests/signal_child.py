"""A process inside StopSignals that runs long PyTorch calls (used by test_signals.py).

    python -m tests.signal_child PRODUCTS

It prints "busy" just before PRODUCTS matrix products of a few seconds each on one thread: while
one runs, no Python code runs in the main thread, as in a training step that takes hours. The
callbacks print what the watcher thread saw; "finished" means the process ran to its end.
"""

from __future__ import annotations

import sys

import torch

from trickster.train.signals import StopSignals

torch.set_num_threads(1)
a = torch.randn(4096, 4096)
with StopSignals(
    on_first=lambda signum: print(f"first {signum}", flush=True),
    on_second=lambda signum: print(f"second {signum}", flush=True),
) as stop:
    print("busy", flush=True)
    for _ in range(int(sys.argv[1])):
        a = torch.mm(a, a) / 64
    print(f"finished, received {stop.received}", flush=True)
