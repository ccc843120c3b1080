"""The checks of scripts/gpu_check.py (see its docstring), each a function of a Context that
returns a Result or raises StepFailed; what runs and watches their processes is in gpu_runs.py.
Step 1's checks are in gpu_probe.py."""

from __future__ import annotations

import gc
import json
import math
import os
import shutil
import statistics
from pathlib import Path

import gpu_profile
from gpu_runs import (
    ROOT,
    Context,
    Result,
    StepFailed,
    check,
    drop_checkpoints,
    events,
    killed_when,
    load_script,
    save_and_load_times,
    training_figures,
    trickster,
)

TEXTS = [
    ROOT.parent / "shared" / "data" / "tinyshakespeare.txt",
    ROOT / "tests" / "data" / "shakespeare_excerpt.txt",
]


# --------------------------------------------------------------------------- step 1


def step_probe(ctx: Context) -> Result:
    ctx.require_gpu("probe")
    gpu_probe = load_script(ROOT / "scripts", "gpu_probe")
    if ctx.dry_run:  # the checks that take a device, on the CPU (gloo)
        return Result("probe", notes=[gpu_probe.kv_cache("cpu"), gpu_probe.collectives("cpu")])
    notes, failures = gpu_probe.probe()
    return Result("probe", "FAIL" if failures else "PASS", notes=failures + notes)


# --------------------------------------------------------------------------- steps 2 to 6

NANO_DRY = [  # --cpu-dry-run: the nano step at toy size
    "model_config.hidden_dim=64",
    "model_config.num_layers=2",
    "model_config.num_heads=4",
    "model_config.mlp_dim=192",
    "model_config.max_seq_len=64",
    "training_config.batch_size=8",
    "training_config.learning_rate=0.003",
]


def step_nano(ctx: Context) -> Result:
    ctx.require_gpu("nano")
    result, run = Result("nano"), ctx.work / "nano"
    steps = 30 if ctx.dry_run else 300
    precision = (
        ["device_config.dtype=float32", "device_config.compile=false"]
        if ctx.dry_run
        else ["device_config.dtype=bfloat16", "device_config.compile=true"]
    )
    trickster(
        ctx, "nano", "train", "--preset", "nano", "--data", str(ctx.data), "--out", str(run), "--no-progress",
        f"device_config.device={ctx.device}", *precision, *(NANO_DRY if ctx.dry_run else []),
        f"training_config.max_steps={steps}", f"training_config.warmup_steps={steps // 10}",
        f"training_config.log_every={steps // 12}", f"training_config.eval_every={steps // 3}",
        f"training_config.save_every={steps // 3}", "training_config.eval_batches=5",
        "training_config.sample_tokens=40", "logging_config.loss_plot=false",
    )  # fmt: skip
    losses = [r["train_loss"] for r in events(run, "train") if r.get("train_loss") is not None]
    check(len(losses) >= 2 and losses[-1] < losses[0] - 0.3, f"the train loss did not fall: {losses}")
    for name in (f"step_{steps // 3:06d}", f"step_{2 * steps // 3:06d}", "best", "final"):
        check((run / "checkpoints" / name / "COMPLETE").is_file(), f"checkpoints/{name} is missing")
    training_figures(result, run)
    result.notes.append(f"train loss {losses[0]:.2f} -> {losses[-1]:.2f} in {steps} steps")
    ctx.runs["nano"] = run
    return result


