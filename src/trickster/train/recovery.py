"""What a long run does for itself: it rolls back after a loss spike, warns after its first step
when it will take far longer than its settings suggest, turns an out-of-memory error or a lost
process into one line, gives a checkpoint saved before its evaluation that evaluation's loss,
evaluates `best` again on a resume where its loss does not compare with the evaluations to come
(a new seq_len or eval_batches, or an older version's average), and ends at its last step,
at its time budget or at a stop signal. Used by loop.Trainer (these read and change its state).
"""

from __future__ import annotations

import contextlib
import math
import signal
from pathlib import Path
from typing import TYPE_CHECKING

from trickster import run_checkpoints
from trickster.config import Config
from trickster.errors import UserError
from trickster.observe.events import last_event
from trickster.train import checkpoint as ckpt
from trickster.train import checkpoint_load, dist_checkpoint, hellaswag_eval, peers, weight_loading
from trickster.train.device import allocation_failed
from trickster.train.memory import out_of_memory
from trickster.train.rank0 import on_main
from trickster.train.resume import RESUME_READS
from trickster.train.signals import continue_command
from trickster.train.spikes import Spike, discard, rollback_to, spike_line, too_many_spikes
from trickster.train.state import TrainResult
from trickster.train.validate import evaluate, pooled_loss

if TYPE_CHECKING:
    from trickster.train.loop import Trainer
    from trickster.train.state import StepResult


def write_stopped(trainer: Trainer, **details) -> None:
    """The `stopped` event, with the tokens trained on: steps since the last train line count too,
    so `trickster runs` shows what a run stopped between two log lines saw."""
    trainer.metrics.write("stopped", trainer.state.step, tokens_seen=trainer.state.tokens_seen, **details)


def finish(trainer: Trainer) -> TrainResult:
    """The last step, or the time budget, ended the run; `final` holds it."""
    state, t = trainer.state, trainer.cfg.training
    best = state.best_loss_seen
    final = trainer.run_dir / "checkpoints" / "final"
    if not run_checkpoints.is_complete(final) or run_checkpoints.checkpoint_step(final) != state.step:
        trainer.save("final")  # resumed at (or past) the last step: no step ran here
    if trainer.job.is_main:  # a kill between a numbered checkpoint and its rotation left one more
        run_checkpoints.prune(trainer.run_dir, t.keep_last)
    if state.step < t.max_steps:
        write_stopped(trainer, reason="max_time", train_seconds=state.train_seconds)
        trainer.out.line(trainer.clock.end_line(state.step, t.max_steps))
        trainer.heartbeat.beat("stopped", state.step, reason="max_time")
    else:
        trainer.metrics.write("end", state.step, best_val_loss=best, skipped_steps=state.skipped_steps)
        trainer.heartbeat.beat("finished", state.step)
    return trainer.result()


def stopped(trainer: Trainer) -> TrainResult:
    """A signal ended the run: the checkpoint of this step is saved; say how to go on."""
    received = trainer.signals.received or signal.SIGTERM  # another process was signalled
    trainer.writer.settle()  # this step's checkpoint, when written in the background, is whole first
    # the processes exit with 128 + signal, an error to torchrun, which then ends the others:
    # none exits before rank 0 has written how the run stopped, or failed to (disk full: then
    # every process ends with its line)
    on_main(trainer.job, say_stopped, trainer, signal.Signals(received).name)
    return trainer.result(received)


def say_stopped(trainer: Trainer, name: str) -> None:
    """The `stopped` event, the heartbeat and the line of a run that the signal `name` stopped."""
    write_stopped(trainer, signal=name)
    trainer.heartbeat.beat("stopped", trainer.state.step, reason=name)
    trainer.out.line(
        f"stopped by {name} at step {trainer.state.step}; saved "
        f"checkpoints/{ckpt.step_name(trainer.state.step)}; continue with: "
        f"{continue_command(trainer.run_dir, trainer.job)}"
    )


