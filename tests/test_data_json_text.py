"""The JSON a prepared folder holds reads as the project's other JSON files (two spaces a level, as a
run's manifest.json and a checkpoint's info.json), with each file of the corpus on one line: its
name, size and time took five lines of meta.json (4.8 MB at 50,000 files, 2.8 MB now)."""

from __future__ import annotations

import json
import os

from trickster import cli
from trickster.data.loader import load_data


def test_meta_json_has_a_line_a_file_and_index_json_two_spaces_a_level(tmp_path, capsys):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    names = [f"sub/note-{i:02}.txt" if i % 3 else f"note-{i:02}.txt" for i in range(30)]
    for i, name in enumerate(names):
        (corpus / name).write_text(f"note {i} about the project number {i * 17}\n")
    out = tmp_path / "out"
    argv = ["data", "prepare", "text", str(corpus), "--out", str(out), "--no-progress", "--workers", "1"]
    assert cli.main(argv) == 0, capsys.readouterr().err

    lines = [line.strip().removesuffix(",") for line in (out / "meta.json").read_text().splitlines()]
    for name in names:
        path = corpus / name
        stat = os.stat(path)
        assert f'["{path}", {stat.st_size}, {stat.st_mtime_ns}]' in lines, name
    meta = load_data(out).meta
    assert (out / "meta.json").read_text().splitlines()[1] == '  "format": 3,'
    assert len(meta["settings"]["source"]["files"]) == 30

    index = (out / "index.json").read_text().splitlines()
    assert index[:3] == ["{", '  "train": [', "    {"], index
    assert json.loads("\n".join(index))["train"][0]["file"] == "train/000000.bin"

    capsys.readouterr()  # a folder whose JSON is so written is the same preparation
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith(f"already prepared: {out} holds text with the same settings")
