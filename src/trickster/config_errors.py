"""Config problems in the user's words: pydantic's validation errors become one line per key,
naming the key as YAML spells it (`training_config.betas[0]`), the value as YAML shows it
(true, null), and the close key or choice the user may have meant."""

from __future__ import annotations

import re
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from trickster.errors import did_you_mean


def annotated_kinds(annotation: Any) -> set[type]:
    """Every type a field's annotation names, through unions, Annotated and containers:
    `tuple[float, float] | None` -> {tuple, float, NoneType}."""
    found = {annotation} if isinstance(annotation, type) else set()
    origin = typing.get_origin(annotation)
    if isinstance(origin, type):
        found.add(origin)
    for arg in typing.get_args(annotation):
        found |= annotated_kinds(arg)
    return found


def section_at(root: type[BaseModel], path: list[str]) -> type[BaseModel] | None:
    """The section class at a dotted path of `root` (`training_config.lora` -> LoraConfig), None
    if not one. The first name is a section's alias, as YAML spells it."""
    aliases = {field.alias or name: field.annotation for name, field in root.model_fields.items()}
    section = aliases.get(path[0])
    for name in path[1:]:
        field = section.model_fields.get(name) if section else None
        kinds = (field.annotation, *typing.get_args(field.annotation)) if field else ()
        section = next((k for k in kinds if isinstance(k, type) and issubclass(k, BaseModel)), None)
    return section


def _field_path(root: type[BaseModel], loc: tuple) -> tuple:
    """A validation error's location without pydantic's union member tags (`int`, `literal[...]`)."""
    path, section = [loc[0]], section_at(root, [str(loc[0])])
    for part in loc[1:]:
        if isinstance(part, int) or (section is not None and part in section.model_fields):
            path.append(part)
            section = section_at(root, [str(p) for p in path if not isinstance(p, int)])
    return tuple(path)


# pydantic's names of union members, as a YAML user would say them
_KINDS = {
    "int": "an integer",
    "constrained-int": "an integer > 0",
    "bool": "true/false",
    "literal['auto']": "auto",
}


def describe_all(root: type[BaseModel], errors: list[dict[str, Any]]) -> list[str]:
    """pydantic's validation errors of `root` (the Config class) as one problem per key, each
    naming the key to change; a value that fails every member of a union is reported once."""
    by_key: dict[tuple, list[dict[str, Any]]] = {}
    pairs: dict[tuple, str] = {}  # a list setting of the wrong shape: one line, however many errors
    for error in errors:
        if (pair := _list_problem(root, error)) is not None:
            by_key.setdefault(pair[0], [])
            pairs.setdefault(pair[0], pair[1])
            continue
        # an unknown key is its own problem: two in one section read "expected foo or bar" as one
        own = error["type"] in ("extra_forbidden", "invalid_key")
        by_key.setdefault(tuple(error["loc"]) if own else _field_path(root, error["loc"]), []).append(error)
    problems = []
    for key, group in by_key.items():
        if key in pairs:
            problems.append(pairs[key])
        elif len(group) == 1:
            problems.append(_describe(root, group[0]))
        else:
            kinds = " or ".join(_KINDS.get(str(e["loc"][-1]), str(e["loc"][-1])) for e in group)
            given = group[0].get("input")
            problems.append(f"{_dotted(key)}: expected {kinds} (got {shown(given)}){_quoted_switch(given)}")
    return problems


def _list_problem(root: type[BaseModel], error: dict[str, Any]) -> tuple[tuple, str] | None:
    """A setting of a fixed number of values (`betas: [0.9, 0.95]`) given as something else or
    with another count: (its key, its line), where pydantic says "a valid tuple", "tuple should
    have at most 2 items" or "field required" at each place missing. None for other errors."""
    if error["type"] not in ("tuple_type", "too_long", "too_short", "missing"):
        return None
    key = _field_path(root, error["loc"])
    key = key[:-1] if isinstance(key[-1], int) else key
    names = [str(part) for part in key]
    section = section_at(root, names[:-1]) if len(names) > 1 else None
    field = section.model_fields.get(names[-1]) if section else None
    kinds = (field.annotation, *typing.get_args(field.annotation)) if field else ()
    count = next((len(typing.get_args(k)) for k in kinds if typing.get_origin(k) is tuple), None)
    if count is None:
        return None
    written = re.match(r"\[[^\]]+\]", field.description or "")  # `[first, last]: record ...`
    example = (
        f", such as {shown(field.default)}" if field.default else f", {written.group()}" if written else ""
    )
    given = shown(error.get("input"))
    return key, f"{_dotted(key)}: input should be a list of {count} in brackets{example} (got {given})"


