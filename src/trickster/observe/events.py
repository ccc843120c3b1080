"""metrics.jsonl: one JSON object per event, appended by the training loop, read by everything else.

Every event has `event`, `step` and `time` (Unix seconds), and the figures readers use of the
types in FIELD_TYPES (a line otherwise is damaged, not an event); by kind, it adds:

    start    params, tokens_per_step, global_batch, world_size, parallel, flops_per_token, init_from
             (a fine-tune's starting checkpoint, else None), device, peak_flops_per_device,
             peak_source, measured_flops_per_device
    train    train_loss, lr, grad_norm, tokens_per_sec, ms_per_step, mfu, peak_memory_gib,
             tokens_seen, skipped_steps
    eval     val_loss, val_perplexity (None for non-finite weights), tokens_seen, sample (if due)
    hellaswag acc, acc_norm, correct, correct_norm, scored, examples, cut, skipped (by reason),
             tokens_seen: HellaSwag during training (training_config.hellaswag_every)
    resume   checkpoint, changed, repairs, after (the last event before it: event, step, time and a
             stopped event's signal or reason and details; since 2026-12-01)
    rollback first_step, last_step, checkpoint, peak_loss, median (its step is the checkpoint's)
    spike    first_step, peak_loss (no checkpoint to roll back to)
    stopped  tokens_seen; signal, or reason (non-finite, out-of-memory, lost-process, loss-spikes,
             max_time) and its details
    end      best_val_loss, skipped_steps

`tokens_seen` is stored on the train, eval, hellaswag and stopped events, so no reader derives it.
`iter_metrics` is the one parser (`read_metrics` lists what it reads); its rule is in its docstring.
`last_event` applies the same rule from the file's end, for the one look that needs only how the
run ended.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from trickster import untrusted
from trickster.errors import disk_errors, write_fix
from trickster.run_checkpoints import run_write_fix

NUMBER = (int, float)  # a float may be NaN or infinite (json writes NaN and Infinity)
OR_NONE = (type(None),)
# The fields the readers compute with or show, and the types they take: a line whose field has
# another type (edited by hand, or by another program) is damaged, not an event, as is one without
# a field its kind has had since it was first written (REQUIRED). A reader failed on either with a
# traceback. (Train and eval events lacked fields in older versions, which the readers allow for.)
FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "event": (str,),
    "step": (int,),
    "time": NUMBER,
    "tokens_seen": (int,),
    "params": (int,),
    "tokens_per_step": (int,),
    "flops_per_token": NUMBER + OR_NONE,
    "device": (str,) + OR_NONE,
    "init_from": (dict,) + OR_NONE,
    "train_loss": NUMBER + OR_NONE,
    "lr": NUMBER + OR_NONE,
    "grad_norm": NUMBER + OR_NONE,
    "tokens_per_sec": NUMBER + OR_NONE,
    "ms_per_step": NUMBER + OR_NONE,
    "val_loss": NUMBER + OR_NONE,
    "val_perplexity": NUMBER + OR_NONE,
    "sample": (str,) + OR_NONE,
    "acc": NUMBER,
    "acc_norm": NUMBER,
    "first_step": (int,),
    "last_step": (int,),
    "peak_loss": NUMBER,
    "signal": (str,) + OR_NONE,
    "reason": (str,) + OR_NONE,
    "after": (dict,) + OR_NONE,
}
COMMON = ("event", "step", "time")
REQUIRED = {
    "hellaswag": ("acc", "acc_norm", "tokens_seen"),
    "rollback": ("peak_loss",),
    "spike": ("peak_loss",),
}

# what a failed write of a run's metrics (a full disk, a read-only folder) tells the user to do,
# once the run has a checkpoint (before, run_checkpoints.FIRST_SAVE_FIX: --resume would find nothing)
RESUME_FIX = write_fix(then="continue with --resume")


def disk_fix(run_dir: Path):
    """The fix for a failed write of the metrics of the run in `run_dir` (picked when it fails)."""
    return run_write_fix(run_dir, RESUME_FIX)


class MetricsLog:
    """Appends one JSON object per line; every event carries `event`, `step` and `time`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, step: int, **values) -> dict:
        record = new_event(event, step, **values)
        fix = disk_fix(self.path.parent)
        with disk_errors(str(self.path), fix), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return record


def new_event(event: str, step: int, **values) -> dict:
    """An event as metrics.jsonl holds it: `event`, `step`, the time now, then `values`."""
    return {"event": event, "step": step, "time": round(time.time(), 3), **values}