def step_resume(ctx: Context) -> Result:
    """The nano step's run (or the tutorial's, when nano did not run) continued for a few steps,
    then `generate` and `eval` on the device, and `generate` on the CPU from its checkpoint saved
    on the GPU (bfloat16 training, compiled blocks: the weights and model_config it records must
    load on a machine without a GPU)."""
    ctx.require_gpu("resume")
    run = ctx.trained_run("nano", "tutorial")
    if run is None:
        raise StepFailed("needs the nano or the tutorial step's run (run it first, with the same --work)")
    result = Result("resume")
    steps = events(run, "end")[0]["step"] + (5 if ctx.dry_run else 50)
    trickster(
        ctx, "resume", "train", "--config", str(run / "config.yaml"), "--resume", "--no-progress",
        f"training_config.max_steps={steps}",
    )  # fmt: skip
    resumes = events(run, "resume")
    check(bool(resumes) and events(run, "end")[-1]["step"] == steps, f"no resume to step {steps}: {resumes}")
    for device in dict.fromkeys([ctx.device, "cpu"]):
        text = trickster(
            ctx, f"generate-{device}", "generate", str(run), "--device", device, "--prompt", "ROMEO:",
            "--max-new-tokens", "60", "--seed", "1",
        )  # fmt: skip
        check(len(text.strip()) > len("ROMEO:"), f"generate --device {device} wrote nothing new: {text!r}")
    scored = json.loads(
        trickster(ctx, "eval", "eval", str(run), "--device", ctx.device, "--json").splitlines()[-1]
    )
    result.val_loss = scored["loss"]
    run_loss = events(run, "eval")[-1]["val_loss"]
    check(
        math.isfinite(scored["loss"]) and abs(scored["loss"] - run_loss) < 0.3,
        f"eval {scored['loss']} vs run {run_loss}",
    )
    result.notes.append(
        f"{run.name} resumed at {resumes[-1]['step']} to {steps}; eval loss {scored['loss']:.3f}, run "
        f"{run_loss:.3f}; its checkpoint generated on the CPU too"
    )
    save_and_load_times(result, run, ctx.device)
    return result


GPT2_DRY = ["model_config.hidden_dim=64", "model_config.num_layers=2", "model_config.num_heads=4",
            "model_config.mlp_dim=192", "model_config.max_seq_len=64", "model_config.vocab_size=128",
            "training_config.batch_size=4"]  # fmt: skip


def step_gpt2(ctx: Context) -> Result:
    """`gpt2-small` as shipped (Muon) in bf16, eager then compiled, each in a process of its own
    (bench/train_throughput.py); a dry run: a toy model in float32, eager both times."""
    ctx.require_gpu("gpt2")
    throughput = load_script(ROOT / "bench", "train_throughput")
    result, rows, profile = Result("gpt2"), {}, ctx.work / "gpt2-profile"
    for compiled in (False, True):
        overrides = (
            ["device_config.device=cpu", "device_config.dtype=float32", "device_config.compile=false"]
            + GPT2_DRY
            if ctx.dry_run
            else [
                "device_config.device=cuda",
                "device_config.dtype=bfloat16",
                f"device_config.compile={compiled}",
            ]
        )
        steps, interval = (8, 4) if ctx.dry_run else (30, 5)
        # the compiled row records its last two steps before its first log (step 1 compiles, the one
        # before the window warms the profiler up): that interval is warm-up, left out of the figure
        profiled = [f"logging_config.profile_steps=[{interval - 2}, {interval - 1}]"] if compiled else []
        rows[compiled] = throughput.measure_in_process(
            "gpt2-small",
            ctx.data,
            steps,
            interval,
            overrides + profiled,
            keep_profile=profile if compiled else None,
        )
    eager, fast = rows[False], rows[True]
    result.tokens_per_sec, result.mfu, result.peak_gib = fast["tokens_per_sec"], fast["mfu"], fast["memory"]
    if not ctx.dry_run:
        check(fast["mfu"] is not None and 0 < fast["mfu"] <= 1, f"compiled MFU {fast['mfu']}: not a figure")
    result.notes.append(
        f"compiled {fast['tokens_per_sec']:,.0f} tokens/s, eager {eager['tokens_per_sec']:,.0f} "
        f"(x{fast['tokens_per_sec'] / eager['tokens_per_sec']:.2f}); MFU eager {eager['mfu'] or 0:.1%}, "
        f"compiled {fast['mfu'] or 0:.1%} (target 45%); eager peak {eager['memory']} GiB"
    )
    result.notes.append(gpu_profile.bring_back(ctx, "gpt2", profile))
    return result


def fsdp_model(dry_run: bool) -> list[str]:
    """mega's shape with 2 layers (toy size with --cpu-dry-run)."""
    width, heads, kv, mlp, vocab, context, batch = (
        (64, 8, 2, 176, 96, 32, 4) if dry_run else (2048, 32, 4, 5632, 32000, 2048, 2)
    )
    return [
        f"model_config.hidden_dim={width}", "model_config.num_layers=2", f"model_config.num_heads={heads}",
        f"model_config.num_kv_heads={kv}", f"model_config.mlp_dim={mlp}", f"model_config.vocab_size={vocab}",
        f"model_config.max_seq_len={context}", "model_config.tie_embeddings=false",
        f"training_config.batch_size={batch}", "training_config.gradient_accumulation_steps=2",
    ]  # fmt: skip


