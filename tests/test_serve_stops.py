"""Stop strings (serve/choices.StopStrings): the text is cut where the first stop string begins, only
the tail that could begin one is held back, and the work per token does not grow with that tail."""

from __future__ import annotations

import random
import sys

from trickster.serve import choices
from trickster.serve.choices import StopStrings


def expected(pieces: list[str], stops: list[str]) -> list[tuple[str, bool]]:
    """What each feed must give, by brute force on the whole text so far: up to the earliest stop
    string once one is in it, else all but its longest tail that a stop string begins with."""
    answers, text, shown = [], "", 0
    for piece in pieces:
        text += piece
        found = [text.find(s) for s in stops if s in text]
        if found:
            answers.append((text[shown : min(found)], True))
            break
        held = max((k for s in stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        answers.append((text[shown : len(text) - held], False))
        shown = len(text) - held
    return answers


def test_stop_strings_cut_where_a_search_of_the_whole_text_does():
    """Random texts over 'ab' (and a rare 'c'), random pieces and stop strings that overlap, repeat
    themselves and begin one another: each feed against the brute force above, and the flush."""
    rng = random.Random(0)
    for _ in range(2000):
        stops = [
            "".join(rng.choice("ab") for _ in range(rng.randint(1, 7))) for _ in range(rng.randint(1, 4))
        ]
        pieces = ["".join(rng.choice("aaabbbc") for _ in range(rng.randint(0, 4))) for _ in range(30)]
        cutter = StopStrings(stops)
        got = []
        for piece in pieces:
            got.append(cutter.feed(piece))
            if got[-1][1]:
                break
        assert got == expected(pieces, stops), (stops, pieces)
        shown = "".join(text for text, _ in got)
        if not got[-1][1]:
            assert shown + cutter.flush() == "".join(pieces)


def test_the_work_per_token_does_not_grow_with_the_text_held_back():
    """The text is the start of the one stop string (a client that sends what greedy decoding gives,
    and a character it never gives), so all of it is held back. Finding that tail anew at each token
    stepped through every length it could have (the Python lines run per token grew with the tail,
    4 to 6 s on the event loop for 1,024 tokens of 16 characters; the copies of the stop string's starts
    grew with its square). Counted in lines of choices.py run, which no machine's load changes."""
    width, tokens = 16, 256
    text = "".join(chr(97 + (i * 7) % 26) for i in range(width * tokens))
    cutter = StopStrings([text + "#"])
    lines = []

    def count(frame, event, arg):
        if frame.f_code.co_filename == choices.__file__:
            if event == "line":
                lines[-1] += 1
            return count
        return None

    previous = sys.gettrace()
    sys.settrace(count)
    try:
        for i in range(tokens):
            lines.append(0)
            assert cutter.feed(text[i * width : (i + 1) * width]) == ("", False)
    finally:
        sys.settrace(previous)
    assert len(cutter.held) == width * tokens
    first, last = sum(lines[16:32]), sum(lines[-16:])  # 16 tokens with 256 characters held, and 4,096
    assert last <= 1.5 * first, f"the last 16 tokens ran {last:,} lines, tokens 16 to 32 ran {first:,}"
    assert sum(lines) < 20 * width * tokens, f"{sum(lines):,} lines for {width * tokens:,} characters"
