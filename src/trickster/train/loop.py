"""The training loop. `train(cfg)` builds a `Trainer` and runs `Trainer.train`, which reads top to
bottom: evaluate, then step, log, save and evaluate until the last step or a stop signal.

One optimizer step = `gradient_accumulation_steps` micro-batches. Steps are counted from 0; after
the update at index i, `state.step == i + 1`. Logging, evaluation and checkpoints happen when
`state.step` is a multiple of their interval, plus an evaluation before the first step and
everything at the last step.
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path

import torch

from trickster.config import Config
from trickster.data.loader import BatchSampler
from trickster.model.flops import flops_per_token, trained_parameters
from trickster.observe.events import NoMetrics
from trickster.observe.manifest import run_manifest
from trickster.observe.sinks import MetricSinks
from trickster.observe.status import Heartbeat
from trickster.run_checkpoints import STEP_DIR
from trickster.train import checkpoint as ckpt
from trickster.train import dist, dist_checkpoint, hellaswag_eval, lost_output, profiling, recovery, setup
from trickster.train.async_save import Writer, stage_shards
from trickster.train.batches import DeviceBatches
from trickster.train.budget import Clock
from trickster.train.console import Console, SlowPass
from trickster.train.device import (
    Peak,
    apply_process_settings,
    autocast_for,
    mfu_peak,
    peak_memory_gib,
    reset_peak_memory,
    resolve_device,
    settings_restored,
    utilisation,
)
from trickster.train.disk_full import ends_run
from trickster.train.memory import resolve_batch
from trickster.train.optim import build_optimizer, set_lr
from trickster.train.rank0 import on_main
from trickster.train.resume import diverged, trainer_state
from trickster.train.run_lock import claimed
from trickster.train.signals import StopSignals, announce_signals, while_starting
from trickster.train.spikes import SpikeDetector
from trickster.train.state import (
    StepResult,
    StepTimer,
    TrainResult,
    TrainState,
    rng_state,
    set_rng_state,
)
from trickster.train.validate import (
    draw_width_of,
    evaluate,
    logged_sample,
    pooled_loss,
    sample_due,
    validation_batches,
)


def train(
    cfg: Config, resume: bool | str | None = None, progress: bool | None = None, echo=print
) -> TrainResult:
    """`resume`: True (continue, a checkpoint must exist), "auto", False; None takes
    training_config.resume. Threads, TF32 flags and random generators are restored on return; the
    run folder is this process's alone until then (run_lock.claimed). A stop signal before the
    training loop takes it over ends the run in one line, its folder tidied (signals.while_starting)."""
    with while_starting(Path(cfg.logging.output_dir)):
        with settings_restored(), lost_output.tolerated(), contextlib.ExitStack() as held:
            try:
                trainer = Trainer(cfg, resume, progress, echo, held)
            except setup.Finished as done:  # resume: auto in a run that has done its steps
                return done.result
            return trainer.train()


class Trainer:
    """One run: its model, optimizer, scaler, batches, state, job, sinks and output, and what it
    does with them: `step()`, `evaluate()`, `save()`, and `train()`, the loop over them."""

    def __init__(
        self,
        cfg: Config,
        resume: bool | str | None = None,
        progress: bool | None = None,
        echo=print,
        held: contextlib.ExitStack | None = None,
    ):
        """`resume`: as train()'s. `held`: where rank 0 keeps its claim on the run folder until the
        run ends (train()); without it the folder is not claimed."""
        t = cfg.training
        resume = t.resume if resume is None else resume
        # 1. device, processes, threads and seed (train() restores the process-wide settings)
        self.device = resolve_device(cfg.device.device)
        self.job = job = dist.setup(cfg.device, self.device.type)
        if self.device.type == "cuda" and job.active:
            self.device = torch.device("cuda", job.local_rank)
        self.out = Console(echo, cfg.logging.log_level, job.is_main, progress)  # rank 0 speaks
        self.slow_pass = SlowPass(self.out.line)
        apply_process_settings(cfg.device.threads, self.device, t.seed)
        # 2. data and tokenizer (the model's vocabulary follows it), checked before the run folder is touched
        cfg, self.data, base = setup.prepared_data(cfg, resume, self.device, job)  # base: init_from's files
        # 3. the run folder: a new one, or the newest complete checkpoint of an old one
        self.run_dir = Path(cfg.logging.output_dir)
        # jsonl, csv, loss.png, TensorBoard, W&B: checks the optional packages, writes nothing yet
        self.metrics = MetricSinks(self.run_dir, cfg) if job.is_main else NoMetrics()
        if held is not None:  # rank 0 claims the folder; all processes stop if another one holds it
            on_main(job, lambda: held.enter_context(claimed(self.run_dir, resume)))
        opened = setup.open_run(cfg, self.data, resume, job, self.out)
        cfg, self.resumed_from, saved, info, notes, changed = opened  # saved, info: its config, info.json
        self.resumed_config: Config | None = saved  # read once, for what recovery checks on resume
        # read and checked before any trial step; not when `resume: auto` finds the run finished
        self.hellaswag = hellaswag_eval.HellaSwagEval(cfg, self.data.tokenizer, job)
        resolved = on_main(job, resolve_batch, cfg, self.device, job, self.resumed_from, saved, changed)
        cfg, self.batch_note, changed = resolved  # batch_size: auto measured (or kept from the checkpoint)
        self.cfg, t = cfg, cfg.training
        # 4. batches, counters, and what works beside the steps; then model and optimizer, and the
        # checkpoint's state if resuming: its files summed as they load, refused if any changed
        sampler = BatchSampler(self.data.train, cfg.seq_len, t.batch_size, t.seed, job.rank, job.world_size)
        self.batches = DeviceBatches(sampler, self.device)
        self.state, self.timer = TrainState(), StepTimer()
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.device.dtype == "float16")
        self.signals = StopSignals(*announce_signals(self.run_dir, job)) if job.is_main else StopSignals()
        self.spikes = SpikeDetector(t.spike_factor, t.spike_steps, t.spike_window)
        self.clock = Clock(t)
        self.heartbeat = Heartbeat(self.run_dir, t.max_steps, enabled=job.is_main)
        self.saved: ckpt.Saved | None = None  # this process's last checkpoint
        self.writer = Writer(t.async_save, job, t.keep_last, self.out.line)
        self.eval_due = False  # resumed from a checkpoint saved before its step's evaluation
        self.hellaswag_due = self.hellaswag.enabled  # at step 0; resumed: as eval_due, for HellaSwag
        self.val_draw_width = draw_width_of(t, job.world_size)  # a resumed run keeps its own
        self.saved_processes = job.world_size  # resumed: the processes of the job that saved it
        with setup.resume_verified(job, self.resumed_from, self.run_dir, info):
            self.model, self.step_model, self.origin = setup.build_model(  # origin: where a fine-tune began
                cfg, self.data, job, self.device, self.resumed_from, self.out, base, info
            )
            self.optimizer = build_optimizer(self.model, t, self.device)
            if job.rank > 0:  # other dropout masks on each process (rank 0 draws as a single process would)
                torch.manual_seed(t.seed + job.rank)
            if self.resumed_from is not None:
                self.load(self.resumed_from)
        self.val_batches = validation_batches(self.data, cfg, job, self.val_draw_width)
        self.clock.start(self.state.train_seconds)
        self.clock.check_left(self.state.step, t.max_steps)
        # 5. the figures every step shares; the run's files, its header and its first event
        self.tokens_per_step = t.batch_size * job.world_size * t.gradient_accumulation_steps * cfg.seq_len
        self.params = trained_parameters(cfg.model, t.lora)
        self.token_flops = flops_per_token(cfg.model, cfg.seq_len, t.lora)
        self.peak = Peak(None, "")
        if job.is_main:  # what MFU divides by (datasheet, configured or measured), by the process that logs
            self.peak = mfu_peak(self.device, cfg.device.dtype, cfg.device.peak_tflops)
        self.manifest = run_manifest(self.device)
        setup.announce(self, resume, changed, notes + recovery.fresh_rollbacks(self, changed))
        recovery.remeasure_best(self, info)  # resumed on another validation set than best's loss

    def train(self) -> TrainResult:
        t, state = self.cfg.training, self.state
        self.model.train()
        self.out.start_bar(self.cfg.logging.progress_bar, t.max_steps, state.step)
        self.heartbeat.start(state.step)
        with (
            self.signals,
            self.heartbeat,
            ends_run(self),  # the line and event of a full disk, once what follows has closed
            contextlib.closing(self.out),
            contextlib.closing(self.metrics),
            contextlib.closing(self.writer),  # waits for a write in flight on the way out of an error
            profiling.steps(self) as self.profiler,  # logging_config.profile_steps; exits first
        ):
            recovery.evaluations_before_the_first_step(self)
            self.timer.reset()
            while state.step < t.max_steps:
                self.profiler.step()  # ProfilerStep#N: step N and its logging, evaluation and checkpoint
                began = time.perf_counter()
                with recovery.guard(self, "a training step", state.step + 1):
                    result = self.step()
                state.step += 1
                state.tokens_seen += self.tokens_per_step
                state.train_seconds = self.clock.seconds()
                self.timer.steps += 1
                self.count(result)
                self.out.advance()
                if recovery.after_step(self, result, time.perf_counter() - began):
                    continue  # a loss spike: rolled back to an earlier checkpoint
                last = state.step == t.max_steps or result.out_of_time
                if state.step % t.log_every == 0 or last:
                    self.log(result)
                stopping = result.stop and not last
                evaluating = state.step % t.eval_every == 0 or last
                scoring = self.hellaswag.due(state.step, last)
                with self.timer.paused():  # evaluations and checkpoints are not training time
                    # the checkpoint first: an evaluation that fails (out of memory) loses no training
                    if state.step % t.save_every == 0 or stopping or last:
                        with recovery.guard(self, "a checkpoint", state.step):
                            name = "final" if last else ckpt.step_name(state.step)
                            self.save(name, eval_due=evaluating, hellaswag_due=scoring)
                    if evaluating:
                        with recovery.guard(self, "an evaluation", state.step):
                            self.evaluate()
                    if scoring:
                        with recovery.guard(self, "a HellaSwag evaluation", state.step):
                            hellaswag_eval.score(self)
                if stopping:
                    return recovery.stopped(self)
                if last:
                    break
            return recovery.finish(self)

    def step(self) -> StepResult:
        """One optimizer step over the accumulation's micro-batches.

        Losses stay on the device; the step's one host synchronisation is a single packed
        all-reduce of [loss, non-finite flag, gradient norm, stop flag, max_time flag], after the
        next step's first batch is already drawn and on its way. A non-finite loss or gradient norm
        skips the update and drops the gradients; with float16 the GradScaler skips inf/NaN
        gradients itself while it calibrates, so only a non-finite loss counts as a skip then.
        """
        reset_peak_memory(self.device)  # the peak logged is a training step's, not setup's or eval's
        accumulation = self.cfg.training.gradient_accumulation_steps
        lr = set_lr(self.optimizer, self.state.step, self.cfg.training)  # the one logged
        loss_sum = torch.zeros((), device=self.device)
        for micro_step in range(accumulation):
            x, y = self.batches.next()
            # gradients are averaged across processes once, on the last micro-batch (dist.py)
            with dist.micro_batch(self.step_model, self.job, last=micro_step == accumulation - 1):
                with autocast_for(self.device, self.cfg.device.dtype):
                    _, loss = self.step_model(x, y)
                self.scaler.scale(loss / accumulation).backward()
            self.batches.prefetch()  # drawn and copied while the device works on this one
            loss_sum += loss.detach().float()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.training.grad_clip
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else math.inf)
        loss = loss_sum / accumulation
        stop = torch.full((), float(self.signals.received is not None), device=self.device)
        late = torch.full((), float(self.clock.out_of_time()), device=self.device)  # max_time spent
        packed = torch.stack([loss, (~torch.isfinite(loss)).float(), dist.to_full(norm).float(), stop, late])
        total, nonfinite, norm_sum, stops, lates = dist.sum_across(packed, self.job)
        loss_mean, grad_norm = total / self.job.world_size, norm_sum / self.job.world_size
        finite = not nonfinite and math.isfinite(loss_mean)
        applied = finite and (math.isfinite(grad_norm) or self.scaler.is_enabled())
        if applied:
            self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss_mean, grad_norm, lr, applied, stops > 0, lates > 0)

    def count(self, result: StepResult) -> None:
        """Add a step to the counters; too many non-finite steps in a row end the run."""
        state = self.state
        if result.applied:
            state.interval_loss_sum += result.loss
            state.interval_steps += 1
            state.nonfinite_streak = 0
            return
        state.skipped_steps += 1
        state.nonfinite_streak += 1
        self.out.line(
            f"step {state.step:>6}: non-finite loss or gradient norm ({result.loss}, "
            f"{result.grad_norm}); update skipped"
        )
        if state.nonfinite_streak >= self.cfg.training.max_nonfinite_steps:
            recovery.write_stopped(self, reason="non-finite", skipped_steps=state.skipped_steps)
            self.writer.drain()  # the checkpoint to go on from is named
            raise diverged(self.run_dir, state)

    def log(self, result: StepResult) -> None:
        state, job = self.state, self.job
        elapsed = self.timer.seconds()
        train_loss = state.interval_loss_sum / state.interval_steps if state.interval_steps else None
        tokens_per_sec = self.timer.steps * self.tokens_per_step / elapsed if elapsed > 0 else 0.0
        ms_per_step = 1000 * elapsed / self.timer.steps
        # model FLOPs utilisation: the job's achieved FLOP/s over all devices' ceilings
        memory = peak_memory_gib(self.device)  # the steps' own, before any matmul timed again
        achieved = self.token_flops * self.tokens_per_step / (ms_per_step / 1000) / job.world_size
        mfu, self.peak = utilisation(self.peak, achieved, self.device, self.cfg.device.dtype)
        grad_norm = result.grad_norm if math.isfinite(result.grad_norm) else None
        self.metrics.write(
            "train",
            state.step,
            train_loss=train_loss,
            lr=result.lr,
            grad_norm=grad_norm,
            tokens_per_sec=tokens_per_sec,
            ms_per_step=ms_per_step,
            mfu=mfu,
            peak_memory_gib=memory,
            tokens_seen=state.tokens_seen,
            skipped_steps=state.skipped_steps,
        )
        shown = "n/a" if train_loss is None else f"{train_loss:.4f}"
        line = f"step {state.step:>6}: train loss {shown}, lr {result.lr:.2e}, {tokens_per_sec:,.0f} tokens/s"
        if self.peak.flops:  # n/a: over 100% even of a ceiling timed again, so the peak is too low
            line += f", MFU {mfu:.0%}" if mfu is not None else f", MFU n/a (over 100% of {self.peak.source})"
        if self.out.debug:
            line += f", grad norm {result.grad_norm:.3f}, {ms_per_step:.1f} ms/step"
            if memory is not None:
                line += f", peak memory {memory:.2f} GiB"
        self.out.progress({"loss": shown, "lr": f"{result.lr:.2e}", "tok_s": f"{tokens_per_sec:,.0f}"}, line)
        self.heartbeat.beat("running", state.step, train_loss=train_loss, tokens_per_sec=tokens_per_sec)
        state.interval_loss_sum, state.interval_steps = 0.0, 0
        self.timer.reset()

    def evaluate(self) -> None:
        """Validation loss and perplexity, a sample, and `best` when the loss improved.

        Non-finite weights are neither sampled nor saved as `best`, whatever loss they report; the
        processes agree on that verdict (under FSDP2 each one sees only its own shard).
        """
        state, dtype = self.state, self.cfg.device.dtype
        self.slow_pass.start(f"step {state.step:>6}: evaluating")
        local = evaluate(self.step_model, self.val_batches, self.device, dtype, self.slow_pass)
        val_loss, healthy = pooled_loss(local, self.val_batches, self.model, self.device, self.job)
        state.last_val_loss, state.last_val_step = (val_loss if healthy else None), state.step
        perplexity = math.exp(min(val_loss, 50.0)) if healthy else None
        record = {
            "val_loss": state.last_val_loss,
            "val_perplexity": perplexity,
            "tokens_seen": state.tokens_seen,
        }
        if healthy and sample_due(self.cfg.training, state.step):
            sample = logged_sample(self.model, self.data.tokenizer, self.cfg.training, self.job)
            if sample is not None:
                record["sample"] = sample
        self.metrics.write("eval", state.step, **record)
        if healthy:
            self.out.line(f"step {state.step:>6}: val loss {val_loss:.4f}, perplexity {perplexity:.2f}")
        else:
            self.out.line(f"step {state.step:>6}: the weights or the validation loss are not finite")
        if "sample" in record:
            self.out.line("  sample: " + record["sample"].replace("\n", "\n          ")[:600])
        improved = healthy and val_loss < state.best_val_loss and state.step > 0
        state.best_val_loss = val_loss if improved else state.best_val_loss
        recovery.record_evaluation_in_checkpoint(self)  # one saved at this step, before this evaluation
        if improved:
            self.save("best")

    def save(self, name: str, eval_due: bool = False, hellaswag_due: bool = False) -> None:
        """A checkpoint folder. Every process takes part: rank 0 writes the gathered weights and
        trainer.pt; the optimizer moments are gathered by name too, except under FSDP2, where each
        process writes its own shard of them (torch.distributed.checkpoint) into the same folder.
        A second folder of one step (`best` after `final`) links the first one's weights and shards
        instead of writing them again (every process knows: they all saved the first). With
        training_config.async_save a numbered one is written in the background (async_save.py).
        `eval_due`, `hellaswag_due`: an evaluation of these weights follows (a resume from here does
        it again)."""
        self.writer.settle()  # one write at a time: `reuse` and keep_last's rotation need it done
        target = self.run_dir / "checkpoints" / name
        # the checkpoint this process saved at this very step, whose files the new one links
        reuse = self.saved if self.saved is not None and self.saved.step == self.state.step else None
        background = self.writer.enabled and not reuse and STEP_DIR.match(name) is not None
        on_cpu = not background or self.job.mode == "fsdp"  # else the snapshot copies the live tensors
        weights = None if reuse else dist_checkpoint.full_weights(self.model, on_cpu)
        trainer_state = self.state_dict()
        trainer_state["eval_due"], trainer_state["hellaswag_due"] = eval_due, hellaswag_due
        staging, groups = None, reuse.groups if reuse else None
        shards = None  # under FSDP2 in the background: this process's shard, still being written
        if self.job.mode == "fsdp":
            if not reuse:
                staged = stage_shards(self.job, self.model, self.optimizer, target, background)
                staging, groups, shards = staged
            trainer_state["optimizer"] = {"param_groups": groups}
        else:
            optimizer = dist_checkpoint.full_optimizer_state(self.model, self.optimizer, on_cpu)
            trainer_state["optimizer"] = optimizer
        parts = (self.model, self.cfg, self.data.tokenizer, self.info(), trainer_state, weights, staging)
        self.writer.write(target, parts, reuse.path if reuse else None, background, shards)
        self.saved = ckpt.Saved(self.state.step, target, groups)

    def load(self, path: Path) -> None:
        """Continue from the checkpoint at `path`, written by this or any other number of processes."""
        self.saved = None  # the weights it had are gone
        trainer = trainer_state(path, mapped=not self.job.is_main)
        optimizer = trainer["optimizer"]
        if "state" in optimizer:  # gathered, by parameter name
            dist_checkpoint.load_full_optimizer_state(self.model, self.optimizer, optimizer, self.job)
        else:  # sharded by the processes that wrote it
            groups = optimizer["param_groups"]
            dist_checkpoint.load_sharded_optimizer(self.model, self.optimizer, path / ckpt.OPTIMIZER, groups)
        self.load_state_dict(trainer)

    def state_dict(self) -> dict:
        """The trainer's side of a checkpoint (trainer.pt), the optimizer apart (see save()): the
        counters, the sampler's position, the loss scale and every process's random generators.
        Collective: every process calls it."""
        return {
            "train_state": self.state.state_dict(),
            "sampler": self.batches.state_dict(),
            "scaler": self.scaler.state_dict(),  # empty unless float16
            "rng": dist.gather(rng_state(self.device), self.job),  # one entry per process
            "spikes": self.spikes.state_dict(),
            "val_draw_width": self.val_draw_width,  # defines the validation set (validation_batches)
        }

    def load_state_dict(self, trainer: dict) -> None:
        self.state.load_state_dict(trainer["train_state"])
        self.eval_due = trainer["eval_due"]  # saved before an evaluation (save())
        self.hellaswag_due = trainer["hellaswag_due"] and self.hellaswag.enabled
        self.spikes.load_state_dict(trainer.get("spikes", {}))
        self.val_draw_width = trainer["val_draw_width"]
        self.batches.load_state_dict(trainer["sampler"])
        if self.scaler.is_enabled() and trainer["scaler"]:
            self.scaler.load_state_dict(trainer["scaler"])
        self.saved_processes = len(trainer["rng"])  # one entry per process of the job that saved it
        if self.job.rank < self.saved_processes:  # a process the saving job lacked keeps its seed
            set_rng_state(trainer["rng"][self.job.rank], self.device)

    def info(self) -> dict:
        """info.json of a checkpoint."""
        state, data = self.state, self.data
        return {
            "step": state.step,
            "val_loss": state.last_val_loss,
            "val_loss_step": state.last_val_step,  # an earlier one's between evaluations (recorded_loss)
            "best_val_loss": state.best_loss_seen,
            "tokens_seen": state.tokens_seen,
            "tokenizer_fingerprint": data.tokenizer.fingerprint(),
            "data_fingerprint": data.meta.get("tokens_sha256"),
            "data_path": str(data.path),
            "val_draw_width": self.val_draw_width,  # for `trickster compare`: the run's validation set
            "init_from": self.origin,
            "manifest": self.manifest,
        }

    def result(self, exit_signal: int | None = None) -> TrainResult:
        return TrainResult(self.cfg, self.run_dir, self.state, exit_signal, self.params)
