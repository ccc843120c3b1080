"""Training throughput on this machine: ms/step, tokens/s, MFU and peak memory for presets x dtypes
x compile, through the real training loop (`trickster.train`); and, with --peer, the same
measurement for a GPT-2-style peer built to nanoGPT's recipe (bench/gpt2_peer.py) at matched
FLOPs per token, run in the same process so that the two figures compare as a ratio.

    python bench/train_throughput.py                                  # tiny and nano, CPU, float32
    python bench/train_throughput.py --presets nano --dtypes float32 bfloat16 --compile both
    python bench/train_throughput.py --device cuda --presets nano gpt2-small --dtypes bfloat16
    python bench/train_throughput.py --peer small nano                # against the peer
    python bench/train_throughput.py --nanogpt ../nanogpt --threads 1  # against nanoGPT's train.py
    python bench/train_throughput.py --nanogpt ../nanogpt --device cuda --dtypes bfloat16 --compile on

Each row of the grid trains in a fresh Python process, for --steps steps (logging every
--interval): torch.compile's caches, its recompile limit (after 8 configurations in one process
it silently runs eagerly) and its switch to dynamic shapes on a second shape, the CUDA allocator
and its peak-memory counter all start anew for every row. The first interval is discarded as
warm-up (it also holds the compilation) and the median of the rest is reported. MFU is achieved
FLOP/s (tokens/s x `trickster.model.flops.flops_per_token`) over the device's peak
(`trickster.train.device.mfu_peak`: the datasheet figure of known GPUs, else the measured matmul
ceiling); peak memory is the row's own.

The peer shapes are nanoGPT's CPU example (--peer small: 4 layers, 128 wide, 4 heads, context 64,
batch 12) and the nano preset's size (--peer nano: 6 layers, 256 wide, 8 heads, context 512,
batch 16). nano-trickster's model runs at the same width, depth, heads, context and batch, with its
SwiGLU width set so that its FLOPs per token match the peer's GELU MLP (8/3 x width) and its
vocabulary left unpadded (65), like the peer's.

With --nanogpt DIR the peer is nanoGPT's own train.py from that checkout (bench/nanogpt.py), run
at the same shapes (--peer picks them: small and nano on a CPU, gpt2 -- GPT-2 small at nanoGPT's
micro-batch of 12 x 1024 -- on a GPU by default), alternating with ours --repeats times, each in
its own process, on --device in the first of --dtypes, eager or compiled as --compile says; its
ms/step is the median of the per-iteration times it prints itself, after warm-up, and includes its
batch loading and logging, as ours includes our loop's. Pin --threads for both. On a GPU both
MFUs are FLOP/s by the same formula over the datasheet peak.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from trickster.config import load_config
from trickster.data import sources
from trickster.data.loader import load_data
from trickster.data.prepare import prepare
from trickster.model.flops import flops_per_token
from trickster.train.device import matmul_ceiling, mfu_peak
from trickster.train.loop import train

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import gpt2_peer  # noqa: E402  (sibling scripts)
import nanogpt  # noqa: E402

DEFAULT_TEXTS = [
    ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
    ROOT / "tests" / "data" / "shakespeare_excerpt.txt",
]
PEER_SHAPES = {  # layers, width, heads, context, batch
    "small": (4, 128, 4, 64, 12),
    "nano": (6, 256, 8, 512, 16),
    "gpt2": (12, 768, 12, 1024, 12),  # GPT-2 small, at nanoGPT's micro-batch (a GPU shape)
}


def measure(
    preset: str,
    data_dir: Path,
    steps: int,
    interval: int,
    overrides: list[str],
    keep_profile: Path | None = None,
) -> dict:
    """One row; with `keep_profile`, the run's profile folder (logging_config.profile_steps in
    `overrides`) is copied there before the run's temporary folder goes."""
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = load_config(
            preset=preset,
            overrides=[
                f"data_config.path={data_dir}",
                f"logging_config.output_dir={run_dir}",
                f"training_config.max_steps={steps}",
                f"training_config.log_every={interval}",
                f"training_config.eval_every={steps * 10}",
                f"training_config.save_every={steps * 10}",
                "training_config.warmup_steps=1",
                "training_config.sample_tokens=0",
                "training_config.eval_batches=1",
                "logging_config.loss_plot=false",
                *overrides,
            ],
        )
        result = train(cfg, progress=False, echo=lambda *a: None)
        intervals = [r for r in result.history if r["event"] == "train"][1:]  # read before run_dir goes
        if keep_profile is not None and (Path(run_dir) / "profile").is_dir():
            shutil.copytree(Path(run_dir) / "profile", keep_profile, dirs_exist_ok=True)
    ms = statistics.median(r["ms_per_step"] for r in intervals)
    mfu = [r["mfu"] for r in intervals if r.get("mfu") is not None]
    memory = [r["peak_memory_gib"] for r in intervals if r.get("peak_memory_gib") is not None]
    cfg = result.cfg
    tokens_per_step = cfg.training.batch_size * cfg.seq_len * cfg.training.gradient_accumulation_steps
    return {
        "params": result.params,
        "batch": f"{cfg.training.batch_size}x{cfg.seq_len}",
        "ms_per_step": ms,
        "tokens_per_sec": tokens_per_step / (ms / 1000),
        "flops_per_token": flops_per_token(cfg.model, cfg.seq_len),
        "mfu": statistics.median(mfu) if mfu else None,
        "memory": max(memory) if memory else None,
    }


