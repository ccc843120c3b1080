"""Starting in a run folder (held by run_lock.claimed): refuse to overwrite, find the checkpoint
to resume, check it fits this run, and read what older versions wrote in trainer.pt
(loop.Trainer.load_state_dict restores the trainer's state from it). Also `diverged`, the one
line that ends a run whose losses stopped being finite."""

from __future__ import annotations

import contextlib
import itertools
import json
from pathlib import Path

from trickster import run_checkpoints
from trickster.atomic import put_in_place, remove_leftovers, write_aside
from trickster.config_saved import read_saved
from trickster.errors import UserError, disk_errors
from trickster.model import lora
from trickster.observe.events import DamagedLines, MetricsLine, disk_fix, last_event, metrics_lines
from trickster.observe.status import trains_now
from trickster.run_checkpoints import RUN_AGAIN, not_empty_fix
from trickster.train import checkpoint as ckpt
from trickster.train import checkpoint_load, checksums
from trickster.train.run_lock import make_folder, refuse_a_file, run_dir_in_use

# the files of a checkpoint a resume reads (its tokenizer.json is the data's; config.yaml is checked)
RESUME_READS = (run_checkpoints.WEIGHTS, lora.ADAPTERS, "trainer.pt", f"{ckpt.OPTIMIZER}/")


def can_continue(run_dir: Path) -> tuple[Path, int] | None:
    """The newest checkpoint of a run that stopped short of its end (Ctrl-C, a kill, max_time), which
    `trickster train --config RUN/config.yaml --resume` continues, and the max_steps that config
    trains to. None for a folder without one, a run that has finished (has_ended) or that a
    process trains now (its heartbeat), and one whose config.yaml or metrics cannot be read."""
    newest = run_checkpoints.newest(run_dir) if run_dir.is_dir() else None
    if newest is None or trains_now(run_dir):
        return None
    found, info = newest
    try:
        max_steps = read_saved(run_dir / "config.yaml", "").training.max_steps
        return None if has_ended(run_dir, info["step"], max_steps) else (found, max_steps)
    except UserError:
        return None


def open_run_dir(
    run_dir: Path, resume: bool | str, max_steps: int
) -> tuple[Path | None, dict | None, list[str], bool]:
    """Make sure the run may start here; returns the checkpoint to resume from and its info.json
    (read once, by the listing that found it), any repairs, and whether that checkpoint ends a run
    that has done its max_steps (has_ended: then the folder is left as it is, not even tidied)."""
    refuse_a_file(run_dir)
    newest = run_checkpoints.newest(run_dir)
    if resume and newest is not None and has_ended(run_dir, newest[1]["step"], max_steps):
        return *newest, [], True
    repairs = _tidy(run_dir) if resume else []
    if repairs:  # tidying may have put back a checkpoint that a kill left aside (recover)
        newest = run_checkpoints.newest(run_dir)
    found, info = newest or (None, None)
    if not resume and found is not None:
        raise UserError(
            f"{run_dir} already holds a trained run (its newest checkpoint: {found.name}, step "
            f"{info['step']}); pass --resume to continue it (with a larger "
            "training_config.max_steps once it has done its steps), or choose a new folder with --out "
            "(nothing was overwritten)"
        )
    if not resume and run_dir_in_use(run_dir):
        raise UserError(
            f"{run_dir} already exists and is not empty; {not_empty_fix(run_dir)} (nothing was overwritten)"
        )
    if resume is True and found is None:  # a folder not there yet, or empty, needs no other --out
        held = run_dir_in_use(run_dir)
        none = run_checkpoints.none_saved(run_dir, "no complete checkpoint") if held else "it holds no run"
        raise UserError(
            f"nothing to resume in {run_dir}: {none}; set training_config.resume=auto to start the run "
            f"afresh there, or drop --resume and {'choose a new --out' if held else 'start a run there'}"
        )
    make_folder(run_dir / "checkpoints", run_dir)
    return found, info, repairs, False


def changed_fix(found: Path, run_dir: Path) -> str:
    """What the line that refuses to resume from `found` says to do: a resume refuses the checkpoint
    it would continue from if a file it reads (RESUME_READS) no longer has the checksum saved with
    it, as it refuses one damaged beyond reading (setup.resume_verified checks them as they load).
    It never falls back to an older one by itself (that would throw away the training since,
    unasked): the line names the newest intact checkpoint, and every newer one to move out of the
    way first. `final`, `best` and a numbered checkpoint of one step share their weights (hard
    links), so one flipped byte changes them all."""
    in_the_way, intact = [found], None
    for path, info in _resumable(run_dir, found):
        if checksums.first_changed(path, RESUME_READS, info) is None:
            intact = path, info["step"]
            break
        in_the_way.append(path)
    if intact is None:
        fix = "the run has no other intact checkpoint to resume from; start a new run with another --out"
    else:
        names = " and ".join(path.name for path in in_the_way)
        fix = (
            f"move {names} out of {run_dir / 'checkpoints'} to resume from {intact[0].name} (step "
            f"{intact[1]}), the newest intact checkpoint"
        )
    return f"{fix} (nothing was changed)"


