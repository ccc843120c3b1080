"""The record a run's config.yaml keeps of the settings the run fitted to itself (train/fitted.py),
each with its value before and the value fitted, and that record read back (Config.fitted_from).
It is a comment, the line under the file's first (config_yaml.SAVED_MARK), which YAML skips: every
reader of the file, earlier versions of trickster among them, reads the file as before.

    # fitted to this run, [before, fitted] (a run from this file fits them afresh): {...}

where {...} is JSON, as {"training_config.eval_every": [250, 12], "training_config.save_every": [500, 12]}.

A run started from a saved config.yaml (`--config RUN/config.yaml`, as a fine-tune starts from its
base's) takes the settings the user does not give as a preset's, and fitted.py refits only one
that does not fit the run. The 12 that tiny's eval_every and save_every became in a 60-step run
fit in 300 steps: a 300-step fine-tune from that file was evaluated and saved every 12 steps, 25
times, and a 20-step try's warmup of 2 steps held for 10,000. With the record, such a run fits
them afresh from their values before (the preset's or the defaults), as a run of the preset does.

A setting the file no longer holds as fitted (edited since) is taken as the file has it, and one
the user gives on the command line is theirs (Config.gave); an entry that does not read as a value
of its setting is ignored, and so is a record that is not JSON. A file without the record (saved
before it, or a config of one's own) is read as it always was. A resume keeps the values its
checkpoint trained with (fitted.py), and the record of its checkpoint's config.yaml with them, but
for those a changed max_steps fits again.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from trickster import untrusted

if TYPE_CHECKING:  # config imports this module
    from trickster.config import Config

FITTED_MARK = "# fitted to this run, [before, fitted] (a run from this file fits them afresh): "


def fitted_line(cfg: Config) -> str:
    """The record of the settings cfg's run fitted, as config.yaml's line; "" where it fitted none."""
    if not cfg.fitted_from:
        return ""
    saved = cfg.to_dict()
    record = {key: [before, _saved_value(saved, key)] for key, before in cfg.fitted_from.items()}
    return f"{FITTED_MARK}{json.dumps(record)}\n"


def recorded_fitted(record: dict[str, Any], cfg: Config) -> dict[str, Any]:
    """The settings that `record` (fitted_record of a config.yaml a run saved, read as `cfg`) says
    its run fitted and that cfg still holds as fitted, each with its value before."""
    if not record:  # a preset, a config of one's own, or a run's that fitted nothing
        return {}
    saved, fitted_from = cfg.to_dict(), {}
    for key, entry in record.items():
        if not (isinstance(entry, list) and len(entry) == 2) or _saved_value(saved, key) != entry[1]:
            continue
        before = _as_setting(cfg, key, entry[0])
        if before is not _UNREADABLE:
            fitted_from[key] = before
    return fitted_from


_UNREADABLE = object()  # a value before that its setting refuses, or a key that names no setting


def fitted_record(text: str) -> dict[str, Any]:
    """The record among the comment lines that open `text`, a config.yaml, as it is written (checked
    by recorded_fitted); {} when there is none, or none that reads as JSON's mapping."""
    for line in text.lstrip("\ufeff").splitlines():
        if not line.startswith("#"):
            return {}
        if line.startswith(FITTED_MARK):
            try:
                record = untrusted.parse(json.loads, line.removeprefix(FITTED_MARK))
            except (ValueError, untrusted.Unreadable):
                return {}
            return record if isinstance(record, dict) else {}
    return {}


def _saved_value(saved: dict[str, Any], key: str) -> Any:
    """The value of the dotted `key` (`training_config.eval_every`) in a config as config.yaml holds it."""
    section, _, name = key.partition(".")
    keys = saved.get(section)
    return keys.get(name, _UNREADABLE) if isinstance(keys, dict) else _UNREADABLE


def _as_setting(cfg: Config, key: str, value: Any) -> Any:
    """`value` as the setting the dotted `key` names takes it (validated, as an assignment would);
    _UNREADABLE when it refuses it."""
    section_name, _, name = key.partition(".")
    names = {field.alias: field_name for field_name, field in type(cfg).model_fields.items()}
    if section_name not in names:
        return _UNREADABLE
    probe = getattr(cfg, names[section_name]).model_copy()
    if name not in type(probe).model_fields:
        return _UNREADABLE
    try:
        setattr(probe, name, value)
    except ValidationError:
        return _UNREADABLE
    return getattr(probe, name)
