"""untrusted.parse: the two limits Python's parsers hit on text from outside, named as one reason
(checked here on json.loads and the config's YAML loader); every other error stays the parser's."""

from __future__ import annotations

import json
import sys

import pytest
import yaml

from trickster import untrusted
from trickster.config_yaml import load_yaml

DIGITS = f"holds an integer of more than {sys.get_int_max_str_digits():,} digits, too long to read"


@pytest.mark.parametrize(
    ("load", "text", "reason"),
    [
        (json.loads, "[" * 100_000 + "]" * 100_000, "nests arrays or objects too deeply to read"),
        (json.loads, '{"n": ' + "9" * 5000 + "}", DIGITS),
        (load_yaml, "a: " + "[" * 10_000 + "]" * 10_000, "nests lists or mappings too deeply to read"),
        (load_yaml, "a: " + "9" * 5000, DIGITS),
        (load_yaml, "a: 0x" + "f" * 5000, DIGITS),  # read whole (base 16), unprintable in decimal
        (load_yaml, "a: 0b" + "1" * 20_000, DIGITS),
    ],
)
def test_the_limits_are_named(load, text, reason):
    with pytest.raises(untrusted.Unreadable) as raised:
        untrusted.parse(load, text) if load is json.loads else load(text)
    assert raised.value.reason == reason


def test_what_is_within_the_limits_or_another_error_is_the_parsers_own():
    limit = sys.get_int_max_str_digits()
    assert untrusted.parse(json.loads, "9" * limit) == int("9" * limit)
    assert load_yaml("a: 0x" + "f" * 100) == {"a": 16**100 - 1}
    with pytest.raises(json.JSONDecodeError):
        untrusted.parse(json.loads, "{")
    # not 'an integer too long', nor a traceback (an untagged date is text: config_yaml)
    for tagged in ("!!timestamp 2024-13-01", "!!int abc", "!!bool maybe", '!!int ""'):
        with pytest.raises(yaml.YAMLError, match=r"cannot be read as !!"):
            load_yaml(f"a: {tagged}")
