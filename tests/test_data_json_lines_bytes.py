"""JSON Lines files as users bring them: dumps compressed with zstd (The Pile, SlimPajama), a record
in Latin-1 deep in a file, UTF-16 without its mark. Each stops `data prepare jsonl` with the words
a text file gets, naming the line and the byte's offset in the file."""

from __future__ import annotations

import json

from trickster import cli

ZSTD_FRAME = b"\x28\xb5\x2f\xfd\x00\x58\x51\x00\x00"  # a zstd frame's magic and header


def prepare_jsonl(path, tmp_path, capsys) -> tuple[int, str]:
    argv = ["data", "prepare", "jsonl", str(path), "--text-field", "text", "--out", str(tmp_path / "o")]
    code = cli.main(argv)
    return code, capsys.readouterr().err


def test_a_zstd_dump_is_named_as_such_whether_named_or_in_a_folder(tmp_path, capsys):
    """A .jsonl.zst was 'not UTF-8 text (bad byte at offset 1); convert it to UTF-8'; in a folder it
    was skipped: alone 'no files found', beside .jsonl files left out of the corpus unsaid."""
    (tmp_path / "dump").mkdir()
    (tmp_path / "dump" / "00.jsonl").write_text(json.dumps({"text": "To be, or not to be"}) + "\n")
    (tmp_path / "dump" / "01.jsonl.zst").write_bytes(ZSTD_FRAME)
    for path in (tmp_path / "dump" / "01.jsonl.zst", tmp_path / "dump"):
        code, err = prepare_jsonl(path, tmp_path, capsys)
        assert code == 2 and err.count("\n") == 1, err
        assert "01.jsonl.zst is compressed with zstd (unzstd FILE); decompress it first" in err, err
    assert not (tmp_path / "o").exists()


def test_a_bad_byte_is_named_by_its_line_and_its_offset_in_the_file(tmp_path, capsys):
    """The offset was the text decoder's, in its own buffer: 1,943 for the byte at 42,903 here."""
    head = "".join(json.dumps({"text": f"line {i}: that is the question"}) + "\n" for i in range(1000))
    bad = '{"text": "caf\xe9"}\n'.encode("latin-1")
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(head.encode() + bad)
    offset = path.read_bytes().index(b"\xe9")  # counted here, in the bytes on disk
    code, err = prepare_jsonl(path, tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert offset > 24_000, offset  # past the decoder's first buffer
    assert f"mixed.jsonl line 1001 is not UTF-8 text (bad byte at offset {offset})" in err, err
    assert "iconv -f latin1 -t utf-8" in err, err


def test_utf16_without_its_mark_is_named_not_called_bad_json(tmp_path, capsys):
    """Its NUL bytes pass for UTF-8; json then said 'line 1 is not JSON (Expecting value)'."""
    path = tmp_path / "u16.jsonl"
    path.write_bytes((json.dumps({"text": "To be"}) + "\n").encode("utf-16-le"))
    code, err = prepare_jsonl(path, tmp_path, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "u16.jsonl line 1 holds a NUL byte (at offset 1)" in err and "iconv -f utf-16" in err, err


def test_a_record_cut_short_is_named_with_its_column(tmp_path, capsys):
    """A download that stopped mid-record: json's reason was cut at its last word, 'Unterminated
    string starting at'; an error at the line's end was put on a second line, column 1."""
    cut = '{"text": "half a rec'
    path = tmp_path / "cut.jsonl"
    path.write_text(json.dumps({"text": "To be"}) + "\n" + json.dumps({"text": "or not"}) + "\n" + cut)
    code, err = prepare_jsonl(path, tmp_path, capsys)
    column = cut.index('"half') + 1  # where the string starts, counted from 1
    assert code == 2, err
    assert f"cut.jsonl line 3 is not JSON (Unterminated string starting at column {column})" in err, err
    path.write_text("{\n")  # a pretty-printed object's first line
    code, err = prepare_jsonl(path, tmp_path, capsys)
    assert code == 2, err
    assert "line 1 is not JSON (Expecting property name enclosed in double quotes at column 2)" in err, err