def evaluations_before_the_first_step(trainer: Trainer) -> None:
    """A new run's first evaluation; or the one its checkpoint was saved before, which a kill may
    have cut short (before `best`): done again, as the run did after saving. And the evaluation of
    a run resumed at its last step (stopped at step S between evaluations, resumed with
    max_steps=S): no step is left to reach it, and the run ended with `final` and no evaluation of
    it, its `best` none if it had not evaluated since step 0. HellaSwag scoring alike."""
    state = trainer.state
    at_the_end = _unevaluated_end(trainer)
    if trainer.resumed_from is None or trainer.eval_due or at_the_end:
        with guard(trainer, "an evaluation", state.step):
            trainer.evaluate()
    if trainer.hellaswag_due or (at_the_end and trainer.hellaswag.enabled):
        with guard(trainer, "a HellaSwag evaluation", state.step):
            hellaswag_eval.score(trainer)


def _unevaluated_end(trainer: Trainer) -> bool:
    """Resumed at (or past) its last step from a checkpoint of a step that no evaluation was due at
    as it saved: a numbered one off its eval_every, as a stop by signal saves (one at an evaluation's
    step, and `final`, are evaluated or say eval_due; so were older versions', saved after it)."""
    resumed = trainer.resumed_from
    if resumed is None or trainer.eval_due or trainer.state.step < trainer.cfg.training.max_steps:
        return False
    every = trainer.resumed_config.training.eval_every  # as open_run read it
    return resumed.name != "final" and trainer.state.step % every != 0


def record_evaluation_in_checkpoint(trainer: Trainer) -> None:
    """A checkpoint saved at this step was written before its evaluation (one that fails loses no
    training): its info.json gets that evaluation's loss, as if it had been saved after it. So does
    the checkpoint a run resumed from when a kill cut that evaluation short (it is done again on
    resume): `final` would otherwise keep the loss of the evaluation before."""
    state = trainer.state
    if trainer.saved is not None and trainer.saved.step == state.step:
        trainer.writer.settle()  # written in the background (async_save): complete first
    path = _saved_at(trainer, state.step) if trainer.job.is_main else None
    if path is not None:
        measured = {"val_loss": state.last_val_loss, "val_loss_step": state.last_val_step}
        ckpt.update_info(path, **measured, best_val_loss=state.best_loss_seen)


def _saved_at(trainer: Trainer, step: int) -> Path | None:
    """The complete checkpoint of `step` saved before its evaluation: the one this process just
    wrote, or the one it resumed from (unless a rollback or keep_last deleted it since)."""
    saved, resumed = trainer.saved, trainer.resumed_from
    if saved is not None and saved.step == step:
        return saved.path if run_checkpoints.is_complete(saved.path) else None
    if not trainer.eval_due or resumed is None or not run_checkpoints.is_complete(resumed):
        return None
    return resumed if run_checkpoints.checkpoint_step(resumed) == step else None


@contextlib.contextmanager
def guard(trainer: Trainer, during: str, step: int):
    """Out of memory during a step or an evaluation: one line (what ran out, a micro-batch and
    accumulation that fit, the checkpoint to resume from), and the run ends; nothing is lost.
    Another process of the job dead or silent (a collective failed): one line too."""
    try:
        yield
    except (RuntimeError, MemoryError, peers.PeerLost) as err:  # PeerLost: told by rank0.on_main, worded here
        # the CPU allocator refuses with a plain RuntimeError, not torch.OutOfMemoryError
        if allocation_failed(err):
            write_stopped(trainer, reason="out-of-memory", during=during)
            trainer.writer.drain()  # a checkpoint written in the background may be the one to name
            good = run_checkpoints.latest(trainer.run_dir)
            raise out_of_memory(trainer.cfg, trainer.device, trainer.job, during, step, good) from None
        reason = peers.lost_peer(err, trainer.job)
        if reason is None:
            raise
        write_stopped(trainer, reason="lost-process", during=during)
        trainer.writer.drain()
        raise lost_peer_error(trainer, during, step, reason) from None


def lost_peer_error(trainer: Trainer, during: str, step: int, reason: str) -> UserError:
    """The one line for a collective that failed `during` "a training step", "an evaluation" or
    "a checkpoint" because another process died or went silent (peers.lost_peer's `reason`)."""
    good = run_checkpoints.latest(trainer.run_dir)
    where = run_checkpoints.none_saved(trainer.run_dir)
    where = f"continue from checkpoints/{good.name} with --resume" if good else where
    return UserError(
        f"another process of the job ended or stopped answering (within device_config.timeout_s="
        f"{trainer.cfg.device.timeout_s:g} s) during {during} at step {step}: {reason}; see torchrun's "
        f"summary for which one and why; {where}"
    )