def _describe(root: type[BaseModel], error: dict[str, Any]) -> str:
    loc = [str(p) for p in error["loc"]]
    dotted = _dotted(error["loc"])
    sections = [field.alias or name for name, field in root.model_fields.items()]
    if error["type"] == "extra_forbidden":
        if len(loc) == 1:
            return f"unknown section '{elided(loc[0])}'{did_you_mean(loc[0], sections)}"
        section = section_at(root, loc[:-1])
        known = list(section.model_fields) if section else []
        hint = did_you_mean(loc[-1], known, prefix=".".join(loc[:-1]) + ".")
        return f"unknown key {elided(dotted)}{hint}"
    if error["type"] == "invalid_key":  # YAML's `1: 2` or `~: 3`: a number or null as a key
        section = section_at(root, loc[:-1]) if len(loc) > 1 else None
        example = next(iter(section.model_fields)) if section else sections[0]
        where = f"{_dotted(error['loc'][:-1])}: " if len(loc) > 1 else ""
        return f"{where}key {shown(error.get('input'))} is not a name; keys are words, such as {example}"
    if error["type"] in ("model_type", "dict_type") and len(loc) == 1:
        return f"{dotted} must be a mapping of keys to values"
    group = section_at(root, loc) if error["type"] == "model_type" else None
    if group is not None:  # pydantic: "a valid dictionary or instance of LoraConfig", a class's name
        keys = ", ".join(f"{name}: ..." for name in group.model_fields)
        return f"{dotted} must be a mapping of keys to values, {{{keys}}} (got {shown(error.get('input'))})"
    hint = ""
    if error["type"] == "value_error":  # raised by a validator here: its own words
        message = str(error["ctx"]["error"])
    elif error["type"] == "bool_type":
        message, hint = "input should be true or false", _quoted_switch(error.get("input"))
    else:
        message = error["msg"][0].lower() + error["msg"][1:]
    if error["type"] == "literal_error" and isinstance(error.get("input"), str):
        choices = re.findall(r"'([^']*)'", error["ctx"]["expected"])
        hint = did_you_mean(error["input"], choices, prefix=f"{dotted}=")
    return f"{dotted}: {message} (got {shown(error.get('input'))}){hint}"


def _dotted(loc: tuple) -> str:
    """`training_config.betas[0]`: list positions in brackets, as the user would index them."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def shown(value: Any) -> str:
    """A value as the user wrote it in YAML: true, false and null, not Python's True and None;
    a long one cut (a 10,000-character value filled the terminal with the one error line)."""
    if isinstance(value, bool) or value is None:
        return spelled(value)
    if isinstance(value, str) and len(value) > SHOWN:
        return f"{value[: SHOWN - 20]!r}... ({len(value):,} characters)"
    if isinstance(value, list | tuple):
        return elided("[" + ", ".join(map(shown, value)) + "]")
    return elided(repr(value))


SHOWN = 80  # characters of a value an error line shows


def spelled(value: Any) -> str:
    """A setting's value as a config file spells it (null, true, false), not as Python prints it:
    what `shown` gives an error line, less its quotes around text and its cut of a long value."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


def elided(text: str) -> str:
    """`text`, or its beginning and how long it is when longer than SHOWN characters."""
    return text if len(text) <= SHOWN else f"{text[: SHOWN - 20]}... ({len(text):,} characters)"


