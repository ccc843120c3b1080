"""logging_config.profile_steps: torch.profiler over a few training steps, once, as torchtitan's
profiler does (torchtitan/tools/profiler.py): one Chrome trace per process and, beside it, a table
of the operators that took the time, in RUN_DIR/profile.

The loop enters `steps(trainer)` once and calls its `step()` at the top of each iteration, so the
trace's `ProfilerStep#N` is the console's step N: its optimizer step with the logging, evaluation
and checkpoint that follow it (a loss spike's rollback tells it the step the run went back to). The
step before the window warms the profiler up (torch's schedule: wait, warmup, active). Nothing here
touches the model, the batches or a random generator.
"""

from __future__ import annotations

import contextlib
import os
import signal
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch.profiler import ProfilerAction, ProfilerActivity

from trickster.atomic import remove_leftovers, replace_file
from trickster.errors import write_fix

if TYPE_CHECKING:
    from trickster.train.loop import Trainer

FOLDER = "profile"
# {part}: "" for a window profiled from its first step; "_steps{first}-{last}" for the rest of one a
# resumed run takes, beside the files of the session that took its start
TRACE = (
    "rank{rank}{part}.pt.trace.json.gz"  # *.pt.trace.json.gz: the name TensorBoard's profiler plugin reads
)
TABLE = "rank{rank}{part}_top_ops.txt"
TABLE_ROWS = 30
VIEWERS = "https://ui.perfetto.dev or chrome://tracing"
# the profiler's states in which it writes the trace as it stops
RECORDING = (ProfilerAction.RECORD, ProfilerAction.RECORD_AND_SAVE)


class _NotProfiling:
    def step(self) -> None:
        pass

    def rolled_back(self, step: int) -> None:
        pass


class _Profiling:
    """torch.profiler over the steps of the window this run has still to take, counted as the
    console counts them (ProfilerStep#N is step N), a rollback included."""

    def __init__(self, trainer: Trainer, window: tuple[int, int], done: int):
        self.trainer, self.window = trainer, window
        self.profiler: torch.profiler.profile | None = None
        self._start(done)

    def _start(self, done: int) -> None:
        """A profiler of the window's steps after step `done`, entered."""
        self.first = max(self.window[0], done + 1)
        self.rest = self.first > self.window[0]  # the rest of a window an earlier session began
        self.profiler = _profiler(self.trainer, self.first, self.window[1], done, self.rest)
        self.profiler.__enter__()
        # torchtitan's way to number a resumed run's steps: profile.step() counts on from here
        self.profiler.step_num = done

    def step(self) -> None:
        """The next training step begins; writing the trace after the window's last one is not
        training time."""
        if self.profiler is None:
            return
        with self.trainer.timer.paused():
            if self.profiler.current_action == ProfilerAction.RECORD_AND_SAVE:  # it writes the trace now
                self.say_writing()
            self.profiler.step()

    def rolled_back(self, step: int) -> None:
        """A loss spike's rollback took the run back to `step`. Before the window, the profiler goes
        back with it (it counted on, and profiled other steps than those asked, under their
        numbers). From the window on, the profile ends there: what it recorded is written as it ran,
        the spike's steps under their own numbers; the steps trained again are not profiled (their
        numbers would come twice in one trace, and its table would sum both)."""
        if self.profiler is None:
            return
        begun = self.profiler.current_action in RECORDING or self.profiler.step_num > self.window[1]
        self.close()
        if not begun:
            self._start(step)

    def close(self) -> None:
        """The profiler stopped (once): a window it is recording is written now."""
        if self.profiler is None:
            return
        if self.profiler.current_action in RECORDING:
            self.say_writing()
        profiler, self.profiler = self.profiler, None
        profiler.__exit__(None, None, None)

    def say_writing(self) -> None:
        """The line before the profiler writes its trace: on a big model that takes a minute or more (a
        run stopped in the window said its last line already, and seemed to hang)."""
        trainer, last = self.trainer, min(self.window[1], self.profiler.step_num)
        trace, _ = _files(trainer, self.first, last, self.rest)
        others = " (each process's beside it)" if trainer.job.world_size > 1 else ""
        line = f"writing the profile of steps {self.first} to {last} to {trace}{others}"
        line += " (a large model's can take a minute)"
        if trainer.signals.received is not None:  # a second one ends the process in the middle of it
            name = signal.Signals(trainer.signals.received).name
            line += f"; wait for it: a second {name} stops at once, without it"
        trainer.out.line(line)