FSDP_TOLERANCE = {"cpu": 1e-4, "cuda": 0.05}  # train loss, resumed against uninterrupted; bf16 on a GPU


def step_fsdp(ctx: Context) -> Result:
    """torchrun with FSDP2, activation checkpointing, bf16 and compile (eager and gloo in a dry run)
    for mega's shape cut to 2 layers: an uninterrupted run of 30 steps; the same run
    killed with SIGKILL at its step-20 checkpoint and resumed to 30, whose losses must match;
    and that checkpoint resumed by one process on the CPU, whose final weights `generate` loads."""
    ctx.require_gpu("fsdp")
    try:
        return fsdp_runs(ctx)
    finally:  # at real size each checkpoint takes 3 GB of the GPU machine's 64 GiB of disk
        drop_checkpoints(*fsdp_folders(ctx))


def fsdp_folders(ctx: Context) -> tuple[Path, Path, Path]:
    """The uninterrupted run, the killed and resumed one, and its copy resumed on the CPU."""
    return ctx.work / "fsdp-reference", ctx.work / "fsdp", ctx.work / "fsdp-cpu"


def fsdp_runs(ctx: Context) -> Result:
    result = Result("fsdp")
    compiled = "false" if ctx.dry_run else "true"
    common = [
        "--no-progress", f"device_config.device={ctx.device}", "device_config.enable_fsdp=true",
        "device_config.activation_checkpointing=true", "device_config.dtype=bfloat16",
        f"device_config.compile={compiled}", "training_config.warmup_steps=2", "training_config.log_every=2",
        "training_config.eval_every=10", "training_config.save_every=10", "training_config.eval_batches=2",
        "training_config.sample_tokens=20", "logging_config.loss_plot=false", "training_config.max_steps=30",
        "training_config.keep_last=1",
    ]  # fmt: skip
    reference, run, alone = fsdp_folders(ctx)
    first = ["train", "--preset", "mega", "--data", str(ctx.data), *fsdp_model(ctx.dry_run), *common]
    trickster(ctx, "fsdp-reference", *first, "--out", str(reference), torchrun=True)
    samples = [r["sample"] for r in events(reference, "eval") if r.get("sample")]
    check(bool(samples), "no sample was written during training")
    losses = [r["train_loss"] for r in events(reference, "train") if r.get("train_loss") is not None]
    check(
        all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], f"the loss did not fall: {losses}"
    )
    save_and_load_times(result, reference, ctx.device)
    drop_checkpoints(reference)

    # killed once its step-20 checkpoint is complete: in the evaluation that follows it, or just after
    saved = run / "checkpoints" / "step_000020" / "COMPLETE"
    killed_when(ctx, "fsdp-killed", saved, *first, "--out", str(run))
    check(not (run / "checkpoints" / "final").exists(), "the run finished before it was killed")
    shutil.copytree(run, alone)  # as the kill left it, for the CPU below
    again = ["train", "--config", str(run / "config.yaml"), "--resume", *common]
    trickster(ctx, "fsdp-resume", *again, torchrun=True)
    resumes = events(run, "resume")
    check([r["step"] for r in resumes] == [20], f"the killed run did not resume at step 20: {resumes}")
    expected = {r["step"]: r["train_loss"] for r in events(reference, "train")}
    resumed = {r["step"]: r["train_loss"] for r in events(run, "train") if r["step"] > 20}
    check(sorted(resumed) == [s for s in sorted(expected) if s > 20], f"steps after 20: {sorted(resumed)}")
    worst = max(abs(resumed[s] - expected[s]) for s in resumed)
    tolerance = FSDP_TOLERANCE[ctx.device]
    check(worst <= tolerance, f"resumed losses differ from uninterrupted ones by {worst:.2e} > {tolerance}")
    drop_checkpoints(run)

    on_cpu = [
        "--resume", "--no-progress", "device_config.device=cpu", "device_config.enable_fsdp=false",
        "device_config.dtype=float32", "device_config.compile=false", "training_config.max_steps=21",
        "training_config.eval_every=21", "training_config.eval_batches=1", "training_config.sample_tokens=0",
    ]  # fmt: skip
    on_cpu += ram_reported_low(result)
    trickster(ctx, "fsdp-cpu", "train", "--config", str(alone / "config.yaml"), "--out", str(alone), *on_cpu)
    check([r["step"] for r in events(alone, "resume")] == [20], "the CPU did not resume from step 20")
    text = trickster(ctx, "fsdp-generate", "generate", str(alone), "--device=cpu", "--max-new-tokens=20")
    check(len(text.strip()) > 0, "generate on the CPU wrote nothing")

    training_figures(result, reference)
    result.notes.append(
        f"FSDP2 on {'gloo' if ctx.dry_run else 'nccl'}: killed at step 20, resumed there, train losses "
        f"within {worst:.1e} of the uninterrupted run's (tolerance {tolerance}); resumed on the CPU "
        "and generated there"
    )
    return result


