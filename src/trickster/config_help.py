"""Every config key, its default and the first sentence of its docstring, as `trickster train
--help` lists them after the options (litgpt's `--help` shows every setting): the docstrings under
the fields in config.py are the one source of both."""

from __future__ import annotations

import re
import textwrap

from pydantic import BaseModel

from trickster.config import Config
from trickster.config_errors import annotated_kinds


def config_keys_help(width: int = 100) -> str:
    lines = ["config keys (KEY=VALUE on the command line, or in a --config file; default in brackets):"]
    for key, default, doc in _keys(Config):
        line = f"{key} [{default}]: {doc}" if doc else f"{key} [{default}]"
        lines += textwrap.wrap(line, width, initial_indent="  ", subsequent_indent="      ")
    return "\n".join(lines) + "\n"


def _keys(section: type[BaseModel], prefix: str = ""):
    """(dotted key, default, first sentence) of each field, a nested section's fields after its own."""
    for name, field in section.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        inner = next((k for k in annotated_kinds(field.annotation) if issubclass(k, BaseModel)), None)
        if inner is not None and section is Config:
            yield from _keys(inner, f"{key}.")
            continue
        default = "" if field.is_required() else _shown(field.get_default(call_default_factory=True))
        doc = re.split(r"(?<=\.)\s+(?=[A-Z])", " ".join((field.description or "").split()), maxsplit=1)[0]
        yield key, default, doc
        if inner is not None:
            yield from _keys(inner, f"{key}.")


def _shown(value) -> str:
    if isinstance(value, BaseModel) or value is None:
        return "empty" if value is None else "..."
    if isinstance(value, tuple | list):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, str) and value != " ".join(value.split()):
        return repr(value)  # sample_prompt's "\n"
    return str(value).lower() if isinstance(value, bool) else str(value)