def measure_in_process(
    preset: str,
    data_dir: Path,
    steps: int,
    interval: int,
    overrides: list[str],
    keep_profile: Path | None = None,
) -> dict:
    """`measure` in a fresh Python process (this script with --row): nothing carries over from
    one row to the next (see the module docstring)."""
    spec = {
        "preset": preset,
        "data": str(data_dir),
        "steps": steps,
        "interval": interval,
        "overrides": overrides,
        "keep_profile": None if keep_profile is None else str(keep_profile),
    }
    result = subprocess.run(
        [sys.executable, __file__, "--row", json.dumps(spec)], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"row {preset} {overrides} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _row(spec: str) -> None:
    """The child side of measure_in_process: one row, printed as a JSON line."""
    spec = json.loads(spec)
    keep = spec.get("keep_profile")
    row = measure(
        spec["preset"],
        Path(spec["data"]),
        spec["steps"],
        spec["interval"],
        spec["overrides"],
        keep and Path(keep),
    )
    print(json.dumps({**row, "pid": os.getpid()}))


def grid(args, data_dir: Path) -> list[dict]:
    compiles = {"off": [False], "on": [True], "both": [False, True]}[args.compile]
    print(
        f"{'preset':<11} {'dtype':<9} {'compile':<7} {'params':>12} {'batch':>8} {'ms/step':>9} "
        f"{'tokens/s':>10} {'MFU':>6} {'peak GiB':>9}"
    )
    rows = []
    for preset, dtype, compiled in itertools.product(args.presets, args.dtypes, compiles):
        steps = args.steps or (60 if preset == "tiny" else 12)
        interval = args.interval or max(1, steps // 6)
        overrides = [
            f"device_config.device={args.device}",
            f"device_config.dtype={dtype}",
            f"device_config.compile={str(compiled).lower()}",
            *([f"device_config.threads={args.threads}"] if args.threads else []),  # rows are processes
            *args.overrides,
        ]
        row = measure_in_process(preset, data_dir, steps, interval, overrides)
        rows.append(row)
        mfu = "n/a" if row["mfu"] is None else f"{row['mfu']:.0%}"
        memory = "n/a" if row["memory"] is None else f"{row['memory']:.2f}"
        print(
            f"{preset:<11} {dtype:<9} {'yes' if compiled else 'no':<7} {row['params']:>12,} "
            f"{row['batch']:>8} {row['ms_per_step']:>9.1f} {row['tokens_per_sec']:>10,.0f} {mfu:>6} "
            f"{memory:>9}"
        )
    return rows


def matched_overrides(layers: int, width: int, heads: int, context: int, batch: int) -> list[str]:
    """Our model at a GPT-2-style peer's shape, with the FLOPs per token of its GELU MLP."""
    # SwiGLU's three matrices = GELU's two at 4x width, rounded to a multiple of 16 as Llama rounds
    # its own: an odd width such as 683 runs the CPU's matmuls about 30% slower per FLOP
    mlp = 16 * round(8 * width / 3 / 16)
    return [
        "device_config.device=cpu",
        f"model_config.num_layers={layers}",
        f"model_config.hidden_dim={width}",
        f"model_config.num_heads={heads}",
        f"model_config.mlp_dim={mlp}",
        f"model_config.max_seq_len={context}",
        "model_config.vocab_size=65",
        "model_config.dropout=0.0",
        f"training_config.batch_size={batch}",
        "training_config.learning_rate=1e-3",
        "training_config.optimizer=adamw",  # as the peer: a throughput comparison, not of optimizers
    ]


def peer(args, data_dir: Path, shape: str) -> None:
    layers, width, heads, context, batch = PEER_SHAPES[shape]
    steps = args.steps or (100 if shape == "small" else 12)
    tokens = np.asarray(load_data(data_dir).train)
    peer_args = argparse.Namespace(
        layers=layers, width=width, heads=heads, context=context, batch=batch, steps=steps, lr=1e-3
    )
    times, peer_model = gpt2_peer.train_steps(tokens, peer_args, vocab=65)
    peer_ms = 1000 * statistics.median(times[max(1, steps // 6) :])
    peer_flops = gpt2_peer.flops_per_token(peer_model, layers, width, context)

    overrides = [*matched_overrides(layers, width, heads, context, batch), *args.overrides]
    peer_tok_s = batch * context / (peer_ms / 1000)
    print(f"--peer {shape}: {layers} layers, {width} wide, {heads} heads, context {context}, batch {batch}")
    print(f"  {'':<26} {'FLOPs/token':>12} {'ms/step':>9} {'tokens/s':>10} {'GFLOP/s':>8} {'vs peer':>8}")
    print(
        f"  {'gpt2 peer (eager)':<26} {peer_flops:>12,} {peer_ms:>9.1f} {peer_tok_s:>10,.0f} "
        f"{peer_tok_s * peer_flops / 1e9:>8.1f} {'1.00x':>8}"
    )
    for compiled in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
        ours = measure(
            "tiny", data_dir, steps, max(1, steps // 6), [*overrides, f"device_config.compile={compiled}"]
        )
        flops, tok_s = ours["flops_per_token"], ours["tokens_per_sec"]
        ratio = tok_s * flops / (peer_tok_s * peer_flops)  # FLOP/s at matched FLOPs per token
        name = "nano-trickster" + (" (compiled)" if compiled else " (eager)")
        print(
            f"  {name:<26} {flops:>12,} {ours['ms_per_step']:>9.1f} {tok_s:>10,.0f} "
            f"{tok_s * flops / 1e9:>8.1f} {ratio:>7.2f}x"
        )


def against_nanogpt(args, data_dir: Path, shape: str) -> list[dict]:
    """nanoGPT's own train.py at the peer shape, alternating with ours, --repeats times each, on
    --device in --dtypes[0], eager and/or compiled as --compile says (nanoGPT's own compile flag
    and ours). Prints the comparison and returns one row per compile setting."""
    layers, width, heads, context, batch = PEER_SHAPES[shape]
    on_cpu = args.device == "cpu"
    steps = args.steps or (60 if shape == "small" else 8 if on_cpu else 50)
    dtype = args.dtypes[0]
    checkout = nanogpt.check_checkout(args.nanogpt)
    work = Path(tempfile.mkdtemp(dir=data_dir.parent))
    vocab = nanogpt.prepare_data(args.text, work)
    their_flops = nanogpt.flops_per_token(layers, width, context, vocab)
    peak = None if on_cpu else mfu_peak(torch.device(args.device), dtype, measure=False).flops
    print(
        f"--nanogpt {shape}: {layers} layers, {width} wide, {heads} heads, context {context}, batch {batch}; "
        f"{args.device} {dtype}; median of {args.repeats} alternating run(s) each, {steps} steps"
    )
    print(
        f"  {'':<34} {'FLOPs/token':>12} {'ms/step':>9} {'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>6} "
        f"{'vs nanoGPT':>10}"
    )
    results = []
    for compiled in {"off": [False], "on": [True], "both": [False, True]}[args.compile]:
        their_args = [
            f"--device={args.device}",
            f"--dtype={dtype}",  # nanoGPT autocasts on a GPU only, as we do
            f"--compile={compiled}",
            "--log_interval=1",
            "--eval_iters=1",  # its one evaluation, at iteration 0, is not timed below
            f"--eval_interval={steps * 10}",
            f"--max_iters={steps}",
            f"--n_layer={layers}",
            f"--n_head={heads}",
            f"--n_embd={width}",
            f"--block_size={context}",
            f"--batch_size={batch}",
            "--gradient_accumulation_steps=1",
            "--dropout=0.0",
        ]
        overrides = [
            *matched_overrides(layers, width, heads, context, batch),
            f"device_config.device={args.device}",
            f"device_config.dtype={dtype}",
            f"device_config.compile={str(compiled).lower()}",
            f"device_config.threads={args.threads or 2}",  # as nanoGPT's
            *args.overrides,
        ]
        theirs, ours = [], []
        for repeat in range(args.repeats):
            for who in ("nanogpt", "ours") if repeat % 2 == 0 else ("ours", "nanogpt"):
                if who == "nanogpt":
                    run = nanogpt.run(checkout, work, their_args, args.threads or 2)
                    theirs.append(statistics.median(run.iter_ms[max(2, steps // 6) :]))  # after warm-up
                else:
                    ours.append(measure_in_process("tiny", data_dir, steps, max(1, steps // 6), overrides))
        their_ms = statistics.median(theirs)
        our_ms = statistics.median(r["ms_per_step"] for r in ours)
        flops = ours[0]["flops_per_token"]
        rows = (("nanoGPT train.py", their_ms, their_flops), ("nano-trickster", our_ms, flops))
        rates = [batch * context / (ms / 1000) * f for _, ms, f in rows]  # FLOP/s
        mode = "compiled" if compiled else "eager"
        results.append(
            {
                "mode": mode,
                "ms": {"nanogpt": their_ms, "ours": our_ms},
                "mfu": None if peak is None else {"nanogpt": rates[0] / peak, "ours": rates[1] / peak},
                "ratio": rates[1] / rates[0],
            }
        )
        for (name, ms, f), rate in zip(rows, rates, strict=True):
            mfu = "-" if peak is None else f"{rate / peak:.1%}"
            print(
                f"  {f'{name} ({mode})':<34} {f:>12,} {ms:>9.1f} {batch * context / (ms / 1000):>10,.0f} "
                f"{rate / 1e9:>9.1f} {mfu:>6} {rate / rates[0]:>9.2f}x"
            )
        print(
            f"  runs (ms/step): nanoGPT {[round(m, 1) for m in theirs]}, "
            f"ours {[round(r['ms_per_step'], 1) for r in ours]}"
        )
    if peak is not None:
        print(f"  MFU: FLOP/s (tokens/s x FLOPs per token, one formula for both) / {peak / 1e12:.1f} TFLOP/s")
    return results


def main() -> None:
    if sys.argv[1:2] == ["--row"]:  # a child of measure_in_process
        _row(sys.argv[2])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "nano"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32"])
    parser.add_argument("--compile", choices=("off", "on", "both"), default="off")
    parser.add_argument("--peer", nargs="+", choices=sorted(PEER_SHAPES), help="compare with the peer")
    parser.add_argument("--nanogpt", type=Path, help="a nanoGPT checkout: compare with its train.py")
    parser.add_argument("--repeats", type=int, default=3, help="with --nanogpt: alternating runs of each")
    parser.add_argument("--steps", type=int, default=None, help="default: 60 for tiny, 12 otherwise")
    parser.add_argument("--interval", type=int, default=None)
    parser.add_argument("--text", type=Path, default=next((p for p in DEFAULT_TEXTS if p.exists()), None))
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("overrides", nargs="*", help="config overrides applied to every run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        prepare(sources.shakespeare(args.text), "char", data_dir, progress=False)
        ceiling = matmul_ceiling("cpu", "float32") if args.device == "cpu" else None
        print(
            f"torch {torch.__version__}, {torch.get_num_threads()} threads"
            + (f", fp32 matmul ceiling {ceiling / 1e9:.0f} GFLOP/s" if ceiling else "")
            + f", text {args.text.name}"
        )
        if args.nanogpt:
            for shape in args.peer or (["small", "nano"] if args.device == "cpu" else ["gpt2"]):
                against_nanogpt(args, data_dir, shape)
        elif args.peer:
            for shape in args.peer:
                peer(args, data_dir, shape)
        else:
            grid(args, data_dir)


if __name__ == "__main__":
    main()
