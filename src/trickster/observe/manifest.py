"""manifest.json: enough to reproduce or explain a run (code version, libraries, machine)."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import torch


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
