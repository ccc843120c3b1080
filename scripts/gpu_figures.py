"""The figures issue 14 asks of one GPU, as steps of scripts/gpu_check.py (run by name: see its
docstring), each a function of a gpu_steps.Context that returns a Result or raises StepFailed."""

from __future__ import annotations

from gpu_steps import ROOT, Context, Result, check, events, load_script, training_figures, trickster


def step_tutorial(ctx: Context) -> Result:
    """The `nano` preset as shipped, the tutorial's whole schedule (10,000 steps of 16 x 512
    characters), in bf16 with compile: wall time from the run's start to its final checkpoint."""
    ctx.require_gpu("tutorial")
    if ctx.dry_run:
        return Result("tutorial", "SKIP", notes=["needs a GPU"])
    result, run = Result("tutorial"), ctx.work / "tutorial"
    argv = ["train", "--preset", "nano", "--data", str(ctx.data), "--out", str(run), "--no-progress"]
    gpu = ["device_config.device=cuda", "device_config.dtype=bfloat16", "device_config.compile=true"]
    trickster(ctx, "tutorial", *argv, *gpu, timeout=1800)
    start, end = events(run, "start")[0], events(run, "end")[-1]
    check(end["step"] == 10_000, f"the run ended at step {end['step']}, not 10,000")
    check((run / "checkpoints" / "final" / "COMPLETE").is_file(), "checkpoints/final is missing")
    check(any(r.get("sample") for r in events(run, "eval")), "no sample was written during training")
    training_figures(result, run)
    result.notes.append(
        f"10,000 steps in {end['time'] - start['time']:.1f} s from the start event to the final "
        "checkpoint (target: under 60 s on an H100/H200)"
    )
    return result


def step_nanogpt(ctx: Context) -> Result:
    """nanoGPT's own train.py and ours at GPT-2 small's shape (micro-batch 12 x 1024), bf16,
    compiled, at matched FLOPs per token (bench/train_throughput.py --nanogpt)."""
    ctx.require_gpu("nanogpt")
    if ctx.dry_run or ctx.nanogpt is None:
        return Result("nanogpt", "SKIP", notes=["needs a GPU and --nanogpt DIR (a nanoGPT checkout)"])
    import argparse

    throughput = load_script(ROOT / "bench", "train_throughput")
    options = dict(device="cuda", dtypes=["bfloat16"], compile="on", repeats=1, steps=50, threads=None)
    args = argparse.Namespace(nanogpt=ctx.nanogpt, text=ctx.text, overrides=[], **options)
    (row,) = throughput.against_nanogpt(args, ctx.data, "gpt2")
    result = Result("nanogpt", mfu=row["mfu"]["ours"])
    result.notes.append(
        f"ours {row['ms']['ours']:.1f} ms/step, nanoGPT {row['ms']['nanogpt']:.1f}: {row['ratio']:.2f}x its "
        f"FLOP/s (target 1.1x); MFU ours {row['mfu']['ours']:.1%}, nanoGPT {row['mfu']['nanogpt']:.1%}"
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
