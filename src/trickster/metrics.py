"""What a run writes about itself: metrics.jsonl (one JSON object per event) and manifest.json."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from trickster.errors import UserError, disk_errors


class MetricsLog:
    """Appends one JSON object per line; every event carries `event`, `step` and `time`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, event: str, step: int, **values) -> None:
        record = {"event": event, "step": step, "time": round(time.time(), 3), **values}
        fix = "free disk space or make the run folder writable, then continue with --resume"
        with disk_errors(str(self.path), fix), open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")


class NoMetrics:
    """What processes other than rank 0 write: nothing."""

    def write(self, event: str, step: int, **values) -> None:
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


def git_sha() -> str | None:
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def run_manifest(device: torch.device) -> dict:
    """Enough to reproduce or explain a run: code version, library versions, machine."""
    import numpy
    import safetensors

    from trickster import __version__

    manifest = {
        "trickster": __version__,
        "git_sha": git_sha(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "safetensors": safetensors.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        manifest["gpu"] = torch.cuda.get_device_name(device)
        manifest["cuda"] = torch.version.cuda
    return manifest