def _quoted_switch(value: Any) -> str:
    """The fix for `progress_bar: "false"`: quoted, YAML's boolean words are text."""
    words = {"true", "false", "yes", "no", "on", "off"}
    return "; write it without quotes" if isinstance(value, str) and value.strip().lower() in words else ""


def blamed(source: str, problems: list[str], overridden: Sequence[str]) -> str:
    """Where `problems` come from, as the line starts: `source` (a file or a preset), the command
    line when each names an `overridden` key, or both: a user looks for a bad value where we say."""
    from_line = [p for p in problems if any(_names(p, key) for key in overridden)]
    if not from_line:
        return source
    return "command line" if len(from_line) == len(problems) else f"{source} and command line"


def _names(problem: str, key: str) -> bool:
    """Whether `problem` is about the override `key`: it names the key in full, or a group the key
    is in below its section (training_config.lora for training_config.lora.rank=4), or the key by
    its last name after naming its section ("training_config.global_batch and global_batch_tokens").
    A name counts whole: training_config.global_batch is not in ...global_batch_tokens."""
    section, _, _ = key.partition(".")
    field = key.rpartition(".")[2]
    parts = elided(key).split(".")
    groups = [".".join(parts[:depth]) for depth in range(2, len(parts))]
    whole = [elided(key), *groups] + ([field] if f"{section}." in problem else [])
    return any(re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", problem) for name in whole)


# What builds the model: a saved config's problem there is never waived (config_saved)
BUILDS_MODEL = {"model_config", "training_config.lora", "training_config.seq_len"}
# pydantic's error types for a value of the right kind that a limit refuses, and for a key a later
# version dropped: a saved config keeps such a value as saved. Any other problem outside what builds
# the model (a wrong type: `learning_rate: abc`, `sample_prompt: 5`) sets the value aside for its default
KEPT_AS_SAVED = {
    "greater_than",
    "greater_than_equal",
    "less_than",
    "less_than_equal",
    "finite_number",
    "string_too_long",
    "too_long",
    "value_error",
    "literal_error",
    "extra_forbidden",
}


def waived(error: dict[str, Any]) -> bool:
    """Whether a saved config's validation `error` may be waived for inference: it is about one
    setting (not a whole section) that does not build the model."""
    loc = error["loc"]
    return len(loc) >= 2 and loc[0] not in BUILDS_MODEL and f"{loc[0]}.{loc[1]}" not in BUILDS_MODEL


def override_within_limits(
    root: type[BaseModel], errors: list[dict[str, Any]], overridden: Sequence[str]
) -> list[str]:
    """For a config.yaml a run saved (`trickster train --config RUN/config.yaml --resume`): the
    training settings it holds that this version refuses (beyond a limit added since, or of a
    wrong kind), not `overridden` yet, and the overrides that set them right (the limit, or the
    default), as one more problem; none when there are none."""
    found = [e for e in errors if waived(e) and e["type"] != "extra_forbidden"]
    keys = list(dict.fromkeys(_dotted(e["loc"][:2]) for e in found))
    keys = [key for key in keys if key not in overridden]
    if not keys:
        return []
    examples = [example for key in keys if (example := _example(root, key, found))]
    example = f", e.g. {' '.join(examples)}" if examples else ""
    return [
        f"to continue the run, set {', '.join(keys)} on the command line within the limits{example} "
        "(its config.yaml is then saved with them)"
    ]


def _example(root: type[BaseModel], key: str, errors: list[dict[str, Any]]) -> str | None:
    """`key=value` for the override that sets `key` right: the limit it passed, or else its default
    (when that is a plain number, switch or word)."""
    bounds = {"less_than_equal": "le", "greater_than_equal": "ge"}
    own = [e for e in errors if _dotted(e["loc"][:2]) == key]
    if all(e["type"] in bounds and len(e["loc"]) == 2 for e in own):
        return " ".join(f"{key}={e['ctx'][bounds[e['type']]]}" for e in own[:1])
    section, name = key.split(".")
    default = section_at(root, [section]).model_fields[name].default
    if isinstance(default, int | float | str) and re.fullmatch(r"[\w.+-]+", shown(default)):
        return f"{key}={shown(default)}"
    return None
