"""What a training run builds before its first step: its data, checked (prepared_data), the run
folder (new, or resumed), the model wrapped for the job, the run's own files and the header it
prints (announce). Used by loop.Trainer."""

from __future__ import annotations

import contextlib
import functools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import torch

from trickster import run_checkpoints
from trickster.atomic import replace_file
from trickster.config import Config, save_config
from trickster.config_errors import spelled
from trickster.data.loader import PreparedData, check_windows, load_data
from trickster.errors import UserError, disk_errors
from trickster.model.flops import trained_parameters
from trickster.model.transformer import Transformer
from trickster.model.vocab import vocab_note
from trickster.observe import stops
from trickster.observe.events import last_event, new_event
from trickster.plural import counted
from trickster.train import checkpoint_load, checksums, dist, weight_loading
from trickster.train.console import Console
from trickster.train.finetune import model_vocab, setup_finetuning
from trickster.train.fitted import fitted_config, schedule_on_resume
from trickster.train.memory import allocation_refused, check_fits, check_validation_set
from trickster.train.rank0 import on_main
from trickster.train.resume import (
    RESUME_READS,
    changed_fix,
    finished_line,
    metrics_cut_back,
    open_run_dir,
    refuse_done,
)
from trickster.train.resume_checks import check_data_first, check_resumable, refuse_init_from_on_scratch
from trickster.train.run_lock import run_folder_fix
from trickster.train.state import TrainResult, TrainState

if TYPE_CHECKING:  # loop imports this module
    from trickster.train.loop import Trainer


class Finished(Exception):  # not an error: the run has nothing left to do
    """`resume: auto` in a run folder whose run has done its max_steps and ended (resume.has_ended):
    its line is printed, nothing in the folder changes, and train() returns `result` (the command
    exits with status 0), on every process of a job alike."""

    def __init__(self, result: TrainResult):
        super().__init__(str(result.run_dir))
        self.result = result


def prepared_data(
    cfg: Config, resume, device: torch.device, job: dist.Dist
) -> tuple[Config, PreparedData, checkpoint_load.CheckpointFiles | None]:
    """`cfg` with the model's vocabulary set from the data's tokenizer, the prepared data, and a
    fresh fine-tune's init_from files, read once (finetune.model_vocab). Checked before the run
    folder is touched: on a resume, the run's tokenizer first; then windows of seq_len tokens, a
    model that fits the device's memory, and a validation set that fits the RAM."""
    if cfg.data.path is None:
        raise UserError("no data: set data_config.path or pass --data DIR (from `trickster data prepare`)")
    data = load_data(cfg.data.path)
    on_main(job, check_data_first, Path(cfg.logging.output_dir), resume, data)
    cfg, base = model_vocab(cfg, data.tokenizer, resume)
    check_windows(data, cfg.seq_len)
    check_fits(cfg, device, job)
    check_validation_set(cfg, job)
    return cfg, data, base


def open_run(
    cfg: Config, data: PreparedData, resume, job: dist.Dist, out: Console
) -> tuple[Config, Path | None, Config | None, dict | None, list[str], dict]:
    """The config to train with (the settings the user left to a preset or a saved config fitted
    to the run, or kept as its checkpoint has them: fitted.py), the checkpoint to resume from (or
    None) with its config.yaml and info.json as read (once per resume: passed on to what needs
    them), the lines to print after the header (the repairs made in the folder; on a new run, the
    settings fitted), and the settings that changed since that checkpoint. Rank 0 looks; every
    process gets its answer. A run that has done its steps: --resume refuses in one line,
    `resume: auto` raises Finished."""
    run_dir, max_steps = Path(cfg.logging.output_dir), cfg.training.max_steps
    resumed_from, info, repairs, done = on_main(job, open_run_dir, run_dir, resume, max_steps)
    saved = checkpoint_load.read_config(resumed_from) if resumed_from is not None else None
    cfg, fitted = fitted_config(cfg, data, saved)  # before the changes since the checkpoint are found
    changed = check_resumable(resumed_from, saved, info, cfg, data) if resumed_from is not None else {}
    if resumed_from is not None and (resume is True or not done):  # auto: past a max_steps lowered since
        refuse_done(resumed_from, info["step"], run_dir, max_steps, done, saved.training.max_steps)
    if done:  # `auto`, as a requeue script reruns it: the checkpoint is this run's (checked above)
        out.line(finished_line(resumed_from, info["step"], run_dir))
        state = _finished_state(resumed_from, info, saved)
        raise Finished(TrainResult(cfg, run_dir, state, None, _params(cfg), True))
    if resumed_from is not None:  # after refuse_done and Finished: a run done says so first
        refuse_init_from_on_scratch(resumed_from, saved, cfg)
    return cfg, resumed_from, saved, info, repairs + fitted, changed


