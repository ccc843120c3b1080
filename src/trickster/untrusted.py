"""Parsing text that comes from outside (a JSON Lines record, a request body, a config file) past the
two limits Python's own parsers hit before any schema sees the data, each a traceback (or an HTTP
500) where the user should get one line:

- nesting: json.loads and PyYAML recurse once per level of [ or {, so a deep enough document
  raises RecursionError;
- digits: int() refuses a decimal integer of more than sys.get_int_max_str_digits() digits (4,300
  unless set: converting longer ones takes quadratic time, CVE-2020-10735) with a ValueError, and
  str() refuses to write one (an integer read from hexadecimal or binary digits, which int() reads
  at any length, fails only when a message tries to show it).

`parse` names the reason in words that follow the text's name; each caller puts them into its own
line with its own context: the file and line of a record (data/sources.py), the HTTP 400 of a
request (serve/schemas.py), the config file (config_yaml.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any


class Unreadable(Exception):
    """A text that parses but that Python cannot hold; `reason` follows its name: '{where} {reason}'."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def parse(load: Callable[[Any], Any], text: Any, nested: str = "arrays or objects") -> Any:
    """load(text), with its two limits raised as Unreadable (`nested`: what nests, in the format's
    words); any other error is load's own."""
    try:
        return load(text)
    except RecursionError:
        raise Unreadable(f"nests {nested} too deeply to read") from None
    except ValueError as err:
        if not digit_limit(err):  # a JSONDecodeError: load's own
            raise
        raise too_many_digits() from None


def json_problem(err: ValueError) -> str:
    """What json.loads's JSONDecodeError says, with the column of a one-line text (a record): its
    `msg` alone ends some reasons in a dangling 'at' ("Unterminated string starting at")."""
    column = f"column {err.colno}"
    return f"{err.msg} {column}" if err.msg.endswith(" at") else f"{err.msg} at {column}"


def digit_limit(err: BaseException) -> bool:
    """Whether `err` is int()'s or str()'s refusal of too many digits (in its own words, CPython 3.11+)."""
    return isinstance(err, ValueError) and "integer string conversion" in str(err)


def checked_int(value: int) -> int:
    """`value`, unless it has more digits than str() writes (see the module's docstring)."""
    limit = sys.get_int_max_str_digits()  # 0: no limit
    if limit and value.bit_length() > 3 * limit and abs(value) >= 10**limit:  # 10**limit: 3.32 bits a digit
        raise too_many_digits()
    return value


def too_many_digits() -> Unreadable:
    return Unreadable(
        f"holds an integer of more than {sys.get_int_max_str_digits():,} digits, too long to read"
    )