def _resumable(run_dir: Path, found: Path) -> list[tuple[Path, dict]]:
    """The checkpoints a resume takes (run_checkpoints.continuable) but `found`, the one refused,
    newest first as run_checkpoints.latest orders them, each with its info.json (read once, for
    its step and sums); one whose info.json is damaged too is left out."""
    others = [path for path in run_checkpoints.continuable(run_dir) if path != found]
    return run_checkpoints.newest_first(run_checkpoints.with_info(others, damaged_left_out=True))


def has_ended(run_dir: Path, step: int, max_steps: int) -> bool:
    """Whether the run's newest checkpoint, saved at `step`, finished it: a run that has nothing left
    to do saved it at (or past) max_steps, and its last event is its `end` at that step. Not
    finished: a run whose last evaluation was cut short (killed after `final` was saved, before its
    `end` event: a resume evaluates again and ends it), one a time budget or a spike's rollback
    stopped (short of max_steps, a `stopped` event last), one given a larger max_steps since."""
    return step >= max_steps and _ended(run_dir / "metrics.jsonl", step)


def finished_line(checkpoint: Path, step: int, run_dir: Path) -> str:
    """What `resume: auto` in a finished run says before it exits with status 0, having changed
    nothing: a requeue script that reruns the same command costs no checkpoint write."""
    return (
        f"{run_dir} already finished at step {step:,} (checkpoints/{checkpoint.name}); nothing to do. To "
        f"train further, resume with a larger training_config.max_steps (e.g. training_config.max_steps="
        f"{2 * step}), or start a new run with --out"
    )


def refuse_done(
    checkpoint: Path, step: int, run_dir: Path, max_steps: int, done: bool, started_with: int | None = None
) -> None:
    """--resume of a run that has done its training_config.max_steps: nothing is left to train, so
    one line says how to train further, before anything in the folder changes (resume: auto, which
    a requeue script reruns until the job is done, says so of a run that ended and ends with status
    0: finished_line). `done`: open_run_dir's answer. A run whose last evaluation was cut short is
    not done (see has_ended), one whose checkpoint is past max_steps is: with `resume: auto` too,
    a run that had not ended (stopped, killed) before max_steps was lowered below its step, which
    would otherwise end with no step trained and no evaluation at its last one. A max_steps below the
    checkpoint's step is said as such (a resume cannot go back), with the max_steps the run was
    `started_with` (its checkpoint's config.yaml) when that is still ahead of it."""
    if step <= max_steps and not done:
        return
    if step > max_steps:
        again = started_with if started_with is not None and started_with > step else 2 * step
        raise UserError(
            f"cannot resume {run_dir} with training_config.max_steps={max_steps}: its newest checkpoint "
            f"({checkpoint.name}) is at step {step:,} already, and a resume cannot go back; set "
            f"training_config.max_steps above {step}, e.g. training_config.max_steps={again}"
            f"{' (as the run was started)' if again == started_with else ''}, or start a new run of "
            f"{max_steps:,} steps with another --out (nothing was changed)"
        )
    raise UserError(
        f"{run_dir} has done its steps: its newest checkpoint ({checkpoint.name}) is at step {step:,} "
        f"and training_config.max_steps is {max_steps:,}; to train further, pass --resume with a larger "
        f"training_config.max_steps, e.g. training_config.max_steps={2 * step} (nothing was changed)"
    )


def _ended(metrics: Path, step: int) -> bool:
    """Whether the run's last event (its last lines read) is its `end` at `step`."""
    last = last_event(metrics)
    return last is not None and last["event"] == "end" and last["step"] == step


def _tidy(run_dir: Path) -> list[str]:
    """Delete what killed writers left in the run folder and its checkpoints (temporary files and
    folders of processes that no longer run, see atomic.leftovers); a line for each, for the log.
    Safe here: the folder is claimed, so no other training process writes in it."""
    removed = [f"removed {path.name}, left by an interrupted write" for path in remove_leftovers(run_dir)]
    return removed + run_checkpoints.recover(run_dir)


def trainer_state(path: Path, mapped: bool = False) -> dict:
    """trainer.pt of the checkpoint at `path` (checkpoint_load.load_trainer_state; `mapped` as
    there), with what older versions did not write filled in (older_trainer_state)."""
    return older_trainer_state(checkpoint_load.load_trainer_state(path, mapped=mapped), path)