@contextlib.contextmanager
def resume_verified(
    job: dist.Dist, checkpoint: Path | None, run_dir: Path, info: dict | None
) -> Iterator[None]:
    """The block loads the checkpoint the run resumes from (None: a fresh start, nothing to check)
    on every process, while rank 0 sums the files a resume reads (RESUME_READS) in other threads
    (checksums.verified): each file is read for its sum beside its load, not summed first and read
    again. Once the block has loaded everything, every process gets rank 0's verdict: a changed
    file stops them all with one line naming the newest intact checkpoint (resume.changed_fix)
    before anything loaded is used. A load that fails on rank 0 meanwhile is refused as changed
    where a file is (verified), without a meeting (the others may be anywhere in the block: they
    fail in their own words, or find rank 0 gone)."""
    if checkpoint is None:
        yield
        return
    refusal = None
    if job.is_main:
        loaded = False
        try:
            with checksums.verified(
                checkpoint, RESUME_READS, functools.partial(changed_fix, checkpoint, run_dir), info
            ):
                yield
                loaded = True
        except UserError as refused:
            if not loaded:  # the block's own error, or the line in its place
                raise
            refusal = refused
    else:
        yield
    on_main(job, _raise_refusal, refusal)


def _raise_refusal(refusal: UserError | None) -> None:
    if refusal is not None:
        raise refusal


def _finished_state(checkpoint: Path, info: dict, saved: Config) -> TrainState:
    """Where a finished run stands, from its checkpoint's info.json and config.yaml (`saved`;
    trainer.pt is not read)."""
    best = info.get("best_val_loss")
    measured = run_checkpoints.recorded_loss(checkpoint, info, saved.training.eval_every)
    return TrainState(
        step=info["step"],
        tokens_seen=info.get("tokens_seen") or 0,
        best_val_loss=math.inf if best is None else best,
        last_val_loss=measured.loss,
        last_val_step=measured.measured_at,
    )


def _params(cfg: Config) -> int:
    return trained_parameters(cfg.model, cfg.training.lora)


def build_model(
    cfg: Config,
    data: PreparedData,
    job: dist.Dist,
    device: torch.device,
    resumed_from,
    out: Console,
    base: checkpoint_load.CheckpointFiles | None = None,
    resumed_info: dict | None = None,
) -> tuple[Transformer, torch.nn.Module, dict | None]:
    """The plain model (weights restored before it is wrapped), the module a step calls, and
    the checkpoint a fine-tune started from (finetune.origin; None from scratch). `base`: the
    init_from checkpoint's files, if read already (finetune.model_vocab); `resumed_info`: the
    info.json of `resumed_from`, as open_run read it."""
    with allocation_refused(cfg, device, job):
        model = Transformer(cfg.model).to(device)
        # init_from weights (not on resume: the checkpoint has them), LoRA adapters; else nothing
        resuming = resumed_from is not None
        origin = setup_finetuning(model, cfg, data.tokenizer, base, out.line, resuming)
    if resumed_from is not None:
        weight_loading.load_weights(model, resumed_from / run_checkpoints.WEIGHTS)
        origin = resumed_info.get("init_from")  # recorded when the run began
    model.checkpoint_activations = cfg.device.activation_checkpointing
    # None (auto) was resolved for the machine by the train command; a library call compiles only
    # when asked
    step_model = dist.parallelize(model, job, device, compile=bool(cfg.device.compile))
    return model, step_model, origin


