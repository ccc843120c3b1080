"""When a run stopped and when it was resumed, as its metrics.jsonl records it, for `trickster
report`: each `resume` event (the checkpoint it continued from, the settings it changed, and the
run's last event before it, `after`: how the run had stopped), and a `stopped` event that ends the
file (one before a resume is dropped by it, with the other events after its checkpoint).

A resume event written before 2026-12-01 has no `after`: the event before it in the file (the
last one at or before its checkpoint) stands in, and how the run stopped is not known."""

from __future__ import annotations

from dataclasses import dataclass, field

from trickster.units import format_duration

# a stopped event's reason, in words (its details, when the event has them, follow)
REASONS = {
    "max_time": "the time budget (training_config.max_time) was spent",
    "non-finite": "too many updates in a row had a non-finite loss",
    "out-of-memory": "out of memory",
    "lost-process": "another process of the job was lost",
    "loss-spikes": "another loss spike after max_rollbacks rollbacks",
    "disk-full": "the disk was full",
}
DETAILS = ("during", "file", "checkpoint")  # a stopped event's, named after its reason
# what how_it_stopped reads of an event: all that a `resume` event's `after` keeps of the last one
AFTER = ("event", "step", "time", "signal", "reason", *DETAILS)


@dataclass
class Stops:
    """The rows (time, step, what happened), oldest first, gathered event by event (`add`)."""

    rows: list[tuple[float, int, str]] = field(default_factory=list)
    resumes: int = 0
    _previous: dict | None = None  # the event before the one added

    def add(self, r: dict) -> None:
        if r["event"] == "stopped":
            self.rows.append((r["time"], r["step"], how_it_stopped(r)))
        elif r["event"] == "resume":
            self._resumed(r)
        self._previous = r

    def _resumed(self, r: dict) -> None:
        self.resumes += 1
        after = r.get("after")
        recorded = isinstance(after, dict) and _is_point(after)
        before = after if recorded else self._previous
        seen = self.rows[-1][:2] if self.rows else None
        if recorded and seen != (after["time"], after["step"]):  # the resume cut its stop from the file
            self.rows.append((after["time"], after["step"], how_it_stopped(after)))
        what = f"resumed from checkpoints/{r.get('checkpoint')}"
        if before is not None:
            what += f", {format_duration(max(0.0, r['time'] - before['time']))} after its last event"
            if before["step"] > r["step"]:
                what += f" (steps {r['step'] + 1:,} to {before['step']:,} trained again)"
        changed = r.get("changed")
        if isinstance(changed, dict) and changed:
            what += "; changed: " + ", ".join(f"{key} {_pair(value)}" for key, value in changed.items())
        self.rows.append((r["time"], r["step"], what))


def how_it_stopped(r: dict) -> str:
    """A run's last event before a resume (or the file's end), as how the run stopped there."""
    kind = r["event"]
    if kind == "stopped":
        if r.get("signal"):
            return f"stopped by {r['signal']} (a checkpoint of this step saved)"
        reason = r.get("reason")
        said = REASONS.get(reason, str(reason))
        details = [f"{key} {r[key]}" for key in DETAILS if r.get(key)]
        return f"stopped: {said}" + (f" ({', '.join(details)})" if details else "")
    if kind == "end":
        return "finished its steps"
    return f"the process ended after this {kind} event, with no word (killed, or the machine stopped)"


def _is_point(r: dict) -> bool:
    return (
        isinstance(r.get("event"), str)
        and isinstance(r.get("step"), int)
        and isinstance(r.get("time"), (int, float))
    )


def _pair(value) -> str:
    if isinstance(value, list) and len(value) == 2:
        return f"{value[0]} -> {value[1]}"
    return str(value)
