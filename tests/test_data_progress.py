"""What `data prepare` shows as it goes: off a terminal (a batch job, a log file) a plain line every
interval, with the documents, tokens and bytes done so far; on a terminal its bars only, the
counting pass's above the tokenizing one; with --no-progress nothing."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import numpy as np

from trickster import cli
from trickster.data import sources
from trickster.data.loader import load_data
from trickster.data.prepare import prepare

from .conftest import EXCERPT, QUIET
from .test_data_pieces import small_blocks
from .test_data_streaming import stories, write_texts

SIZE = r"\d[\d,]*\.\d (?:kB|MB|GB)"
LINE = re.compile(
    rf"(?P<what>[a-z ]+): (?P<counts>(?:\d[\d,]* [a-z]+(?: [a-z]+)*, )*)"
    rf"(?P<read>{SIZE}) of (?P<total>{SIZE}) "
    rf"read \((?P<percent>\d+)%\), {SIZE}/s, [\dhms ]+ left"
)


def every_update(monkeypatch) -> None:
    """A line at every update instead of every minute."""
    from trickster.data import pass_progress

    monkeypatch.setattr(pass_progress, "LINE_EVERY_S", 0.0)


def lines_of(out: str, what: str) -> list[dict]:
    """The progress lines of one pass: what they count ({"documents": 12, "tokens": 345}), read,
    total and percent as printed."""
    found = [LINE.fullmatch(line) for line in out.splitlines() if line.startswith(f"{what}:")]
    assert found and all(found), out
    parsed = []
    for match in found:
        counts = [c.split(" ", 1) for c in match["counts"].split(", ") if c]
        parsed.append({name: int(n.replace(",", "")) for n, name in counts} | match.groupdict())
    return parsed


def shard_counts(folder: Path) -> tuple[int, int]:
    """(documents, tokens) of a prepared folder, counted in its shards: end-of-text ids, ids."""
    data = load_data(folder)
    ids = np.concatenate([np.asarray(data.train), np.asarray(data.val)])
    return int((ids == data.tokenizer.eot_id).sum()), len(ids)


def test_off_a_terminal_each_pass_prints_lines_with_what_it_has_done(tmp_path, monkeypatch, capsys):
    every_update(monkeypatch)
    paths = write_texts(tmp_path / "texts", stories(300, seed=3))
    size = sum(p.stat().st_size for p in (tmp_path / "texts").iterdir())
    out = tmp_path / "out"
    prepare(sources.text_files(paths), "char", out, chunk_chars=1_000, workers=1, progress=True, **QUIET)
    printed = capsys.readouterr().out
    documents, tokens = shard_counts(out)
    assert documents == 300

    reading = lines_of(printed, "reading for the char tokenizer")
    assert [line["documents"] for line in reading] == list(range(1, 301))  # a line per document here
    tokenizing = lines_of(printed, "tokenizing")
    assert len(tokenizing) > 5  # a chunk of 1,000 characters at a time
    done = [(line["documents"], line["tokens"]) for line in tokenizing]
    assert done == sorted(done) and done[-1] == (documents, tokens)
    total = f"{size / 1e3:,.1f} kB"  # the files' sizes: plain text, one byte a character
    assert {line["total"] for line in reading + tokenizing} == {total}
    assert reading[-1]["read"] == tokenizing[-1]["read"] == total and tokenizing[-1]["percent"] == "100"
    percents = [int(line["percent"]) for line in tokenizing]
    assert percents == sorted(percents) and percents[0] < 50
    assert printed.index("reading for the char tokenizer:") < printed.index("tokenizing:")

    # --no-progress: no line, off a terminal as on one
    argv = ["data", "prepare", "text", *paths, "--out", str(tmp_path / "quiet"), "--no-progress"]
    assert cli.main(argv) == 0
    assert not [line for line in capsys.readouterr().out.splitlines() if "read (" in line]


def test_the_line_moves_while_a_file_among_several_waits_for_its_last_piece(tmp_path, monkeypatch, capsys):
    """A file larger than a block among several is tokenized in pieces, whose tokens wait until its
    last piece decides where they go (pending.py): meanwhile the documents and tokens written stand
    still, and the line counts the tokens waiting. With 3 files of 300 MB it said nothing but the
    bytes read for minutes."""
    every_update(monkeypatch)
    small_blocks(monkeypatch, 4096)
    texts = stories(20, seed=4)
    write_texts(tmp_path / "texts", [*texts[:10], EXCERPT.read_text(encoding="utf-8"), *texts[10:]])
    out = tmp_path / "out"
    source = sources.text_files([str(tmp_path / "texts")])
    prepare(source, "byte", out, chunk_chars=4_000, workers=1, progress=True, **QUIET)
    tokenizing = lines_of(capsys.readouterr().out, "tokenizing")
    waiting = [line for line in tokenizing if "tokens waiting" in line]
    assert len(waiting) > 20  # a line per chunk: a piece of about 4,096 of its 120,000 characters
    assert {(line["documents"], line["tokens"]) for line in waiting} == {(10, waiting[0]["tokens"])}
    counts = [line["tokens waiting"] for line in waiting]
    assert counts == sorted(set(counts))  # up at every line
    written = tokenizing[tokenizing.index(waiting[-1]) + 1]  # its last piece: decided and written
    assert "tokens waiting" not in written and written["documents"] > 10
    assert written["tokens"] - waiting[-1]["tokens"] > counts[-1]  # they and its last piece's, written
    assert (tokenizing[-1]["documents"], tokenizing[-1]["tokens"]) == shard_counts(out)


def test_the_command_prints_the_lines_of_one_file_counted_then_tokenized(tmp_path, monkeypatch, capsys):
    every_update(monkeypatch)
    small_blocks(monkeypatch, 4096)
    out = tmp_path / "out"
    argv = ["data", "prepare", "text", str(EXCERPT), "--out", str(out), "--tokenizer", "byte"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    counting = lines_of(printed, "counting characters")
    tokenizing = lines_of(printed, "tokenizing")
    assert len(counting) > 10 and counting[-1]["read"] == counting[-1]["total"]
    assert counting[-1]["percent"] == "100" and "documents" not in counting[-1]
    assert "documents" not in tokenizing[-1]  # one document: no count of them
    assert tokenizing[-1]["tokens"] == shard_counts(out)[1]
    lines = printed.splitlines()
    assert max(i for i, line in enumerate(lines) if line.startswith("counting characters:")) < min(
        i for i, line in enumerate(lines) if line.startswith("tokenizing:")
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_only_the_bars_show_counting_above_tokenizing(tmp_path, monkeypatch, capsys):
    every_update(monkeypatch)
    small_blocks(monkeypatch, 4096)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)  # where tqdm draws, and looks whether it may
    source = sources.text_files([str(EXCERPT)])
    prepare(source, "byte", tmp_path / "out", chunk_chars=4_000, workers=1, progress=True, **QUIET)
    assert capsys.readouterr().out == ""
    drawn = terminal.getvalue()
    assert "100%" in drawn
    # the counting pass runs first: its bar is drawn before the tokenizing one, not below it at 0%
    assert 0 <= drawn.index("counting characters") < drawn.index("tokenizing")


def test_a_pass_over_a_file_with_windows_line_endings_ends_at_its_size(tmp_path, monkeypatch, capsys):
    """Its text is smaller than the file ("\r\n" read as "\n", the byte-order mark dropped): each
    pass still ends at 100% of the file's size, not short of it."""
    every_update(monkeypatch)
    small_blocks(monkeypatch, 4096)
    text = "\ufeff" + EXCERPT.read_text(encoding="utf-8").replace("\n", "\r\n")
    path = tmp_path / "windows.txt"
    path.write_bytes(text.encode("utf-8"))
    argv = ["data", "prepare", "text", str(path), "--out", str(tmp_path / "out"), "--tokenizer", "char"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    total = f"{path.stat().st_size / 1e3:,.1f} kB"
    for what in ("reading for the char tokenizer", "counting characters", "tokenizing"):
        last = LINE.fullmatch([line for line in printed.splitlines() if line.startswith(f"{what}:")][-1])
        assert last and (last["read"], last["total"], last["percent"]) == (total, total, "100"), what
