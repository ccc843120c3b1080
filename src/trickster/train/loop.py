"""The training loop. `train(cfg)` reads top to bottom: set up, (resume,) loop, finish.

One optimizer step = `gradient_accumulation_steps` micro-batches. Steps are counted from 0; after
the update at index i, `state.step == i + 1`. Logging, evaluation and checkpoints happen when
`state.step` is a multiple of their interval, plus an evaluation before the first step and
everything at the last step.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from trickster.config import Config, save_config
from trickster.data.loader import BatchSampler, check_windows, load_data
from trickster.errors import UserError, disk_errors
from trickster.model.flops import flops_per_token, parameter_breakdown
from trickster.model.transformer import Transformer
from trickster.model.vocab import resolve_vocab, vocab_note
from trickster.observe.events import NoMetrics, read_metrics
from trickster.observe.manifest import run_manifest
from trickster.observe.sinks import MetricSinks
from trickster.train import checkpoint as ckpt
from trickster.train import dist
from trickster.train.device import autocast_for, keep_freed_memory, peak_flops, resolve_device
from trickster.train.finetune import setup_finetuning
from trickster.train.optim import build_optimizer, set_lr
from trickster.train.resume import check_resumable, open_run_dir, restore_trainer, truncate_metrics
from trickster.train.signals import StopSignals
from trickster.train.state import TrainState, rng_state, weights_finite
from trickster.train.validate import evaluate, sample_text, validation_batches


@dataclass
class TrainResult:
    cfg: Config  # as resolved for the run (vocab_size filled in)
    run_dir: Path
    state: TrainState
    exit_signal: int | None = None  # SIGINT / SIGTERM if the run was stopped early
    params: int = 0
    history: list[dict] = field(default_factory=list)


def train(
    cfg: Config, resume: bool | str | None = None, progress: bool | None = None, echo=print
) -> TrainResult:
    """`resume`: True (continue, a checkpoint must exist), "auto", False; None takes
    training_config.resume."""
    t = cfg.training
    resume = t.resume if resume is None else resume
    level = cfg.logging.log_level
    if level in ("warning", "error"):  # quiet: problems still arrive as errors
        echo, progress = (lambda *args: None), False
    # 1. device, processes, threads and seed
    device = resolve_device(cfg.device.device)
    job = dist.setup(cfg.device, device.type)
    if device.type == "cuda" and job.active:
        device = torch.device("cuda", job.local_rank)
    if not job.is_main:  # rank 0 speaks for the job
        echo, progress = (lambda *args: None), False
    if cfg.device.threads:
        torch.set_num_threads(cfg.device.threads)
    if device.type == "cpu":
        keep_freed_memory()
    if device.type == "cuda":  # float32 matmuls in TF32 on Ampere and later (ignored before)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(t.seed)

    # 2. data and tokenizer; the model's vocabulary follows the tokenizer
    if cfg.data.path is None:
        raise UserError("no data: set data_config.path or pass --data DIR (from `trickster data prepare`)")
    data = load_data(cfg.data.path)
    cfg = resolve_vocab(cfg, data.tokenizer)
    seq_len = cfg.seq_len
    check_windows(data, seq_len)

    # 3. the run directory: a new one, or the newest complete checkpoint of an old one
    run_dir = Path(cfg.logging.output_dir)
    # jsonl, csv, loss.png, TensorBoard, W&B: checks the optional packages, writes nothing yet
    metrics = MetricSinks(run_dir, cfg) if job.is_main else NoMetrics()
    resumed_from, repairs = _on_main(job, open_run_dir, run_dir, resume)
    changed = check_resumable(resumed_from, cfg, data) if resumed_from is not None else {}

    # 4. model (weights restored before it is wrapped), optimizer, batches
    model = Transformer(cfg.model).to(device)
    setup_finetuning(model, cfg, data.tokenizer, echo)  # init_from weights, LoRA; else nothing
    if resumed_from is not None:
        ckpt.load_weights(model, resumed_from / ckpt.WEIGHTS)
    model.checkpoint_activations = cfg.device.activation_checkpointing
    step_model = dist.parallelize(model, job, device)
    if cfg.device.compile:
        step_model = torch.compile(step_model)
    optimizer = build_optimizer(model, t, device)
    sampler = BatchSampler(data.train, seq_len, t.batch_size, t.seed, job.rank, job.world_size)
    val_batches = validation_batches(data, cfg, job)
    use_scaler = cfg.device.dtype == "float16"
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    state = TrainState()
    if job.rank > 0:  # other dropout masks on each process (rank 0 draws as a single process would)
        torch.manual_seed(t.seed + job.rank)
    if resumed_from is not None:
        restore_trainer(resumed_from, model, optimizer, sampler, scaler, state, device, job.rank)

    manifest = run_manifest(device)
    if job.is_main:
        if resumed_from is not None:
            truncate_metrics(run_dir / "metrics.jsonl", state.step)
            metrics.write(
                "resume", state.step, checkpoint=resumed_from.name, changed=changed, repairs=repairs
            )
        elif resume:  # nothing to resume: events of an attempt that saved no checkpoint are dropped
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        with disk_errors(f"run folder {run_dir}", "free disk space or choose another --out"):
            save_config(cfg, run_dir / "config.yaml")
            data.tokenizer.save(run_dir / "tokenizer.json")
            (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))

    params = parameter_breakdown(cfg.model)
    global_batch = t.batch_size * job.world_size * t.gradient_accumulation_steps  # windows per step
    tokens_per_step = global_batch * seq_len
    _print_header(echo, cfg, data, params.total, device, tokens_per_step, resumed_from, job)
    for line in repairs + [f"changed on resume: {k} {old} -> {new}" for k, (old, new) in changed.items()]:
        echo(line)
    token_flops = flops_per_token(cfg.model, seq_len)
    step_flops = token_flops * tokens_per_step
    peak = peak_flops(device, cfg.device.dtype, cfg.device.peak_tflops) if job.is_main else None
    if resumed_from is None:
        metrics.write(
            "start",
            0,
            params=params.total,
            tokens_per_step=tokens_per_step,
            global_batch=global_batch,
            world_size=job.world_size,
            parallel=job.mode,
            flops_per_token=token_flops,
            device=str(device),
            peak_flops_per_device=peak,
            peak_source="device_config.peak_tflops" if cfg.device.peak_tflops else "measured matmul",
        )

    def info() -> dict:
        return {
            "step": state.step,
            "val_loss": state.last_val_loss,
            "best_val_loss": _finite(state.best_val_loss),
            "tokens_seen": state.tokens_seen,
            "tokenizer_fingerprint": data.tokenizer.fingerprint(),
            "data_fingerprint": data.meta.get("tokens_sha256"),
            "data_path": str(data.path),
            "manifest": manifest,
        }

    def save(name: str) -> None:
        # every process takes part in gathering the full state; rank 0 writes it
        weights, optimizer_state = dist.full_state(model, optimizer)
        rngs = dist.gather(rng_state(device), job)
        if job.is_main:
            trainer_state = {
                "train_state": state.state_dict(),
                "optimizer": optimizer_state,
                "sampler": sampler.state_dict(),
                "scaler": scaler.state_dict() if use_scaler else {},
                "rng": rngs,  # one entry per process
            }
            target = run_dir / "checkpoints" / name
            ckpt.save_checkpoint(target, model, cfg, data.tokenizer, info(), trainer_state, weights=weights)
            if ckpt.STEP_DIR.match(name):
                ckpt.prune(run_dir, t.keep_last)
        dist.barrier(job)

    def run_eval() -> None:
        val_loss = dist.mean(evaluate(step_model, val_batches, device, cfg.device.dtype), job)
        # non-finite weights are neither sampled nor saved as `best`, whatever loss they report
        healthy = weights_finite(model) and math.isfinite(val_loss)
        state.last_val_loss = val_loss if healthy else None
        perplexity = math.exp(min(val_loss, 50.0)) if healthy else None
        record = {"val_loss": state.last_val_loss, "val_perplexity": perplexity}
        if healthy and _sample_due(t, state.step):
            record["sample"] = sample_text(model, data.tokenizer, t.sample_prompt, t.sample_tokens, t.seed)
        metrics.write("eval", state.step, **record)
        if healthy:
            say(f"step {state.step:>6}: val loss {val_loss:.4f}, perplexity {perplexity:.2f}")
        else:
            say(f"step {state.step:>6}: the weights or the validation loss are not finite")
        if "sample" in record:
            say("  sample: " + record["sample"].replace("\n", "\n          ")[:600])
        if healthy and val_loss < state.best_val_loss and state.step > 0:
            state.best_val_loss = val_loss
            save("best")

    # 5. the loop
    # a bar redraws in place: in a log file (not a terminal) plain lines read better
    show_bar = cfg.logging.progress_bar and sys.stderr.isatty() if progress is None else progress
    bar = tqdm(
        total=t.max_steps,
        initial=state.step,
        disable=not show_bar,
        unit="step",
        dynamic_ncols=True,
        leave=True,
    )
    say = bar.write if show_bar else echo
    exit_signal = None
    model.train()
    with StopSignals() as stop, contextlib.closing(bar), contextlib.closing(metrics):
        if resumed_from is None:
            run_eval()
        interval_start, interval_tokens = time.perf_counter(), 0
        while state.step < t.max_steps:
            lr = set_lr(optimizer, state.step, t)
            step_loss, grad_norm, applied = train_step(
                step_model,
                model,
                optimizer,
                scaler,
                sampler,
                t.gradient_accumulation_steps,
                t.grad_clip,
                device,
                cfg.device.dtype,
                job,
            )
            state.step += 1
            state.tokens_seen += tokens_per_step
            interval_tokens += tokens_per_step
            if applied:
                state.interval_loss_sum += step_loss
                state.interval_steps += 1
                state.nonfinite_streak = 0
            else:
                state.skipped_steps += 1
                state.nonfinite_streak += 1
                say(
                    f"step {state.step:>6}: non-finite loss or gradient norm ({step_loss}, {grad_norm}); "
                    "update skipped"
                )
                if state.nonfinite_streak >= t.max_nonfinite_steps:
                    metrics.write(
                        "stopped", state.step, reason="non-finite", skipped_steps=state.skipped_steps
                    )
                    raise _diverged(run_dir, state)
            bar.update(1)
            last = state.step == t.max_steps

            if state.step % t.log_every == 0 or last:
                elapsed = time.perf_counter() - interval_start
                train_loss = state.interval_loss_sum / state.interval_steps if state.interval_steps else None
                tokens_per_sec = interval_tokens / elapsed if elapsed > 0 else 0.0
                ms_per_step = 1000 * elapsed / (interval_tokens // tokens_per_step)  # steps timed here
                # model FLOPs utilisation: the job's achieved FLOP/s over all devices' ceilings
                mfu = step_flops / (ms_per_step / 1000) / (peak * job.world_size) if peak else None
                memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
                metrics.write(
                    "train",
                    state.step,
                    train_loss=train_loss,
                    lr=lr,
                    grad_norm=grad_norm if math.isfinite(grad_norm) else None,
                    tokens_per_sec=tokens_per_sec,
                    ms_per_step=ms_per_step,
                    mfu=mfu,
                    peak_memory_gib=memory,
                    tokens_seen=state.tokens_seen,
                    skipped_steps=state.skipped_steps,
                )
                shown = "n/a" if train_loss is None else f"{train_loss:.4f}"
                shown_mfu = "" if mfu is None else f", MFU {mfu:.0%}"
                bar.set_postfix(loss=shown, lr=f"{lr:.2e}", tok_s=f"{tokens_per_sec:,.0f}")
                if not show_bar:
                    detail = f", grad norm {grad_norm:.3f}, {ms_per_step:.1f} ms/step"
                    if memory is not None:
                        detail += f", peak memory {memory:.2f} GiB"
                    echo(
                        f"step {state.step:>6}: train loss {shown}, lr {lr:.2e}, "
                        f"{tokens_per_sec:,.0f} tokens/s{shown_mfu}" + (detail if level == "debug" else "")
                    )
                state.interval_loss_sum, state.interval_steps = 0.0, 0
                interval_start, interval_tokens = time.perf_counter(), 0
            paused = time.perf_counter()  # evaluations and checkpoints do not count as training time
            if state.step % t.eval_every == 0 or last:
                run_eval()
            stopping = dist.any_rank(stop.received is not None, job) and not last
            if (state.step % t.save_every == 0 or stopping) and not last:
                save(ckpt.step_name(state.step))
            interval_start += time.perf_counter() - paused
            if stopping:
                exit_signal = stop.received or signal.SIGTERM  # another process was signalled
                metrics.write("stopped", state.step, signal=signal.Signals(exit_signal).name)
                say(
                    f"stopped by {signal.Signals(exit_signal).name} at step {state.step}; "
                    f"saved checkpoints/{ckpt.step_name(state.step)} (continue with --resume)"
                )
                break
        if exit_signal is None:
            save("final")
            metrics.write(
                "end",
                state.step,
                best_val_loss=_finite(state.best_val_loss),
                skipped_steps=state.skipped_steps,
            )
    return TrainResult(
        cfg, run_dir, state, exit_signal, params.total, read_metrics(run_dir / "metrics.jsonl")
    )


def train_step(
    step_model,
    model,
    optimizer,
    scaler,
    sampler,
    accumulation: int,
    grad_clip: float,
    device,
    dtype_name,
    job: dist.Dist | None = None,
) -> tuple[float, float, bool]:
    """One optimizer step over `accumulation` micro-batches: (mean loss, gradient norm, applied).

    A non-finite loss or gradient norm skips the update and drops the gradients. With float16
    the GradScaler skips inf/NaN gradients itself while it calibrates; only a non-finite loss
    counts as a skip then.
    """
    job = job or dist.Dist()
    step_loss = 0.0
    for micro_step in range(accumulation):
        x, y = sampler.next_batch()
        if device.type == "cuda":  # page-locked host memory lets the copy overlap the GPU's work
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        # gradients are averaged across processes once, on the last micro-batch
        with dist.gradient_sync(step_model, job, micro_step == accumulation - 1):
            with autocast_for(device, dtype_name):
                _, loss = step_model(x, y)
            scaler.scale(loss / accumulation).backward()
        step_loss += loss.item() / accumulation
    step_loss = dist.mean(step_loss, job)
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip if grad_clip > 0 else math.inf)
    grad_norm = dist.to_full(norm).item()
    applied = math.isfinite(step_loss) and (math.isfinite(grad_norm) or scaler.is_enabled())
    if applied:
        scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return step_loss, grad_norm, applied


def _diverged(run_dir: Path, state: TrainState) -> UserError:
    good = ckpt.latest(run_dir)
    where = f"the last good checkpoint is {good}" if good else "no checkpoint was saved yet"
    return UserError(
        f"training stopped at step {state.step}: {state.nonfinite_streak} updates in a row had a "
        f"non-finite loss or gradient norm; {where}; lower training_config.learning_rate, keep "
        "training_config.grad_clip on (e.g. 1.0), or use device_config.dtype=bfloat16 instead of "
        "float16, then continue with --resume"
    )


def _on_main(job: dist.Dist, fn, *args):
    """Run `fn` on rank 0 only and hand its result, or its UserError, to every process."""
    outcome = None
    if job.is_main:
        try:
            outcome = fn(*args)
        except UserError as err:
            outcome = err
    outcome = dist.broadcast(outcome, job)
    if isinstance(outcome, UserError):
        raise outcome
    return outcome


def _sample_due(t, step: int) -> bool:
    if t.sample_tokens == 0 or t.sample_every == 0:
        return False
    return t.sample_every is None or step % t.sample_every == 0 or step == t.max_steps


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _print_header(echo, cfg, data, total_params, device, tokens_per_step, resumed_from, job) -> None:
    t = cfg.training
    echo("=" * 60)
    echo(f"{'Fine-tuning' if t.init_from else 'Training from scratch'} -> {cfg.logging.output_dir}")
    echo("=" * 60)
    echo(f"device: {device} ({cfg.device.dtype})   parameters: {total_params:,}")
    echo(
        f"data: {data.path} ({data.meta['tokenizer']} tokenizer, {vocab_note(data.tokenizer, cfg)}; "
        f"{len(data.train):,} train / {len(data.val):,} val tokens)"
    )
    if job.active:
        echo(f"processes: {job.world_size} ({job.mode}, mesh {tuple(job.mesh.shape)} replicate x shard)")
    echo(
        f"steps: {t.max_steps:,} x {tokens_per_step:,} tokens (global batch "
        f"{tokens_per_step // cfg.seq_len} = {t.batch_size} per process x "
        f"{job.world_size} process(es) x accumulation {t.gradient_accumulation_steps}, x {cfg.seq_len} "
        f"tokens); lr {t.learning_rate} warmup {t.warmup_steps} -> cosine -> {t.min_lr}"
    )
    if resumed_from is not None:
        echo(f"resuming from {resumed_from}")