class NoMetrics:
    """What processes other than rank 0 write: nothing."""

    def write(self, event: str, step: int, **values) -> None:
        pass

    def copy(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(path: str | Path, problems: list[str] | None = None) -> list[dict]:
    """Every event in a metrics.jsonl (none if the file is missing): iter_metrics, as a list."""
    return list(iter_metrics(path, problems))


def iter_metrics(path: str | Path, problems: list[str] | None = None) -> Iterator[dict]:
    """The events of a metrics.jsonl one at a time, reading the file line by line (a long run's
    events are never all in memory at once).

    The one rule: a line that is not an event is skipped, and said in `problems` when a list is
    given. A last line cut short is what a kill while it was written leaves (normal); any other is
    damaged (the file was changed or corrupted since): the events read lack it, and a reader that
    shows figures from them says so. Lines end at "\n" only: an event's text (a sample) may hold
    U+2028 or NEL, which JSON leaves as they are and str.splitlines would take for line ends.
    """
    damaged = DamagedLines()
    for line in metrics_lines(path):
        if line.event is not None:
            yield line.event
        elif not line.cut_short:
            damaged.add(line.number)
        elif problems is not None:
            problems.append(f"the last line of metrics.jsonl is cut short (line {line.number}); skipped")
    if damaged.count and problems is not None:
        problems.insert(0, damaged.note("skipped", "delete {them} to stop this note"))


class DamagedLines:
    """The damaged lines of a metrics.jsonl (not events, not a last line cut short), said in one
    note however many there are: the first three by number, then how many more."""

    def __init__(self):
        self.first: list[int] = []
        self.count = 0

    def add(self, number: int) -> None:
        self.first += [number] if len(self.first) < 3 else []
        self.count += 1

    def note(self, done: str, then: str) -> str:
        """`then` may name the lines as {them} ("it" for one)."""
        then = then.format(them="it" if self.count == 1 else "them")
        if self.count == 1:
            return f"metrics.jsonl line {self.first[0]} is damaged (not an event) and was {done}; {then}"
        numbers = [str(n) for n in self.first] + ([f"{self.count - 3:,} more"] if self.count > 3 else [])
        shown = ", ".join(numbers[:-1]) + " and " + numbers[-1]  # "1 and 2", "1, 2, 3 and 4 more"
        return f"metrics.jsonl lines {shown} are damaged (not events) and were {done}; {then}"


class MetricsLine(NamedTuple):
    number: int  # from 1
    text: str  # as read, with its line end
    event: dict | None  # None: the line is not an event
    # not an event, as a kill while it was written leaves it: the last line, not JSON, without its
    # line end (an event is written with its "\n" at once: a line that has one was written whole)
    cut_short: bool


def metrics_lines(path: str | Path) -> Iterator[MetricsLine]:
    """Every line of a metrics.jsonl but blank ones, parsed (none if the file is missing)."""
    path = Path(path)
    if not path.is_file():
        return
    with open(path, encoding="utf-8", errors="replace", newline="\n") as lines:
        held = None  # the line before: whether it is the last one is known only at the next
        for number, text in enumerate(lines, 1):
            if held is not None:
                yield from _parsed(*held, last=False)
            held = (number, text)
        if held is not None:
            yield from _parsed(*held, last=True)


def last_event(path: str | Path) -> dict | None:
    """The last event of a metrics.jsonl as iter_metrics reads it (lines that are not events are
    skipped), read from the file's end as `tail` reads it: a long run's file holds hundreds of MB,
    and a look at how the run ended needs its last lines only. None when it holds no event (or is
    missing). The lines before that event are not read."""
    path = Path(path)
    if not path.is_file():
        return None
    with open(path, "rb") as f:
        for raw in _lines_from_end(f):
            record = _as_event(raw.decode("utf-8", errors="replace"))
            if record is not None:
                return record
    return None


def _lines_from_end(f, block: int = 1 << 16) -> Iterator[bytes]:
    """The lines of binary file `f`, last first, without their "\n", read backwards a block at a
    time (each twice the one before, so that a long line costs no more than twice its length)."""
    end = f.seek(0, io.SEEK_END)
    if end:
        f.seek(end - 1)
        if f.read(1) == b"\n":
            end -= 1  # the file's last line end: no line follows it
    carry = b""  # the start of the earliest line read so far, whose beginning lies further back
    while True:
        start = max(0, end - block)
        f.seek(start)
        pieces = (f.read(end - start) + carry).split(b"\n")
        carry = pieces.pop(0) if start > 0 else b""
        yield from reversed(pieces)
        if start == 0:
            return
        end, block = start, 2 * block


def _parsed(number: int, text: str, last: bool) -> Iterator[MetricsLine]:
    if not text.strip():
        return
    try:
        record = untrusted.parse(json.loads, text)
    except (ValueError, untrusted.Unreadable):
        yield MetricsLine(number, text, None, cut_short=last and not text.endswith("\n"))
        return
    yield MetricsLine(number, text, record if _is_event(record) else None, cut_short=False)


def _as_event(text: str) -> dict | None:
    """The event a line holds, or None: not JSON, or JSON that is no event (`_is_event`)."""
    try:
        record = untrusted.parse(json.loads, text)
    except (ValueError, untrusted.Unreadable):
        return None
    return record if _is_event(record) else None


def _is_event(record) -> bool:
    """An object with `event`, `step`, `time` and the fields its kind has (REQUIRED), each field
    of FIELD_TYPES of its type there."""
    if not isinstance(record, dict) or not all(name in record for name in COMMON):
        return False
    typed = all(
        isinstance(value, FIELD_TYPES[name]) and not isinstance(value, bool)  # True is an int too
        for name, value in record.items()
        if name in FIELD_TYPES
    )
    return typed and all(name in record for name in REQUIRED.get(record["event"], ()))