def after_step(trainer: Trainer, result: StepResult, seconds: float) -> bool:
    """The long-run checks after a step that took `seconds`. A loss spike rolls the run back
    (True: the step is undone). After this process's first step (its second when compiling), a
    line if the schedule will take far longer than the settings suggest."""
    state = trainer.state
    spike = trainer.spikes.update(state.step, result.loss) if result.applied else None
    if spike is not None:
        roll_back(trainer, spike)
        return True
    if state.step == trainer.heartbeat.first_step + (2 if trainer.cfg.device.compile else 1):
        note = trainer.clock.first_step_note(seconds, state.step, trainer.cfg.training.max_steps)
        if note:
            trainer.out.line(note)
    return False


def roll_back(trainer: Trainer, spike: Spike) -> None:
    """Back to the newest checkpoint before the spike's window (its first high loss and the
    update before it), whose batches the sampler then passes over; the rollback is saved at
    once, so a resume continues exactly as this process does."""
    state, t = trainer.state, trainer.cfg.training
    window = spike.first_step - 1
    trainer.writer.settle()  # a checkpoint written in the background is one to return to
    target = on_main(trainer.job, rollback_to, trainer.run_dir, window, RESUME_READS)
    good, passed_over = target.checkpoint, target.passed_over
    if good is None:
        trainer.metrics.write("spike", state.step, first_step=spike.first_step, peak_loss=spike.peak_loss)
        trainer.out.line(spike_line(spike, None, state.rollbacks, t.max_rollbacks, passed_over))
        return
    if state.rollbacks >= t.max_rollbacks:
        if trainer.job.is_main:
            discard(target.later)
        write_stopped(trainer, reason="loss-spikes", checkpoint=good.name)
        raise too_many_spikes(spike, good, t.max_rollbacks)
    sampler = trainer.batches.sampler
    used = trainer.batches.state_dict()["drawn"]  # draws up to now (not the one drawn ahead)
    first = sampler.rewind(used, (state.step - window + 1) * t.gradient_accumulation_steps)
    rollbacks, seconds = state.rollbacks + 1, state.train_seconds
    load_run_weights(trainer, good)
    trainer.load(good)
    state.rollbacks, state.train_seconds = rollbacks, seconds
    # saved before its step's evaluation, its trainer.pt holds the loss before; its info.json that one
    measured = on_main(trainer.job, _own_loss, good, target.info)
    if measured is not None:
        state.last_val_loss, state.last_val_step = measured.loss, measured.measured_at
    sampler.skip(first, used)
    trainer.batches.load_state_dict(sampler.state_dict())
    if trainer.job.is_main:
        discard(target.later)
    trainer.save(good.name)
    record = {"first_step": spike.first_step, "last_step": spike.last_step, "checkpoint": good.name}
    trainer.metrics.write("rollback", state.step, **record, peak_loss=spike.peak_loss, median=spike.median)
    trainer.out.line(spike_line(spike, good.name, rollbacks, t.max_rollbacks, passed_over))
    trainer.profiler.rolled_back(state.step)  # ProfilerStep#N stays the console's step N
    trainer.timer.reset()


def _own_loss(checkpoint: Path, info: dict) -> run_checkpoints.RecordedLoss | None:
    """The loss `checkpoint`'s `info` (its info.json, read once by rollback_to) records as measured
    at its own step, if any."""
    saved = checkpoint_load.read_config(checkpoint)
    measured = run_checkpoints.recorded_loss(checkpoint, info, saved.training.eval_every)
    return measured if measured.at_this_step else None


def fresh_rollbacks(trainer: Trainer, changed: dict) -> list[str]:
    """The rollback count of a resumed run starts again at 0 when the run had stopped for spikes
    beyond max_rollbacks and this resume changes its settings (what that stop's line asks: a lower
    learning rate, more warmup, a larger max_rollbacks): a person has acted, and the next stretch
    alone gets max_rollbacks. Any other resume (a kill, a preemption, the same command rerun)
    continues the count, as the run never stopped: rerun in a loop, a run that keeps spiking stops
    at its next spike rather than skipping batches without end. The line to log, if any."""
    state, limit = trainer.state, trainer.cfg.training.max_rollbacks
    if trainer.resumed_from is None or not changed or state.rollbacks == 0:
        return []
    if not on_main(trainer.job, _stopped_for_spikes, trainer.run_dir):
        return []
    counted, state.rollbacks = state.rollbacks, 0
    return [
        f"loss-spike rollbacks counted afresh (the run stopped after {counted}; this resume changes "
        f"its settings): at most {limit} again"
    ]


