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
    if started := _started_in(folder, out):
        raise UserError(
            f"{config_path} is the config of the run in {folder}, whose logging_config.output_dir {out} "
            f"is relative to {started}, where the run started, as its other relative paths may be; run "
            f"the command from there (cd {started}), or add --out {folder} (nothing was changed)"
        )
    raise UserError(
        f"{config_path} is the config of the run in {folder}, but its logging_config.output_dir is "
        f"{out} (the folder was moved or copied, or the command runs from another folder); add "
        f"--out {folder} to continue the run in {folder}, or --out {out} for that one (nothing was changed)"
    )


def _started_in(folder: Path, out: Path) -> Path | None:
    """The folder a run in `folder` was started from, when its relative output_dir `out` leads there
    from it (runs/s1 of /home/me/stories/runs/s1: /home/me/stories); None for a moved or copied one."""
    if out.is_absolute() or ".." in out.parts:
        return None
    whole = folder.resolve()
    if len(whole.parts) <= len(out.parts) or whole.parts[-len(out.parts) :] != out.parts:
        return None
    return whole.parents[len(out.parts) - 1]
