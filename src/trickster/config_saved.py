"""A config.yaml that trickster saved with a run or a checkpoint, read back by a later version.

A later version may refuse a value an earlier one saved, as its limits grow stricter
(`sample_tokens` over 100,000, `learning_rate` over 1), and a file edited by hand may hold a value
of the wrong kind (`learning_rate: abc`, `log_every: true`). What builds the model and its windows
(model_config, training_config.lora, training_config.seq_len) must still pass every check: the
weights are loaded into what it describes. The other settings only steer training, so a saved
value beyond a limit added since is kept as saved, one of the wrong kind is set aside (the setting
takes its default), and generate, serve, eval, info, export, init_from, `runs` and the comparison
a resume makes still read the checkpoint. Training itself validates its own config in full
(config.load_config; a run folder's config.yaml says which keys to set on the command line).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from trickster import untrusted
from trickster.config import SECTION_ALIASES, Config, raw_config, validated
from trickster.config_checks import check_model
from trickster.config_errors import KEPT_AS_SAVED, annotated_kinds, blamed, describe_all, waived
from trickster.config_fitted import fitted_record, recorded_fitted
from trickster.config_yaml import load_yaml, overridden_keys
from trickster.errors import UserError


def read_saved(file: Path, fix: str) -> Config:
    """The config.yaml `file` of a run or checkpoint; `fix` ends the line when it cannot be read or
    the model it describes cannot be built."""
    text = ""
    try:  # as every config is read (dates as text, a key given twice refused, Python's limits named)
        raw = load_yaml(text := file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, untrusted.Unreadable):
        raw = None  # missing, a folder, not UTF-8, not YAML, nested too deeply
    if not isinstance(raw, dict):  # also an empty file, a list or a lone value
        raise UserError(f"{file} is missing or damaged; {fix}")
    model = raw.get("model_config", raw.get("model"))
    # trickster saves the size it resolved: without it (`{}`, a section lost) the model was
    # built from defaults, a ValueError traceback, or a run's page showed them as its own
    if not isinstance(model, dict) or model.get("vocab_size", "auto") == "auto":
        raise UserError(f"{file} is missing or damaged (no model_config.vocab_size); {fix}")
    cfg = saved_config(raw, str(file), fix)
    cfg.fitted_from.update(recorded_fitted(fitted_record(text), cfg))  # a resume keeps them
    return cfg


def described(path: str | None, preset: str | None, overrides: list[str]) -> tuple[Config, list[str]]:
    """A config to describe (`trickster info --config`): a preset or a file read as load_config
    reads it, except that one a run saved is read as a checkpoint's is (its training settings are
    not used to describe the model); with the problems waived in it, to be shown as a note. A
    problem in an override is the command line's, never waived: the user gave it just now."""
    raw, source, saved, _ = raw_config(path, preset, overrides)
    if not saved:
        return validated(raw, source, saved, overrides, own=bool(path)), []
    problems: list[str] = []
    return saved_config(raw, source, "", problems, overridden_keys(overrides)), problems


def saved_config(
    raw: dict[str, Any],
    source: str,
    fix: str,
    waived_problems: list[str] | None = None,
    overridden: Sequence[str] = (),
) -> Config:
    """`raw` as a Config, the settings that do not build the model taken as saved even where a
    limit refuses them, or set aside for their defaults when of the wrong kind (see the module's
    docstring); a problem in what builds it, in one line ending with `fix`. The problems waived are
    added to `waived_problems`, when given. `overridden`: the keys set on the command line, whose
    problems are not waived and are said to come from there."""
    # sections by the names YAML gives them (a config also takes Python's, `training:`): the rules
    # below, and pydantic's error locations, name them so
    aliases = {name: alias for alias, name in SECTION_ALIASES.items()}
    renamed = {aliases.get(key, key): value for key, value in raw.items()}
    raw = renamed if len(renamed) == len(raw) else raw  # both names of one section: validation says so
    try:
        return _checked(Config.model_validate(raw), source, fix, overridden)
    except ValidationError as err:
        errors = err.errors()
    kept = [e for e in errors if not waived(e) or _overridden(e["loc"], overridden)]
    if kept:
        _refuse(describe_all(Config, kept), source, fix, overridden)
    if waived_problems is not None:
        waived_problems += describe_all(Config, errors)
    saved = {(e["loc"][0], e["loc"][1]) for e in errors}
    rest = {s: {k: v for k, v in keys.items() if (s, k) not in saved} for s, keys in raw.items()}
    try:
        cfg = Config.model_validate(rest)  # the keys set aside take their defaults here
    except ValidationError as err:  # a key that checks another (use_wandb) was set aside: none now
        _refuse(describe_all(Config, err.errors()), source, fix, overridden)
    wrong_kind = {(e["loc"][0], e["loc"][1]) for e in errors if e["type"] not in KEPT_AS_SAVED}
    for section, key in saved - wrong_kind:
        if key in type(getattr(cfg, SECTION_ALIASES[section])).model_fields:  # not a dropped key
            _put_back(getattr(cfg, SECTION_ALIASES[section]), key, raw[section][key])
    cfg.set_aside.update({f"{section}.{key}": _as_json(raw[section][key]) for section, key in wrong_kind})
    return _checked(cfg, source, fix, overridden)


def _overridden(loc: tuple, overridden: Sequence[str]) -> bool:
    """Whether a validation error at `loc` is about an override's key, or a key within it."""
    where = ".".join(str(part) for part in loc)
    return any(
        where == key or where.startswith(f"{key}.") or key.startswith(f"{where}.") for key in overridden
    )


def _put_back(section, key: str, value: Any) -> None:
    """The saved value, past validation (which refuses it) and its assignment check: what the
    section's field holds is then what config.yaml says, as `info` prints it and a resume compares it."""
    if isinstance(value, list) and tuple in annotated_kinds(type(section).model_fields[key].annotation):
        value = tuple(value)  # YAML's list of a tuple setting (betas), as validation makes it
    section.__dict__[key] = value


def _as_json(value: Any) -> Any:
    """`value` as JSON holds it (a resume logs it in metrics.jsonl): what JSON has no kind for
    (YAML's `!!binary`, `!!set`) as its text."""
    return json.loads(json.dumps(value, default=str))


def _checked(cfg: Config, source: str, fix: str, overridden: Sequence[str]) -> Config:
    problems = check_model(cfg)
    if problems:
        _refuse(problems, source, fix, overridden)
    return cfg


def _refuse(problems: list[str], source: str, fix: str, overridden: Sequence[str]) -> None:
    """`problems` in one line, said to come from `source`, the command line, or both (blamed)."""
    raise UserError(f"{blamed(source, problems, overridden)}: {'; '.join(problems)}{_then(fix)}") from None


def _then(fix: str) -> str:
    return f"; {fix}" if fix else ""
