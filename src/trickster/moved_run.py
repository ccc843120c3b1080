"""A run folder's own config.yaml, resumed after the folder was moved or copied.

config.yaml records logging_config.output_dir as the run was started (`runs/x`, relative to
where the command ran). Resumed from a copy (`runs/x-copy/config.yaml --resume`), or from another
working folder, that names another folder: the old code went on training whatever run sat there
(the original, not the copy) without a word.
"""

from __future__ import annotations

from pathlib import Path

from trickster.config import Config
from trickster.errors import UserError

OUT_KEY = "logging_config.output_dir="


def check_resumed_folder(config_path: str | None, overrides: list[str], cfg: Config, resume: bool) -> None:
    """Refuse a resume whose config.yaml lies in a run folder other than the one it would train in,
    unless --out (or an override of output_dir) says which folder is meant."""
    if config_path is None or not (resume or cfg.training.resume):
        return
    if any(override.startswith(OUT_KEY) for override in overrides):
        return
    folder = Path(config_path).parent
    if not ((folder / "checkpoints").is_dir() or (folder / "metrics.jsonl").is_file()):
        return  # a config file of one's own, not a run's
    out = Path(cfg.logging.output_dir)
    if out.resolve() == folder.resolve():
        return
    raise UserError(
        f"{config_path} is the config of the run in {folder}, but its logging_config.output_dir is "
        f"{out} (the folder was moved or copied, or the command runs from another folder); add "
        f"--out {folder} to continue the run in {folder}, or --out {out} for that one (nothing was changed)"
    )