def older_trainer_state(trainer: dict, path: Path) -> dict:
    """trainer.pt of the checkpoint at `path` with what older versions did not write filled in as
    they ran (this version's passes unchanged; the dates are those of the changes):

    - `rng`: one state per process; until 2026-11-22 08:08 the list was `rng_per_rank`.
    - `eval_due`: written since 2026-11-29 13:03. From 05:24 that day (when `spikes` came) the
      checkpoint of an evaluation's step was saved before that evaluation; the resume does it again.
    - `hellaswag_due`: written since 2026-11-30, when HellaSwag during training came; none before.
    - `val_draw_width`: since 2026-11-29 14:30; before, batch_size x processes of the run that saved it.
    - `train_state.last_val_step`, since 2026-12-02: the step, if evaluated before the save; else None.
    - The optimizer state by position (until 2026-11-22 07:16) names no parameter: refused.
    """
    if "rng_per_rank" in trainer:
        trainer["rng"] = trainer.pop("rng_per_rank")
    if any(isinstance(key, int) for key in trainer["optimizer"].get("state", {})):
        raise UserError(
            f"cannot resume from {path}: a trickster from before 2026-11-22 07:16 wrote its optimizer "
            f"state by position, which this version cannot continue; start a new run from its weights "
            f"with training_config.init_from={path} and another --out"
        )
    trainer.setdefault("hellaswag_due", False)
    state = trainer["train_state"]
    if all(key in trainer for key in ("eval_due", "val_draw_width")) and "last_val_step" in state:
        return trainer  # this version's: its config.yaml need not be read again (open_run read it)
    saved = checkpoint_load.read_config(path).training
    evaluated_here = path.name == "final" or state["step"] % saved.eval_every == 0
    trainer.setdefault("eval_due", "spikes" in trainer and evaluated_here)
    trainer.setdefault("val_draw_width", saved.batch_size * len(trainer["rng"]))
    state.setdefault("last_val_step", state["step"] if evaluated_here and not trainer["eval_due"] else None)
    return trainer


@contextlib.contextmanager
def metrics_cut_back(path: Path, step: int, eval_due: bool, resume_event: dict, hellaswag_due: bool = False):
    """metrics.jsonl without the events logged after the checkpoint we resume from (and its step's
    evaluation, when `eval_due`, and HellaSwag scoring, when `hellaswag_due`: the resumed run does
    them again), which will be logged again, and
    with `resume_event` after them. It takes the file's place in one rename when the block (which
    writes the run's other files) has succeeded: a kill, or a failed write, before that leaves the
    file as it was. Written aside before the block, so that a full disk stops the resume before any
    file changes. A missing file is created; a link to a device or a pipe (/dev/null) is written
    into (atomic.write_aside). The block gets the notes on damaged lines (_kept_lines) to print."""
    again = ("stopped",) + ("eval",) * eval_due + ("hellaswag",) * hellaswag_due
    notes: list[str] = []
    lines = _kept_lines(path, step, again, resume_event, notes)
    with disk_errors(str(path), disk_fix(path.parent)):
        staging = write_aside(path, lines)  # one event at a time
    try:
        yield notes
    except BaseException:
        if staging is not None:
            staging.unlink(missing_ok=True)
        raise
    with disk_errors(str(path), disk_fix(path.parent)):
        put_in_place(staging, path)


def _kept_lines(path: Path, step: int, again: tuple[str, ...], resume_event: dict, notes: list[str]):
    """The lines a resume keeps, then `resume_event`'s. A damaged line (not an event, and not a last
    line cut short by a kill) is no reason to refuse a resume, whose state lies in the checkpoint:
    it stays as it is among the events kept around it (its readers skip it and say so), or goes
    with the events after the checkpoint when it lies among them (after the last event: on that
    event's side); either way `notes` says so."""
    held: list[MetricsLine] = []  # damaged lines, until the next event says on which side they lie
    kept, left_out, written = DamagedLines(), DamagedLines(), 0
    before = True  # the side of the last event read
    for line in itertools.chain(metrics_lines(path), [None]):  # None: the end, after the last event
        if line is not None and line.event is None:
            held += [] if line.cut_short else [line]
            continue
        record = None if line is None else line.event
        before = before if record is None else record["step"] <= step
        for damaged in held:
            if before:
                written += 1
                kept.add(written)  # its number in the file written
                yield damaged.text if damaged.text.endswith("\n") else damaged.text + "\n"
            else:
                left_out.add(damaged.number)
        held = []
        if record is None or not before or record["event"] == "end":
            continue
        if not (record["step"] == step and record["event"] in again):
            written += 1
            yield json.dumps(record, ensure_ascii=False) + "\n"
    if kept.count:
        notes.append(
            kept.note("kept as found", "report and runs skip {them} (delete {them} to stop their notes)")
        )
    if left_out.count:
        notes.append(left_out.note("left out", "{them} lay among the events after the checkpoint"))
    yield json.dumps(resume_event, ensure_ascii=False) + "\n"


def diverged(run_dir: Path, state) -> UserError:
    """Too many non-finite steps in a row: where to go on from, and what to change first."""
    good = run_checkpoints.latest(run_dir)
    where = f"the last good checkpoint is {good}" if good else run_checkpoints.none_saved(run_dir)
    # with no checkpoint, --resume answers 'nothing to resume' and the folder is no longer empty
    again = "continue with --resume" if good else RUN_AGAIN
    return UserError(
        f"training stopped at step {state.step}: {state.nonfinite_streak} updates in a row had a "
        f"non-finite loss or gradient norm; {where}; lower training_config.learning_rate, keep "
        "training_config.grad_clip on (e.g. 1.0), or use device_config.dtype=bfloat16 instead of "
        f"float16, then {again}"
    )
