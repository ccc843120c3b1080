"""The paths a config names (data_config.path, training_config.init_from and hellaswag_file,
logging_config.output_dir), and the W&B project it names, checked as the config is read."""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationInfo

NAME_MAX = 255  # bytes in one name of a path, on the file systems people train on (ext4, XFS, APFS)


def typed_as_text(annotation: object, value: str) -> bool:
    """Whether an override's value is kept as typed, not read as YAML: a text setting's, and an
    empty one of a path that may be none (init_from, hellaswag_file, data_config.path). An unset
    shell variable (`training_config.init_from=$BASE`) read as null trained from scratch, the
    fine-tune asked for silently dropped; kept, nameable_path refuses it as an empty path."""
    return annotation is str or (annotation == (str | None) and not value.strip())


def nameable_path(value: str | None) -> str | None:
    """A path the file system can name: no NUL character and no name in it longer than NAME_MAX
    bytes (the OS refuses both, which came out as a traceback when the path was first used). Nor an
    empty one (an unset shell variable: `logging_config.output_dir=$RUN`), which names the current
    folder, never what was meant: a run was trained into it."""
    if value is None:
        return value
    if not value.strip():
        raise ValueError("an empty path (an unset shell variable?); give a path, or leave the key out")
    if "\0" in value:
        raise ValueError("a path cannot hold a NUL character; remove it")
    longest = max((len(part.encode("utf-8", "surrogateescape")) for part in Path(value).parts), default=0)
    if longest > NAME_MAX:
        raise ValueError(
            f"a name in the path is {longest:,} bytes long, more than the {NAME_MAX} a file system "
            "allows; choose a shorter path"
        )
    return value


WANDB_FORBIDDEN = "/\\#?%:"


def wandb_project_name(value: str, info: ValidationInfo) -> str:
    """logging_config.wandb_project as W&B takes it (checked before the run starts instead of after
    the model is built), when use_wandb uses it: an older run's config.yaml still loads."""
    if not info.data.get("use_wandb"):
        return value
    if len(value) > 128:
        raise ValueError("string should have at most 128 characters")
    if found := sorted(set(value) & set(WANDB_FORBIDDEN), key=WANDB_FORBIDDEN.index):
        raise ValueError(f"a W&B project name cannot hold {' '.join(found)}; remove it")
    return value
