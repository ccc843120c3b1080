"""The YAML of configs and overrides: PyYAML's safe loader (YAML 1.1, so unquoted yes/no and
on/off are booleans, and `3e-4` without a dot is text that the config reads as a number), refusing
a key given twice; a file that does not parse is one line naming where."""

from __future__ import annotations

import typing
from typing import Any

import yaml

from trickster.errors import UserError


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one
    silently: a second `max_steps:` further down a file would quietly win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the safe loader refuses it itself
            if key in seen:
                raise _DuplicateKey(None, None, f"{key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """A config file's sections; `source` names it in the error line."""
    try:
        raw = load_yaml(text)
    except _DuplicateKey as err:
        mark = err.problem_mark
        raise UserError(
            f"{source}: {err.problem} (again at line {mark.line + 1}); keep one of them"
        ) from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or "malformed YAML"
        raise UserError(f"{source}: malformed YAML{where}: {problem}; fix the file") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a mapping of sections (model_config: ..., ...)")
    return raw
