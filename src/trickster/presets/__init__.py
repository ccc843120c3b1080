"""The presets: a YAML config for each size of model, from tiny to gpt2-small."""

from __future__ import annotations

from importlib import resources

from trickster.errors import UserError, did_you_mean


def preset_names() -> list[str]:
    files = resources.files("trickster.presets").iterdir()
    return sorted(f.name.removesuffix(".yaml") for f in files if f.name.endswith(".yaml"))


def preset_text(name: str) -> str:
    if name not in preset_names():
        hint = did_you_mean(name, preset_names())
        raise UserError(f"unknown preset '{name}'{hint}; choose one of {', '.join(preset_names())}")
    return resources.files("trickster.presets").joinpath(f"{name}.yaml").read_text()
