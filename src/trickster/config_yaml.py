"""The YAML of configs and overrides: PyYAML's safe loader (YAML 1.1, so unquoted yes/no and
on/off are booleans, and `3e-4` without a dot is text that the config reads as a number), refusing
a key given twice and reading a date as the text it is written as; a file that does not parse is
one line naming where."""

from __future__ import annotations

import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from trickster import untrusted
from trickster.config_fitted import fitted_record
from trickster.errors import UserError


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


MERGE = "tag:yaml.org,2002:merge"  # `<<: *defaults`: the keys of another mapping, as defaults


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last one
    silently: a second `max_steps:` further down a file would quietly win)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == MERGE:
                continue  # merged keys are defaults that the mapping's own keys may override
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, typing.Hashable):
                continue  # the safe loader refuses it itself
            if key in seen:
                raise _DuplicateKey(None, None, f"{key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)

    def construct_yaml_int(self, node):
        # 0x... or 0b... of any length is read, and only a message that shows it would fail
        return untrusted.checked_int(super().construct_yaml_int(node))

    def construct_object(self, node, deep=False):
        try:
            return super().construct_object(node, deep)
        except (ValueError, KeyError, IndexError) as err:  # PyYAML's, on a value its tag does not fit
            if untrusted.digit_limit(err):  # named by untrusted.parse
                raise
            # `!!int abc`, `!!bool maybe`, `!!timestamp 2024-13-01`: a traceback from int(), a dict, datetime
            why = f" ({err})" if isinstance(err, ValueError) else ""
            problem = f"{node.value!r} cannot be read as !!{node.tag.rsplit(':', 1)[-1]}{why}"
            raise yaml.constructor.ConstructorError(None, None, problem, node.start_mark) from None


_UniqueKeyLoader.add_constructor("tag:yaml.org,2002:int", _UniqueKeyLoader.construct_yaml_int)


TIMESTAMP = "tag:yaml.org,2002:timestamp"
# No setting is a date: `learning_rate: 2024-01-01` stays the text it was written as, which the
# error line shows as written (a datetime.date showed as `datetime.date(2024, 1, 1)`), and a
# prompt or a folder named 2024-01-01 is taken as text, as a value of a text setting should be.
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != TIMESTAMP]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def load_yaml(text: str) -> Any:
    """`text` as YAML; a key given twice or a malformed text raise yaml.YAMLError, one that Python
    cannot hold (nested too deeply, too many digits) untrusted.Unreadable."""
    return untrusted.parse(
        lambda text: yaml.load(text, Loader=_UniqueKeyLoader),  # noqa: S506 (a SafeLoader)
        text,
        "lists or mappings",
    )


def overridden_keys(overrides: Sequence[str]) -> list[str]:
    """The dotted keys that `section.key=value` overrides set: a problem with one of them is the
    command line's (config_errors.blamed), and a saved config never waives it (config_saved)."""
    return [override.partition("=")[0].strip() for override in overrides]


def parse_yaml(text: str, source: str) -> dict[str, Any]:
    """A config file's sections; `source` names it in the error line."""
    try:
        raw = load_yaml(text)
    except untrusted.Unreadable as err:
        raise UserError(f"{source} {err.reason}; fix the file") from None
    except _DuplicateKey as err:
        mark = err.problem_mark
        raise UserError(
            f"{source}: {err.problem} (again at line {mark.line + 1}); keep one of them"
        ) from None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow, such as NUL
        raise UserError(
            f"{source}: character {chr(err.character)!r} at offset {err.position} cannot be in YAML "
            "(only printable characters, tabs and line breaks); remove it"
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
    # top-level x- keys hold what other keys take with a merge key (`x-base: &base {...}`, then
    # `<<: *base`), as in Docker Compose: an anchor needs a key, and any other would be no section
    return {k: v for k, v in raw.items() if not (isinstance(k, str) and k.startswith(EXTENSION))}


EXTENSION = "x-"  # the start of a top-level key that is no section


MAX_CONFIG_BYTES = 1 << 20  # a config is a few KB of YAML; presets are under 2 KB
# the first line of the config.yaml a run saves (and each of its checkpoints): read back, its
# training settings past a limit of a later version are named with the overrides that continue it
SAVED_MARK = "# saved by trickster with a run: the settings it trains with\n"


def read_config_file(path: Path) -> tuple[dict[str, Any], bool, dict[str, Any]]:
    """The sections of the config file `path`, whether a run saved it (SAVED_MARK, or, written
    before the mark, where a run keeps it: beside its manifest.json and checkpoints/, or in a
    checkpoint beside info.json), and in one a run saved its record of the settings it fitted
    (config_fitted.fitted_record; {} in any other). A file that is not one, or too big to be one,
    is one line."""
    if path.is_dir():
        raise UserError(f"config file {path} is a folder; pass a YAML file to --config")
    if path.exists() and not path.is_file():  # a FIFO or a device: reading may never end
        raise UserError(f"config file {path} is not a regular file; pass a YAML file to --config")
    if not path.is_file():
        raise UserError(f"config file {path} not found; pass an existing YAML file to --config")
    if path.stat().st_size > MAX_CONFIG_BYTES:  # PyYAML reads ~1 MB/s: 50 MB looked like a hang
        raise UserError(
            f"config file {path} is {path.stat().st_size:,} bytes, more than the "
            f"{MAX_CONFIG_BYTES:,} a config needs; pass the right file to --config"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(
            f"{path} is not UTF-8 text (bad byte at offset {err.start}); save it as UTF-8"
        ) from None
    folder = path.parent
    unmarked_run = (folder / "manifest.json").is_file() and (folder / "checkpoints").is_dir()
    unmarked_checkpoint = (folder / "info.json").is_file() and folder.parent.name == "checkpoints"
    marked = text.lstrip("\ufeff").startswith(SAVED_MARK.rstrip("\n"))  # an editor's BOM or CRLF too
    unmarked = path.name == "config.yaml" and (unmarked_run or unmarked_checkpoint)
    saved = marked or unmarked
    return parse_yaml(text, str(path)), saved, fitted_record(text) if saved else {}