class Resumed(NamedTuple):
    """Where a run continues from (`checkpoint` None: a fresh start), as write_run_files records it."""

    checkpoint: Path | None
    step: int
    eval_due: bool  # the checkpoint was saved before its step's evaluation, which is done again
    changed: dict  # settings that differ from the checkpoint's: {key: [old, new]}
    repairs: list[str]  # what recovering the run folder put right
    hellaswag_due: bool = False  # as eval_due, for its step's HellaSwag scoring


def write_run_files(
    run_dir: Path, cfg: Config, data: PreparedData, manifest: dict, metrics, resume, resumed: Resumed
) -> list[str]:
    """tokenizer.json, manifest.json, config.yaml; on resume, metrics.jsonl cut back to the
    checkpoint (and before its evaluation, when that is done again) with a `resume` event, put in
    place once the others are written: a resume stopped by a failed write (a full disk, a folder
    in a file's place) leaves metrics.jsonl as it was, events after the checkpoint included
    (rank 0 only). config.yaml, which a resume changes, comes after the two it writes again byte
    for byte on the same machine; the sinks' copy of config.yaml (W&B, TensorBoard) is the same
    config. Returns the notes on damaged lines of metrics.jsonl to print."""
    metrics.train_with(cfg)
    if resumed.checkpoint is None:
        with disk_errors(f"run folder {run_dir}", run_folder_fix(run_dir)):
            _write_run_files(run_dir, cfg, data, manifest)
            if resume:  # nothing to resume: events of an attempt that saved no checkpoint are dropped
                (run_dir / "metrics.jsonl").unlink(missing_ok=True)
        return []
    checkpoint, changed, repairs = resumed.checkpoint.name, resumed.changed, resumed.repairs
    after = _how_it_stopped(run_dir / "metrics.jsonl")  # read before the resume cuts the file back
    event = new_event(
        "resume", resumed.step, checkpoint=checkpoint, changed=changed, repairs=repairs, after=after
    )
    with metrics_cut_back(
        run_dir / "metrics.jsonl", resumed.step, resumed.eval_due, event, resumed.hellaswag_due
    ) as notes:
        with disk_errors(f"run folder {run_dir}", run_folder_fix(run_dir)):
            _write_run_files(run_dir, cfg, data, manifest)
    metrics.copy(event)  # to metrics.csv, TensorBoard, W&B
    return notes


def _how_it_stopped(metrics: Path) -> dict | None:
    """The run's last event before a resume, whose step and time say where and when it stopped
    (and a `stopped` event, why), for the `resume` event's `after`: the resume cuts the events
    after its checkpoint (the stop's own included) from metrics.jsonl."""
    last = last_event(metrics)
    if last is None:
        return None
    return {key: last[key] for key in stops.AFTER if key in last}  # what `trickster report` reads of it


def _write_run_files(run_dir: Path, cfg: Config, data: PreparedData, manifest: dict) -> None:
    data.tokenizer.save(run_dir / "tokenizer.json")
    replace_file(run_dir / "manifest.json", json.dumps(manifest, indent=2))
    save_config(cfg, run_dir / "config.yaml", by_run=True)


