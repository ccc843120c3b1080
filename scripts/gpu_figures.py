"""The figures issue 14 asks of one GPU, as steps of scripts/gpu_check.py (run by name: see its
docstring), each a function of a gpu_runs.Context that returns a Result or raises StepFailed."""

from __future__ import annotations

import gpu_profile
from gpu_runs import (
    ROOT,
    Context,
    Result,
    check,
    drop_checkpoints,
    events,
    load_script,
    training_figures,
    trickster,
)
from gpu_steps import NANO_DRY

TUTORIAL_TARGET_S = 60  # issue 14: the tutorial's schedule on an H100/H200
PROFILE_RUN = [  # a missed tutorial figure's extra run: 8 steps, steps 4 and 5 recorded
    "training_config.max_steps=8", "training_config.warmup_steps=2", "training_config.log_every=4",
    "training_config.eval_every=8", "training_config.save_every=8", "training_config.eval_batches=1",
    "training_config.sample_tokens=0", "logging_config.loss_plot=false",
]  # fmt: skip


def step_tutorial(ctx: Context) -> Result:
    """The `nano` preset as shipped, the tutorial's whole schedule (10,000 steps of 16 x 512
    characters), in bf16 with compile: wall time from the run's start to its final checkpoint.
    A dry run: the nano step's toy model for 30 steps on the CPU, through this step's code."""
    ctx.require_gpu("tutorial")
    result, run = Result("tutorial"), ctx.work / "tutorial"
    argv = ["train", "--preset", "nano", "--data", str(ctx.data), "--out", str(run), "--no-progress"]
    gpu = ["device_config.device=cuda", "device_config.dtype=bfloat16", "device_config.compile=true"]
    toy = [*NANO_DRY, "device_config.device=cpu", "device_config.dtype=float32",
           "device_config.compile=false", "training_config.max_steps=30", "training_config.warmup_steps=3",
           "training_config.eval_every=10", "training_config.save_every=10", "training_config.log_every=5",
           "training_config.sample_tokens=20", "training_config.eval_batches=2",
           "logging_config.loss_plot=false"]  # fmt: skip
    steps = 30 if ctx.dry_run else 10_000
    trickster(ctx, "tutorial", *argv, *(toy if ctx.dry_run else gpu), timeout=1800)
    start, end = events(run, "start")[0], events(run, "end")[-1]
    check(end["step"] == steps, f"the run ended at step {end['step']}, not {steps:,}")
    check((run / "checkpoints" / "final" / "COMPLETE").is_file(), "checkpoints/final is missing")
    check(any(r.get("sample") for r in events(run, "eval")), "no sample was written during training")
    training_figures(result, run)
    seconds = end["time"] - start["time"]
    result.notes.append(
        f"{steps:,} steps in {seconds:.1f} s from the start event to the final "
        f"checkpoint (target: under {TUTORIAL_TARGET_S} s on an H100/H200)"
    )
    ctx.runs["tutorial"] = run
    if ctx.dry_run or seconds >= TUTORIAL_TARGET_S:  # a dry run profiles as if the target were missed
        short = [*argv[:6], str(ctx.work / "tutorial-profile"), *argv[7:], *(toy if ctx.dry_run else gpu)]
        result.notes.append(gpu_profile.extra_run(ctx, "tutorial", [*short, *PROFILE_RUN], (4, 5)))
        drop_checkpoints(ctx.work / "tutorial-profile")
    return result


def step_nanogpt(ctx: Context) -> Result:
    """nanoGPT's own train.py and ours at GPT-2 small's shape (micro-batch 12 x 1024), bf16,
    compiled, at matched FLOPs per token (bench/train_throughput.py --nanogpt). A dry run: both
    at the small shape on the CPU in float32, eager, for a few steps."""
    ctx.require_gpu("nanogpt")
    if ctx.nanogpt is None:
        return Result("nanogpt", "SKIP", notes=["needs --nanogpt DIR (a nanoGPT checkout)"])
    import argparse

    throughput = load_script(ROOT / "bench", "train_throughput")
    if ctx.dry_run:
        options = dict(device="cpu", dtypes=["float32"], compile="off", repeats=1, steps=6, threads=None)
    else:
        options = dict(device="cuda", dtypes=["bfloat16"], compile="on", repeats=1, steps=50, threads=None)
    args = argparse.Namespace(nanogpt=ctx.nanogpt, text=ctx.text, overrides=[], **options)
    (row,) = throughput.against_nanogpt(args, ctx.data, "small" if ctx.dry_run else "gpt2")
    mfu = row["mfu"] or {}
    result = Result("nanogpt", mfu=mfu.get("ours"))
    shown = f"; MFU ours {mfu['ours']:.1%}, nanoGPT {mfu['nanogpt']:.1%}" if mfu else ""
    result.notes.append(
        f"ours {row['ms']['ours']:.1f} ms/step, nanoGPT {row['ms']['nanogpt']:.1f}: {row['ratio']:.2f}x its "
        f"FLOP/s (target 1.1x){shown}"
    )
    return result


def step_generate(ctx: Context) -> Result:
    """`generate` with the KV cache, batch 1, next to transformers' generate on the exported
    weights (bench/generate_throughput.py); `tiny` for 20 tokens in a dry run."""
    ctx.require_gpu("generate")
    generation = load_script(ROOT / "bench", "generate_throughput")
    import torch

    presets, tokens, repeats = (["tiny"], 20, 1) if ctx.dry_run else (["nano", "gpt2-small"], 100, 5)
    result = Result("generate")
    for preset in presets:
        row = generation.bench_preset(preset, 16, tokens, repeats, ctx.work, torch.device(ctx.device))
        check(row["cached"] > 0, f"{preset}: no tokens generated")
        if row["hf"] is None:
            versus = "transformers is not installed"
        else:
            ratio, agree = row["cached"] / row["hf"], row["agree"]
            versus = f"transformers {row['hf']:,.0f}: {ratio:.2f}x (target 1.5x), same tokens {agree:.0%}"
        result.notes.append(f"{preset}: cached {row['cached']:,.0f} tokens/s, {versus}")
    return result


STEP_FUNCTIONS = {"tutorial": step_tutorial, "nanogpt": step_nanogpt, "generate": step_generate}