@contextlib.contextmanager
def steps(trainer: Trainer) -> Iterator[_Profiling | _NotProfiling]:
    """The profiler of the steps of profile_steps this run has still to take (a run resumed past
    them takes none); entered before the loop's first step."""
    window, done = trainer.cfg.logging.profile_steps, trainer.state.step
    if window is None or window[1] <= done:
        yield _NotProfiling()
        return
    profiling = _Profiling(trainer, window, done)
    trainer.out.line(f"profiling steps {profiling.first} to {window[1]} (they run slower while recorded)")
    try:
        yield profiling
    finally:
        profiling.close()  # stopped in the window: the trace is written now


def _profiler(trainer: Trainer, first: int, last: int, done: int, rest: bool) -> torch.profiler.profile:
    """A profiler of steps `first` to `last` that writes their files when they are done (`_write`)."""
    warmup = 1 if first - 1 > done else 0  # the step before the window, when this run takes it
    cuda = trainer.device.type == "cuda"
    with warnings.catch_warnings():  # torch warns that no warmup skews results: a resume or step 1 has none
        warnings.filterwarnings("ignore", message="Profiler won't be using warmup")
        schedule = torch.profiler.schedule(
            skip_first=first - warmup, wait=0, warmup=warmup, active=last - first + 1, repeat=1
        )
    return torch.profiler.profile(
        activities=[ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * cuda,
        schedule=schedule,  # on the console's step numbers: see step_num in _Profiling._start
        on_trace_ready=lambda done_profiler: _write(done_profiler, trainer, first, last, rest),
        record_shapes=True,
        profile_memory=cuda,  # allocations per operator on the GPU (untested here: no GPU in CI)
    )


def _files(trainer: Trainer, first: int, last: int, rest: bool) -> tuple[Path, Path]:
    """This process's trace and table of steps `first` to `last`. `rest`: the steps are the rest of
    a window that an earlier session began (stopped in it, then resumed): their files are named by
    their steps, so that the earlier session's stay."""
    folder, rank, part = trainer.run_dir / FOLDER, trainer.job.rank, f"_steps{first}-{last}" if rest else ""
    return folder / TRACE.format(rank=rank, part=part), folder / TABLE.format(rank=rank, part=part)


def _write(profiler: torch.profiler.profile, trainer: Trainer, first: int, last: int, rest: bool) -> None:
    """The trace and the table of this process (`_files`), each replacing an older one in one
    rename; a file that cannot be written is said in a line and the run goes on.

    Killed while it writes (a second Ctrl-C), it leaves no trace or table under their names, only
    hidden temporary files (atomic.py's names) beside them, which the next profile there deletes:
    torch's uncompressed export too is written there, not in /tmp, where it stayed for ever."""
    folder, cuda = trainer.run_dir / FOLDER, trainer.device.type == "cuda"
    last = min(last, profiler.step_num)  # an earlier end: a stop, max_time, an error in the window
    trace, table = _files(trainer, first, last, rest)
    exported = folder / f".{trace.name.removesuffix('.gz')}.tmp-{os.getpid()}"
    try:
        folder.mkdir(exist_ok=True)
        remove_leftovers(folder)  # what a profile's writer stopped at once left
        try:
            profiler.export_chrome_trace(str(exported))
            replace_file(trace, _gzipped(exported))
        finally:
            exported.unlink(missing_ok=True)
        replace_file(table, _table(profiler, first, last, trainer.job.rank, cuda))
    except OSError as err:
        fix = write_fix()(err)  # free disk space, make the folder writable, ...
        trainer.out.line(
            f"could not write the profile of steps {first} to {last} ({err.filename or folder}: "
            f"{err.strerror}){'; ' + fix if fix else ''}; training goes on without it"
        )
        return
    others = " (each process's beside it)" if trainer.job.world_size > 1 else ""
    trainer.out.line(
        f"profile of steps {first} to {last}: {trace}{others} (open it in {VIEWERS}); "
        f"the operators that took the time: {table}"
    )


def _table(profiler: torch.profiler.profile, first: int, last: int, rank: int, cuda: bool) -> str:
    where = "GPU" if cuda else "CPU"
    order = "self_device_time_total" if cuda else "self_cpu_time_total"
    header = (
        f"Steps {first} to {last} of process {rank} (torch.profiler): the {TABLE_ROWS} operators with the\n"
        f"most {where} time of their own (Self {where}: not counting the operators they call), summed\n"
        f"over {last - first + 1} step(s). ProfilerStep* is the steps themselves: its self time is\n"
        "Python's, between operators.\n"
    )
    return header + profiler.key_averages().table(sort_by=order, row_limit=TABLE_ROWS) + "\n"


def _gzipped(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The file at `path` gzip-compressed, a chunk at a time (a big model's trace is hundreds of MB;
    compressed about a tenth)."""
    squeeze = zlib.compressobj(wbits=31)  # 16 + 15: the gzip format
    with open(path, "rb") as f:
        while block := f.read(chunk):
            yield squeeze.compress(block)
    yield squeeze.flush()
