"""Where a training step's time goes: nanoGPT's model (from a checkout the user points at) and ours
at one of its shapes, one step each (forward, backward, clipping, AdamW) without a data loader or
logging around it, timed in turns and then profiled with torch.profiler. Both run with glibc
keeping freed memory (trickster.train.device.keep_freed_memory), as our training loop does on CPU.

    python bench/profile_step.py --nanogpt ../nanoGPT --shape small --threads 2

Ours runs at matched FLOPs per token (train_throughput.matched_overrides: the SwiGLU width that
costs what nanoGPT's 4x GELU MLP costs). The profile's self CPU time is split into matrix products,
attention and everything else, per step: the first two are the same kernels doing the same FLOPs on
both sides, so the third is where the two models can differ.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import nanogpt  # noqa: E402
from train_throughput import PEER_SHAPES, matched_overrides  # noqa: E402

from trickster.config import load_config  # noqa: E402
from trickster.model.flops import flops_per_token  # noqa: E402
from trickster.model.transformer import Transformer  # noqa: E402
from trickster.train.device import keep_freed_memory  # noqa: E402
from trickster.train.optim import build_optimizer  # noqa: E402

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear"}
VOCAB = 65  # Tiny Shakespeare's characters, as both sides see them


def training_step(model: torch.nn.Module, optimizer, inputs, targets) -> Callable[[], None]:
    def step() -> None:
        _, loss = model(inputs, targets)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def nanogpt_step(checkout: Path, layers, width, heads, context, batch) -> Callable[[], None]:
    sys.path.insert(0, str(checkout))
    from model import GPT, GPTConfig  # nanoGPT's own model.py

    shape = dict(n_layer=layers, n_head=heads, n_embd=width, block_size=context)
    model = GPT(GPTConfig(vocab_size=VOCAB, dropout=0.0, bias=False, **shape))
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")  # as its train.py
    return training_step(model, optimizer, *batch_of(batch, context))


def our_step(layers, width, heads, context, batch) -> tuple[Callable[[], None], int]:
    """The step, and its FLOPs per token."""
    cfg = load_config(preset="tiny", overrides=matched_overrides(layers, width, heads, context, batch))
    model = Transformer(cfg.model)
    model.init_weights()
    optimizer = build_optimizer(model, cfg.training, torch.device("cpu"))
    return training_step(model, optimizer, *batch_of(batch, context)), flops_per_token(cfg.model, context)


def batch_of(batch: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, VOCAB, (batch, context)), torch.randint(0, VOCAB, (batch, context))


def ms_per_step(step: Callable[[], None], steps: int) -> float:
    step()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return 1000 * (time.perf_counter() - started) / steps


def breakdown(step: Callable[[], None], steps: int) -> dict[str, float]:
    """Self CPU milliseconds per step: matrix products, attention, everything else, and the total."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    parts = {"matmul": 0.0, "attention": 0.0, "other": 0.0}
    for event in prof.key_averages():
        if event.key in MATMULS:
            part = "matmul"
        elif "scaled_dot_product" in event.key:
            part = "attention"
        else:
            part = "other"
        parts[part] += event.self_cpu_time_total / 1000 / steps
    parts["total"] = sum(parts.values())
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nanogpt", type=Path, required=True, help="a clone of github.com/karpathy/nanoGPT")
    parser.add_argument("--shape", choices=sorted(PEER_SHAPES), default="small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None, help="steps per timing (30 small, 3 nano)")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timings of each")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()  # for both, as every CPU run of `trickster train` does
    shape = PEER_SHAPES[args.shape]
    steps = args.steps or (30 if args.shape == "small" else 3)
    ours, our_flops = our_step(*shape)
    sides = {"nanoGPT": nanogpt_step(nanogpt.check_checkout(args.nanogpt), *shape), "ours": ours}

    times = {name: [] for name in sides}
    for repeat in range(args.repeats):
        for name in sides if repeat % 2 == 0 else reversed(sides):
            times[name].append(ms_per_step(sides[name], steps))
    parts = {name: breakdown(step, steps) for name, step in sides.items()}

    layers, width, heads, context, batch = shape
    print(f"{args.shape}: {layers} layers, {width} wide, {heads} heads, context {context}, batch {batch}")
    print(
        f"{args.threads} thread(s), median of {args.repeats} alternating timings of {steps} steps; "
        f"freed memory kept for reuse: {'yes' if kept else 'no (not glibc)'}"
    )
    columns = f"{'matmul':>7} {'attention':>9} {'other':>7} {'total':>7}"
    print(f"  {'':<10} {'ms/step':>8} {'profiled:':>10} {columns}")
    for name in sides:
        median = statistics.median(times[name])
        row = parts[name]
        print(
            f"  {name:<10} {median:>8.1f} {'':>10} {row['matmul']:>7.1f} {row['attention']:>9.1f} "
            f"{row['other']:>7.1f} {row['total']:>7.1f}"
        )
    their_flops = nanogpt.flops_per_token(layers, width, context, VOCAB)
    ratio = statistics.median(times["nanoGPT"]) / statistics.median(times["ours"]) * our_flops / their_flops
    print(f"  ours / nanoGPT in FLOP/s: {ratio:.2f}x (FLOPs per token {our_flops:,} and {their_flops:,});")
    print("  profiled columns: self CPU milliseconds per step, under the profiler")


if __name__ == "__main__":
    main()
