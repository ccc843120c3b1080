"""argparse as every `trickster` command uses it: an error is one line, with the nearest choice
when a name is misspelt, and numbers are read as people write them (1e4, -1_000, 1.5e3)."""

from __future__ import annotations

import argparse
import re
import sys

from trickster.errors import did_you_mean, single_line  # imports nothing heavy
from trickster.units import whole_number


def integer(text: str) -> int:
    """An integer option written as people write big numbers: 10000, 1e4, 1.5e3 (units.whole_number)."""
    try:
        value = whole_number(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{text!r}: {err}") from None
    if isinstance(value, str):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return value


def out_path(text: str) -> str:
    """An --out path: not empty (an unset shell variable, `--out "$DIR"`, gave nothing; the
    commands read "" as their default folder, or as ".", which is never what was meant)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is an empty path; give the path to write")
    return text


def given(what: str):
    """A value that may not be empty: `--text-field "$FIELD"` with FIELD unset gave "", which read as
    the option left out (Parquet's field `text`, TinyStories from the Hub) without a word."""

    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"{text!r} is empty (an unset shell variable?); give {what}")
        return text

    return check


# A negative number in any form float() and `integer` take: -1e3, -1_000, -.5e0, -inf. argparse's
# own pattern knows only -123 and -1.5, and read the others as unknown options ("--steps: expected
# one argument"), so the value never reached the check that says what a valid one is.
_NEGATIVE_NUMBER = re.compile(
    r"-(\d[\d_]*(\.[\d_]*)?|\.\d[\d_]*)(e[-+]?\d[\d_]*)?|-(inf|infinity|nan)", re.IGNORECASE
)


# A command or option people reach for that trickster does not have, (parser prog, word) -> the
# line that says which one does its job; it stands for argparse's own line (an unknown option or
# an invalid command), followed by anything else that line found wrong (_besides).
ELSEWHERE = {
    ("trickster", "merge"): (
        "there is no `trickster merge`: `trickster export RUN --out DIR` merges a LoRA run's "
        "adapters into the weights it writes"
    ),
    ("trickster export", "--merge"): (
        "unrecognized arguments: --merge (export merges a LoRA run's adapters into the weights it "
        "writes, always); drop --merge"
    ),
}


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = _FullMatch(_NEGATIVE_NUMBER)
        self.help_more = None  # what --help prints after the options (train: every config key)
        self.words: list[str] = []  # what the last parse read, for ELSEWHERE

    def format_help(self) -> str:
        return super().format_help() + ("\n" + self.help_more() if self.help_more else "")

    def parse_known_args(self, args=None, namespace=None):
        self.words = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str):  # one line instead of usage + message
        line = _elsewhere(self.prog, message, self.words) or f"{single_line(message)}{_close_choice(message)}"
        self.exit(2, f"error: {line} (see `{self.prog} --help`)\n")


def _elsewhere(prog: str, message: str, words: list[str]) -> str | None:
    """ELSEWHERE's line for the command named in an invalid choice, or an option among `words`,
    followed by what else argparse found wrong (`export RUN --merge` also lacks --out: argparse
    names only that, and the user would learn of it only after dropping --merge)."""
    chosen = re.search(r"invalid choice: '([^']*)'", message)
    options = [word.partition("=")[0] for word in words if word.startswith("--")]
    names = [chosen[1]] if chosen else options
    name = next((name for name in names if (prog, name) in ELSEWHERE), None)
    if name is None:
        return None
    rest = _besides(message, name) if not chosen else None
    return ELSEWHERE[prog, name] + (f"; also, {single_line(rest)}" if rest else "")


def _besides(message: str, name: str) -> str | None:
    """argparse's `message` less the option ELSEWHERE answers: the other unrecognized arguments, or
    a problem of its own (the required arguments missing); None when it was about that option only."""
    unknown = re.fullmatch(r"unrecognized arguments: (.*)", message, re.DOTALL)
    if unknown is None:
        return message
    others = [word for word in unknown[1].split(" ") if word.partition("=")[0] != name]
    return f"unrecognized arguments: {' '.join(others)}" if others else None


def _close_choice(message: str) -> str:
    """` (did you mean train?)` for argparse's "invalid choice: 'trian' (choose from ...)"."""
    found = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)$", message)
    if not found:
        return ""
    choices = [c.strip("'\" ") for c in found[2].split(",")]
    return did_you_mean(found[1], choices, cutoff=0.75)  # not cpu for tpu


class _FullMatch:
    """A pattern that argparse's `.match(text)` applies to the whole text (-1e3, not -1e3abc)."""

    def __init__(self, pattern: re.Pattern):
        self.pattern = pattern

    def match(self, text: str) -> re.Match | None:
        return self.pattern.fullmatch(text)