def print_header(
    out: Console, cfg: Config, data, total_params, device, tokens_per_step, job, resuming: bool
) -> None:
    t = cfg.training
    if resuming:
        title = "Resuming the fine-tune" if t.init_from else "Resuming"
    else:
        title = "Fine-tuning" if t.init_from else "Training from scratch"
    out.line("=" * 60)
    out.line(f"{title} -> {cfg.logging.output_dir}")
    out.line("=" * 60)
    out.line(f"device: {device} ({cfg.device.dtype})   parameters: {total_params:,}")
    out.line(
        f"data: {data.path} ({data.meta['tokenizer']} tokenizer, {vocab_note(data.tokenizer, cfg)}; "
        f"{len(data.train):,} train / {len(data.val):,} val tokens)"
    )
    if job.active:
        out.line(f"processes: {job.world_size} ({job.mode}, mesh {tuple(job.mesh.shape)} replicate x shard)")
    out.line(
        f"steps: {t.max_steps:,} x {tokens_per_step:,} tokens (global batch "
        f"{tokens_per_step // cfg.seq_len} = {t.batch_size} per process x "
        f"{job.world_size} process(es) x accumulation {t.gradient_accumulation_steps}, x {cfg.seq_len} "
        f"tokens); lr {t.learning_rate} warmup {t.warmup_steps} -> cosine -> {t.min_lr}"
    )


def _evaluations(cfg: Config, draw_width: int, resuming: bool) -> str:
    """When the run evaluates and on what: the first evaluation of a large model on a CPU takes a
    minute before the first step, and what a val loss is measured over says how far to trust it."""
    t = cfg.training
    when = [] if resuming else ["at step 0"]
    if t.eval_every < t.max_steps:
        when.append(f"every {counted(t.eval_every, 'step')}")
    when.append("at the end")
    windows = draw_width * t.eval_batches  # every process's share together
    said = f"{', '.join(when[:-1])} and {when[-1]}" if len(when) > 1 else when[0]
    return (
        f"evaluation: {said}, on the same {windows:,} windows of {cfg.seq_len:,} tokens of the val "
        f"split ({windows * cfg.seq_len:,} tokens)"
    )


def announce(trainer: Trainer, resume, changed: dict, repairs: list[str]) -> None:
    """The run's files and header, what a resume changed or repaired, and (a new run) its `start`
    event: what a Trainer says once it is built."""
    cfg, job, out, data = trainer.cfg, trainer.job, trainer.out, trainer.data
    resumed_from = trainer.resumed_from
    if trainer.saved_processes != job.world_size:
        changed = {**changed, "processes": [trainer.saved_processes, job.world_size]}
    notes = []  # on damaged lines of metrics.jsonl
    if job.is_main:
        step, due = trainer.state.step, trainer.eval_due
        resumed = Resumed(resumed_from, step, due, changed, repairs, trainer.hellaswag_due)
        run_files = (trainer.run_dir, cfg, data, trainer.manifest, trainer.metrics)
        notes = write_run_files(*run_files, resume, resumed)
    resuming = resumed_from is not None
    print_header(out, cfg, data, trainer.params, trainer.device, trainer.tokens_per_step, job, resuming)
    out.line(_evaluations(cfg, trainer.val_draw_width, resuming))
    if resuming:
        out.line(f"resuming from {resumed_from}")
    changes = [f"changed on resume: {key} {spelled(a)} -> {spelled(b)}" for key, (a, b) in changed.items()]
    schedule = schedule_on_resume(changed, cfg, trainer.state.step)  # max_steps changed
    for line in repairs + notes + changes + schedule:
        out.line(line)
    if trainer.batch_note:
        out.line(trainer.batch_note)
    if trainer.hellaswag.enabled:
        out.line(trainer.hellaswag.header())
    elif unused := trainer.hellaswag.unused_note():
        out.line(unused)
    if resuming:
        return
    trainer.metrics.write(
        "start",
        0,
        params=trainer.params,
        tokens_per_step=trainer.tokens_per_step,
        global_batch=trainer.tokens_per_step // cfg.seq_len,
        world_size=job.world_size,
        parallel=job.mode,
        flops_per_token=trainer.token_flops,
        init_from=trainer.origin,
        device=str(trainer.device),
        peak_flops_per_device=trainer.peak.flops,
        peak_source=trainer.peak.source,
        measured_flops_per_device=trainer.peak.measured,  # the matmul ceiling, beside a datasheet peak
    )
