"""Run nanoGPT's own train.py (karpathy/nanoGPT, a checkout the user points at) and read its clock.

Nothing is written into the checkout: each run gets a scratch folder holding the data
(`data/shakespeare_char/train.bin`, `val.bin`, `meta.pkl`, written here the way nanoGPT's
`data/shakespeare_char/prepare.py` writes them, from a local Tiny Shakespeare instead of a
download), a link to `configurator.py` (train.py execs it from the working directory) and the
`out_dir`. train.py and model.py run unchanged from the checkout.

Its clock starts when train.py prints the model's size (after imports and data set-up, as the
`start` event of nano-trickster's run does) and each line is stamped as it arrives.
"""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# the CPU recipe of nanoGPT's README ("baby GPT" on a MacBook), 1.88 after about 3 minutes there
CPU_RECIPE = [
    "--device=cpu",
    "--compile=False",
    "--eval_iters=20",
    "--log_interval=1",
    "--block_size=64",
    "--batch_size=12",
    "--n_layer=4",
    "--n_head=4",
    "--n_embd=128",
    "--max_iters=2000",
    "--lr_decay_iters=2000",
    "--dropout=0.0",
]
EVAL_LINE = re.compile(r"^step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
ITER_LINE = re.compile(r"^iter (\d+): loss ([\d.]+), time ([\d.]+)ms")


def check_checkout(checkout: Path) -> Path:
    missing = [n for n in ("train.py", "model.py", "configurator.py") if not (checkout / n).is_file()]
    if missing:
        sys.exit(
            f"error: {checkout} is not a nanoGPT checkout (no {', '.join(missing)}); "
            "pass the folder of a clone of github.com/karpathy/nanoGPT"
        )
    return checkout.resolve()


def prepare_data(text_path: Path, work: Path) -> int:
    """nanoGPT's shakespeare_char preparation: sorted characters, first 90% train; returns the vocab."""
    data = text_path.read_text(encoding="utf-8")
    chars = sorted(set(data))
    stoi = {ch: i for i, ch in enumerate(chars)}
    folder = work / "data" / "shakespeare_char"
    folder.mkdir(parents=True, exist_ok=True)
    n = len(data)
    for name, part in (("train", data[: int(n * 0.9)]), ("val", data[int(n * 0.9) :])):
        np.array([stoi[c] for c in part], dtype=np.uint16).tofile(folder / f"{name}.bin")
    meta = {"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}
    with open(folder / "meta.pkl", "wb") as f:
        pickle.dump(meta, f)
    return len(chars)


@dataclass
class Run:
    evals: list[tuple[float, int, float]] = field(default_factory=list)  # (seconds, step, val loss)
    iter_ms: list[float] = field(default_factory=list)  # train.py's own per-iteration time
    seconds: float = 0.0  # from its clock start to the end of the process


def run(checkout: Path, work: Path, args: list[str], threads: int) -> Run:
    """`python train.py config/train_shakespeare_char.py ARGS` in `work`, with `threads` threads."""
    link = work / "configurator.py"
    if not link.exists():
        link.symlink_to(checkout / "configurator.py")
    argv = [
        sys.executable,
        "-u",
        str(checkout / "train.py"),
        str(checkout / "config" / "train_shakespeare_char.py"),
        *args,
        f"--out_dir={work / 'out'}",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONDONTWRITEBYTECODE": "1",  # no __pycache__ in the user's checkout
    }
    result, start = Run(), None
    proc = subprocess.Popen(
        argv, cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines = []
    for line in proc.stdout:
        now = time.perf_counter()
        lines.append(line)
        if start is None and line.startswith("number of parameters"):
            start = now
        if m := EVAL_LINE.match(line):
            result.evals.append((now - (start or now), int(m[1]), float(m[3])))
        elif m := ITER_LINE.match(line):
            result.iter_ms.append(float(m[3]))
    if proc.wait() != 0 or start is None:
        sys.exit(f"error: nanoGPT's train.py failed (exit {proc.returncode}):\n" + "".join(lines[-20:]))
    result.seconds = time.perf_counter() - start
    return result


def flops_per_token(layers: int, width: int, context: int, vocab: int) -> int:
    """nanoGPT's GPT (bias-free, 4x GELU MLP, tied head) by the same PaLM estimate as
    trickster.model.flops: 6 x matmul parameters + 12 x layers x width x context."""
    matmul_params = layers * 12 * width * width + vocab * width
    return 6 * matmul_params + 12 * layers * width * context