def ram_reported_low(result: Result) -> list[str]:
    """device_config.memory_gib for a CPU run where the kernel reports under 16 GiB of RAM: on some
    GPU machines (Firecracker) MemTotal starts far below the RAM the machine has and grows as it is
    used, and check_fits would refuse the CPU resume (its 2-layer model of mega's width needs
    about 5 GiB) for memory the machine has."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if ram >= 16 * 2**30:
        return []
    result.notes.append(f"the kernel reported {ram / 2**30:.1f} GiB of RAM: the CPU resume was given 64")
    return ["device_config.memory_gib=64"]


MEGA_RUN = [  # 50 steps, one evaluation at the end, no numbered checkpoint, no sample
    "training_config.max_steps=50",
    "training_config.warmup_steps=2",
    "training_config.log_every=5",
    "training_config.eval_every=50",
    "training_config.save_every=1000",
    "training_config.eval_batches=2",
    "training_config.sample_tokens=0",
    "logging_config.loss_plot=false",
]
PLAN_BOUNDS = {"memory": 0.15, "step time": 0.30}  # issue 15: the plan's error against the measured


def step_mega(ctx: Context) -> Result:
    """The 1.1B `mega` preset as shipped (FSDP2 on one process, bf16, activation checkpointing),
    50 steps: peak memory and step time against `trickster plan`'s predictions for the same
    settings, which must be within PLAN_BOUNDS; and the times to save and load its checkpoint.
    A dry run trains mega's structure at toy size for 6 steps on the CPU: this step's own code,
    whose figures it reports but does not hold to the bounds."""
    ctx.require_gpu("mega")
    import torch

    from trickster import plan
    from trickster.config import load_config

    result, run = Result("mega"), ctx.work / "mega"
    overrides = [f"device_config.device={ctx.device}", "device_config.compile=false", *MEGA_RUN]
    if ctx.dry_run:
        overrides += [*fsdp_model(True), "training_config.max_steps=6", "training_config.eval_every=6"]
    predicted = plan.make_plan(load_config(preset="mega", overrides=overrides), torch.device(ctx.device))
    if ctx.device == "cuda":  # the benchmark's copy is gone: its memory is the training run's
        torch.cuda.empty_cache()
    argv = ["train", "--preset", "mega", "--data", str(ctx.data), "--out", str(run), "--no-progress"]
    trickster(ctx, "mega", *argv, *overrides, timeout=900)
    training_figures(result, run)
    ms = statistics.median(r["ms_per_step"] for r in events(run, "train")[1:] or events(run, "train"))
    plan_s = predicted.seconds(predicted.run_tokens // predicted.cfg.training.max_steps)
    plan_ms = 1000 * plan_s if plan_s is not None else None
    plan_gib = predicted.memory.total / 2**30
    peak = "not measured" if result.peak_gib is None else f"{result.peak_gib:.1f} GiB"
    result.notes.append(
        f"step {ms:,.0f} ms (plan {plan_ms or float('nan'):,.0f} ms); peak {peak} (plan {plan_gib:.1f} GiB)"
    )
    save_and_load_times(result, run, ctx.device)
    drop_checkpoints(run)
    if ctx.dry_run:
        result.notes.append("toy size on the CPU: the plan's bounds are not checked")
        return result
    errors = {
        "memory": abs(plan_gib - result.peak_gib) / result.peak_gib if result.peak_gib else None,
        "step time": abs(plan_ms - ms) / ms if plan_ms else None,
    }
    for what, error in errors.items():
        check(error is not None, f"no {what} to compare with the plan's")
        bound = PLAN_BOUNDS[what]
        check(error <= bound, f"the plan's {what} is {error:.0%} off (bound {bound:.0%})")
    return result


def largest(fits, limit: int = 4096, guess: int = 1) -> int:
    """The largest n in 1..limit for which fits(n) holds (0 if not even 1), fits being true up to
    some size and false beyond it: from `guess` (a prediction) by steps that double, up while it
    fits, down while not, then bisected. A right guess costs two trials."""
    fitting, failing, step = 0, limit + 1, 1
    size = min(max(guess, 1), limit)
    while failing - fitting > 1 and (fitting == 0 or failing == limit + 1):
        if fits(size):
            fitting, size = size, min(size + step, failing - 1)
        else:
            failing, size = size, max(size - step, fitting + 1)
        step *= 2
        if fitting == limit or failing == 1:
            return fitting
    while failing - fitting > 1:
        middle = (fitting + failing) // 2
        fitting, failing = (middle, failing) if fits(middle) else (fitting, middle)
    return fitting


def step_maxbatch(ctx: Context) -> Result:
    """The largest micro-batch of `mega` at context 2048 whose training step (bf16 autocast,
    activation checkpointing, AdamW, one unsharded process) fits on this GPU, by trial steps: two
    small ones give the bytes a window adds (a step's peak grows by its activations alone), whose
    extrapolation to the GPU's memory is tried with the next size up, then searched from as
    `largest` does. The plan's formula must give it or the size below. A dry run: mega's structure
    at toy size in a made-up memory of the CPU, with the CPU's count of a step's bytes (which
    leaves out what a GPU's allocator holds): this step's code, the bound not checked."""
    ctx.require_gpu("maxbatch")
    import torch

    from trickster import footprint
    from trickster.config import load_config
    from trickster.model.transformer import Transformer
    from trickster.train.memory import step_fits, trial_step_bytes
    from trickster.train.optim import build_optimizer

    device = torch.device(ctx.device)
    unsharded = [f"device_config.device={ctx.device}", "device_config.enable_fsdp=false",
                 "device_config.compile=false", *(fsdp_model(True)[:-2] if ctx.dry_run else [])]  # fmt: skip
    cfg = load_config(preset="mega", overrides=unsharded)
    if ctx.dry_run:  # room for about 6 windows by the formula
        one = footprint.memory_estimate(cfg, batch_size=1)
        capacity = int(one.state + 6.5 * (one.total - one.state))
    else:
        capacity, _ = footprint.device_memory(device)
    formula = footprint.fitting_batch(cfg, capacity)

    def largest_fitting() -> tuple[int, int, int]:
        model = Transformer(cfg.model).to(device)
        model.checkpoint_activations = True
        optimizer = build_optimizer(model, cfg.training, device)
        small = {b: trial_step_bytes(model, optimizer, cfg, device, b) for b in (2, 6)}
        window = (small[6] - small[2]) / 4
        guess = 2 + int((capacity - small[2]) // window) if window > 0 else formula
        tried = []
        fits = lambda batch: tried.append(batch) or step_fits(model, optimizer, cfg, device, batch, capacity)  # noqa: E731
        measured.update(small)
        return largest(fits, guess=guess), guess, len(tried) + 2

    measured = {}  # trial step bytes by micro-batch, the two small ones
    try:
        fitting, guess, trials = largest_fitting()
    finally:  # the steps after this one run in processes of their own and need the GPU's memory
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    check(fitting >= 1, f"not even one window of {cfg.seq_len} tokens fits")
    planned = footprint.fitting_batch(cfg, footprint.HEADROOM * capacity)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    result = Result("maxbatch", peak_gib=peak)
    result.notes.append(
        f"largest micro-batch {fitting} x {cfg.seq_len} tokens ({trials} trial steps, the first two's "
        f"extrapolation {guess}); the plan's formula: {formula} in all {footprint.size_text(capacity)}, "
        f"{planned} in the {footprint.HEADROOM:.0%} it plans with"
    )
    counted = {b: footprint.memory_estimate(cfg, batch_size=b).total for b in measured}
    size = footprint.size_text
    result.notes.append(
        f"a step at 2 and 6 windows: measured {', '.join(size(measured[b]) for b in sorted(measured))}, "
        f"the formula's {', '.join(size(counted[b]) for b in sorted(counted))}"
    )
    if ctx.dry_run:
        result.notes.append("toy size on the CPU: the formula's bound is not checked")
        return result
    check(fitting - 1 <= formula <= fitting, f"the plan's formula gives {formula}, the GPU took {fitting}")
    return result


STEP_FUNCTIONS = {
    "probe": step_probe,
    "nano": step_nano,
    "resume": step_resume,
    "gpt2": step_gpt2,
    "fsdp": step_fsdp,
    "mega": step_mega,
    "maxbatch": step_maxbatch,
}
