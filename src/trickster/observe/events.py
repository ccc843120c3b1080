"""metrics.jsonl: one JSON object per event, appended by the training loop, read by everything else."""

from __future__ import annotations

import json
import time
from pathlib import Path

from trickster.errors import UserError, disk_errors


class MetricsLog:
    """Appends one JSON object per line; every event carries `event`, `step` and `time`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, step: int, **values) -> dict:
        record = {"event": event, "step": step, "time": round(time.time(), 3), **values}
        fix = "free disk space or make the run folder writable, then continue with --resume"
        with disk_errors(str(self.path), fix), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return record


class NoMetrics:
    """What processes other than rank 0 write: nothing."""

    def write(self, event: str, step: int, **values) -> None:
        pass

    def close(self) -> None:
        pass


def read_metrics(path: str | Path) -> list[dict]:
    """All events; a last line cut short by a crash (the process killed mid-write) is dropped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise UserError(f"{path} line {number} is damaged; delete that line and run again") from None
    return records