def _stopped_for_spikes(run_dir: Path) -> bool:
    last = last_event(run_dir / "metrics.jsonl")  # before the resume cuts the file back
    return last is not None and last["event"] == "stopped" and last.get("reason") == "loss-spikes"


def load_run_weights(trainer: Trainer, checkpoint: Path) -> None:
    """The weights (and LoRA adapters) of `checkpoint` into the run's model, sharded or not."""
    if trainer.job.mode == "fsdp":
        weights = weight_loading.read_weights(trainer.model, checkpoint / run_checkpoints.WEIGHTS)
        dist_checkpoint.load_full_weights(trainer.model, weights)
    else:
        weight_loading.load_weights(trainer.model, checkpoint / run_checkpoints.WEIGHTS)


def validation_set(cfg: Config) -> dict:
    """What draws the validation windows (validate.validation_batches), seq_len as the run uses it
    (null: model_config.max_seq_len)."""
    return {"training_config.seq_len": cfg.seq_len, "training_config.eval_batches": cfg.training.eval_batches}


def remeasure_best(trainer: Trainer, resumed_info: dict | None) -> None:
    """`best` evaluated again on resume where its loss was measured on another validation set, so
    that no later evaluation replaces it, or fails to, by comparing the two (`resumed_info` and
    trainer.resumed_config: the info.json and config.yaml of the checkpoint resumed from, as
    setup.open_run read them):

    - a resume whose seq_len or eval_batches, as used, differ from the checkpoint's (validate.
      validation_batches draws the windows by them): `best` kept its loss on the old windows, which
      a better model could fail to beat for good, or a worse one beat;
    - before 2026-11-29 14:30 (a checkpoint whose info.json has no val_draw_width) a validation
      loss was the mean of per-batch means; on loss-masked data that reads differently from the
      pooled mean over every response token used since."""
    best, resumed, state = trainer.run_dir / "checkpoints" / "best", trainer.resumed_from, trainer.state
    if resumed is None or not run_checkpoints.is_complete(best):
        return
    now, before = validation_set(trainer.cfg), validation_set(trainer.resumed_config)
    redrawn = [key for key, value in now.items() if before[key] != value]
    older = trainer.data.val.loss_mask is not None and "val_draw_width" not in resumed_info
    if not (redrawn or older):
        return
    load_run_weights(trainer, best)
    local = evaluate(trainer.step_model, trainer.val_batches, trainer.device, trainer.cfg.device.dtype)
    loss, healthy = pooled_loss(local, trainer.val_batches, trainer.model, trainer.device, trainer.job)
    load_run_weights(trainer, resumed)
    state.best_val_loss = loss if healthy else math.inf
    recorded = _recorded_loss(best, before if redrawn else None)
    if redrawn:
        was = "" if recorded is None else f" ({recorded:.4f} on the old ones)"
        why = f"on the validation windows of the new {' and '.join(redrawn)}{was}"
    else:
        was = "" if recorded is None else f" ({recorded:.4f} as older versions averaged the batches)"
        why = f"as every response token counts now{was}"
    trainer.out.line(
        f"best (step {run_checkpoints.checkpoint_step(best)}) evaluated again: val loss {loss:.4f} {why}"
    )


def _recorded_loss(best: Path, old_set: dict | None) -> float | None:
    """`best`'s own loss as its info.json records it (the evaluation that saved it), where that was
    measured as the line says: on the `old_set` of windows, or (None) by an older version's average.
    The resumed state's best_val_loss is not it: saved before its step's evaluation, a checkpoint
    holds the best up to then. None where best was measured otherwise (an earlier resume's set), or
    its info.json records no loss of its own step (recorded_loss)."""
    info, saved = run_checkpoints.read_info(best), checkpoint_load.read_config(best)
    measured = run_checkpoints.recorded_loss(best, info, saved.training.eval_every)
    if old_set is None:
        measured_as_said = "val_draw_width" not in info
    else:
        measured_as_said = validation_set(saved) == old_set
    return measured.loss if measured_as_said and measured.at_this_step else None
