"""When `data prepare` keeps a folder it prepared before (`already prepared`), and what it does with
the folders around it: one written by another version of the code is prepared again (training still
loads it), and a DIR.partial that a complete DIR makes useless is removed."""

from __future__ import annotations

import errno
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from trickster import cli
from trickster.data import encode as encode_module
from trickster.data import meta as meta_module
from trickster.data import sources
from trickster.data.loader import load_data
from trickster.data.prepare import partial_dir, prepare
from trickster.errors import UserError
from trickster.train.loop import train

from .conftest import EXCERPT, QUIET, micro_config

ENCODE_CHUNK = encode_module.encode_chunk


def _argv(text, out) -> list[str]:
    return ["data", "prepare", "text", str(text), "--out", str(out), "--no-progress", "--workers", "1"]


def _set_version(folder, version) -> None:
    """Make `folder` look written by another version of the code (None: by one that recorded none)."""
    meta = json.loads((folder / "meta.json").read_text())
    meta["settings"].pop("version", None)
    if version is not None:
        meta["settings"]["version"] = version
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.slow
def test_a_folder_an_older_version_prepared_is_prepared_again_and_still_trains(tmp_path, capsys):
    """A change to how text is tokenized (bpe cut at 1,000 characters) kept the folders older code
    had prepared with the same settings as 'already prepared'. Training reads them as they are."""
    out, text = tmp_path / "data", tmp_path / "corpus.txt"
    shutil.copy(EXCERPT, text)
    assert cli.main(_argv(text, out)) == 0
    capsys.readouterr()
    tokens = load_data(out).train.astype(np.int64).tolist()
    _set_version(out, None)

    steps = {"max_steps": 2, "warmup_steps": 0, "eval_every": 2, "save_every": 2}
    run = train(micro_config(out, tmp_path / "run", training_config=steps), **QUIET)
    assert run.state.step == 2 and load_data(out).train.astype(np.int64).tolist() == tokens

    assert cli.main(_argv(text, out)) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == (
        f"{out} was prepared by an older version of trickster (no version recorded, this one writes "
        f"version {meta_module.PREPARATION_VERSION}: its tokens or shards may differ): preparing it again"
    )
    assert said[-1].startswith(f"wrote {out}")
    assert load_data(out).meta["settings"]["version"] == meta_module.PREPARATION_VERSION
    assert cli.main(_argv(text, out)) == 0
    assert capsys.readouterr().out.startswith(f"already prepared: {out}")

    _set_version(out, meta_module.PREPARATION_VERSION + 1)  # and back from a newer one
    assert cli.main(_argv(text, out)) == 0
    assert capsys.readouterr().out.startswith(f"{out} was prepared by a newer version of trickster (version")

    _set_version(out, None)  # with other settings as well: prepared again as any change is
    assert cli.main([*_argv(text, out), "--val-fraction", "0.2"]) == 0
    assert capsys.readouterr().out.startswith(f"{out} holds data prepared with other settings (val_fraction")


def test_text_folders_version_1_prepared_are_prepared_again_and_json_lines_ones_kept(tmp_path, capsys):
    """Version 2 reads the line endings of text files as "\\n": a text folder version 1 prepared may
    hold "\\r" before every line break, and is prepared again. JSON Lines (like Hub datasets and
    Parquet) read as before: their folders stay version 1 and are kept, not prepared again for nothing."""
    text, out = tmp_path / "corpus.txt", tmp_path / "text"
    text.write_bytes(EXCERPT.read_text().replace("\n", "\r\n").encode())
    assert cli.main(_argv(text, out)) == 0
    _set_version(out, 1)
    capsys.readouterr()
    assert cli.main(_argv(text, out)) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == (
        f"{out} was prepared by an older version of trickster (version 1, this one writes version 2: "
        "its tokens or shards may differ): preparing it again"
    )
    data = load_data(out)
    assert data.meta["settings"]["version"] == 2
    assert "\r" not in data.tokenizer.decode(np.concatenate([data.train, data.val]).astype(np.int64).tolist())

    records, out = tmp_path / "r.jsonl", tmp_path / "jsonl"
    records.write_text("".join(json.dumps({"text": f"line {i}\r\nnext"}) + "\n" for i in range(50)))
    argv = ["data", "prepare", "jsonl", str(records), "--text-field", "text", "--out", str(out)]
    assert cli.main([*argv, "--no-progress", "--workers", "1"]) == 0
    assert load_data(out).meta["settings"]["version"] == 1
    capsys.readouterr()
    assert cli.main([*argv, "--no-progress", "--workers", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"already prepared: {out}")


class Interrupt:
    """Replaces the chunk encoder: Ctrl-C once `after` chunks are encoded."""

    def __init__(self, after: int):
        self.after, self.calls = after, 0

    def __call__(self, task):
        if self.calls >= self.after:
            raise KeyboardInterrupt
        self.calls += 1
        return ENCODE_CHUNK(task)


def _texts(folder, count: int = 40) -> list[str]:
    folder.mkdir()
    for i in range(count):
        (folder / f"{i:03d}.txt").write_text(f"document {i}: " + "the cat sat on the mat. " * (i % 7 + 1))
    return [str(folder)]


def test_an_unfinished_preparation_of_an_older_version_is_not_continued(tmp_path, monkeypatch):
    paths, out = _texts(tmp_path / "texts"), tmp_path / "out"
    monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=2))
    with pytest.raises(KeyboardInterrupt):
        prepare(sources.text_files(paths), "char", out, chunk_chars=200, workers=1, echo=print)
    monkeypatch.undo()
    progress = partial_dir(out) / "progress.json"
    record = json.loads(progress.read_text())
    record["settings"].pop("version", None)
    progress.write_text(json.dumps(record))
    started = r"out.partial holds an unfinished preparation started by an older version of trickster"
    with pytest.raises(UserError, match=rf"{started} \(no version.*cannot continue; delete .*partial"):
        prepare(sources.text_files(paths), "char", out, chunk_chars=200, workers=1)
    assert json.loads(progress.read_text()) == record  # kept as it was


def _interrupted(paths, out, monkeypatch, **settings) -> None:
    """A preparation of `paths` into `out` stopped by Ctrl-C after two chunks: out.partial is left."""
    monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=2))
    with pytest.raises(KeyboardInterrupt):
        prepare(sources.text_files(paths), "char", out, chunk_chars=200, workers=1, **settings, **QUIET)
    monkeypatch.undo()
    assert (partial_dir(out) / "progress.json").is_file()


def _stamps(folder):
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in [folder, *folder.rglob("*")]}


def _size(folder) -> str:
    return f"{sum(p.stat().st_size for p in folder.rglob('*') if p.is_file()) / 1e6:,.1f} MB"


def test_a_partial_that_the_complete_folder_makes_useless_is_removed(tmp_path, monkeypatch):
    """DIR.partial beside a complete DIR of the same settings stayed for good (a finished copy is
    as large as DIR); it goes, said in the one line, but only the same preparation, and only when
    nothing can be working in it."""
    paths, out = _texts(tmp_path / "texts"), tmp_path / "out"
    partial = partial_dir(out)

    def again() -> list[str]:
        said = []
        prepare(sources.text_files(paths), "char", out, chunk_chars=200, workers=1, echo=said.append)
        assert len(said) == 1 and said[0].startswith(f"already prepared: {out}")
        return said[0].split("nothing was rewritten (delete it to prepare it again)")[1]

    prepare(sources.text_files(paths), "char", out, chunk_chars=200, workers=1, **QUIET)
    before = _stamps(out)
    shutil.copytree(out, partial)  # finished, stopped before it took the name: the same preparation
    size = _size(partial)
    assert again() == f"; removed {partial}, a finished copy of this preparation ({size})"
    assert not partial.exists() and _stamps(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "texts"]

    _interrupted(paths, tmp_path / "other", monkeypatch)  # unfinished, with the same settings
    partial_dir(tmp_path / "other").rename(partial)
    size = _size(partial)
    assert again() == f"; removed {partial}, an unfinished copy of this preparation ({size})"
    assert not partial.exists() and _stamps(out) == before

    _interrupted(paths, tmp_path / "other", monkeypatch, val_fraction=0.2)  # another command's: kept
    partial_dir(tmp_path / "other").rename(partial)
    kept = _stamps(partial)
    assert again() == ""
    assert _stamps(partial) == kept


def test_a_partial_that_may_be_in_use_or_unreadable_is_kept(tmp_path, monkeypatch, dead_pid):
    import fcntl

    paths, out = _texts(tmp_path / "texts"), tmp_path / "out"
    partial = partial_dir(out)
    prepare(sources.text_files(paths), "char", out, chunk_chars=200, workers=1, **QUIET)
    said = []

    def again() -> None:
        prepare(sources.text_files(paths), "char", out, chunk_chars=200, workers=1, echo=said.append)

    shutil.copytree(out, partial)
    fd = os.open(partial, os.O_RDONLY)  # a process working in it holds its lock
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        again()
    finally:
        os.close(fd)
    flock = fcntl.flock

    def cannot_lock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")  # a file system without locks

    monkeypatch.setattr(fcntl, "flock", cannot_lock)
    again()
    monkeypatch.setattr(fcntl, "flock", flock)
    (partial / "meta.json").write_text("{")  # damaged: nobody can tell what it held
    again()
    assert partial.is_dir() and not any("removed" in line for line in said) and len(said) == 3

    (partial / "meta.json").unlink()
    (partial / "index.json").unlink()
    (partial / "progress.json").write_text("{")
    again()
    assert partial.is_dir() and "removed" not in said[-1]

    trash = tmp_path / f".out.partial.deleted-{dead_pid}"  # what a kill halfway through deleting left
    partial.rename(trash)
    again()
    assert not trash.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out", "texts"]


class FakeHub:
    """The Hub, faked (no network here): `dataset_info` gives the commit `org/stories` is at, or
    fails as offline; `load_dataset` streams the rows of the revision asked for (None: the newest)."""

    def __init__(self, monkeypatch):
        import datasets
        import huggingface_hub

        self.sha, self.online, self.looked_up, self.read = "a" * 40, True, 0, []
        line = "the cat sat. "
        self.rows = {c * 40: [{"text": f"{c}{i}: " + line * (i % 5 + 1)} for i in range(40)] for c in "abcd"}
        hub = self

        def dataset_info(api, repo_id, *, expand=None, timeout=None, **unused):
            assert repo_id == "org/stories" and expand == ["sha"]  # the commit alone, not the file list
            hub.looked_up += 1
            if not hub.online:
                raise ConnectionError("[Errno -3] Temporary failure in name resolution")
            return SimpleNamespace(sha=hub.sha)

        def load_dataset(path, name=None, *, split, streaming, revision=None):
            assert (path, split, streaming) == ("org/stories", "train", True)
            hub.read.append(revision)
            return iter(hub.rows[revision or hub.sha])

        monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
        monkeypatch.setattr(datasets, "load_dataset", load_dataset)
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)


def test_a_hub_dataset_updated_since_is_prepared_again(tmp_path, monkeypatch, capsys):
    """A Hub dataset was known by name, config, split and field only: one updated on the Hub since
    was 'already prepared'. Its commit is recorded and compared when both sides know one (offline,
    the folder is kept as before), and reading is pinned to it."""
    import datasets

    hub, out = FakeHub(monkeypatch), tmp_path / "out"
    argv = ["data", "prepare", "hf", "org/stories", "--out", str(out), "--no-progress", "--workers", "1"]

    def texts() -> str:
        data = load_data(out)
        return data.tokenizer.decode(np.concatenate([data.train, data.val]).astype(np.int64).tolist())

    assert cli.main(argv) == 0
    assert load_data(out).meta.get("source_revision") == "a" * 40 and set(hub.read) == {"a" * 40}
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"already prepared: {out} holds hf")

    hub.sha = "b" * 40
    assert cli.main(argv) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == (
        f"{out} was prepared from revision aaaaaaaaaaaa of the dataset; the Hub has revision "
        "bbbbbbbbbbbb since: preparing it again"
    )
    assert load_data(out).meta["source_revision"] == "b" * 40 and "b7: " in texts() and "a7: " not in texts()

    hub.sha, hub.online = "c" * 40, False  # offline: nothing to compare, the folder is kept
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith(f"already prepared: {out}")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # told so: not even asked
    looked_up = hub.looked_up
    assert cli.main(argv) == 0
    assert capsys.readouterr().out.startswith(f"already prepared: {out}") and hub.looked_up == looked_up


def test_a_continued_hub_preparation_reads_the_commit_it_started_from(tmp_path, monkeypatch):
    from trickster.data.hub import hf_dataset

    hub, out = FakeHub(monkeypatch), tmp_path / "out"
    hub.sha = "c" * 40
    monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=2))
    with pytest.raises(KeyboardInterrupt):
        prepare(hf_dataset("org/stories"), "char", out, chunk_chars=200, workers=1, **QUIET)
    monkeypatch.setattr(encode_module, "encode_chunk", ENCODE_CHUNK)
    hub.sha, hub.read = "d" * 40, []  # updated meanwhile: the rest still comes from c
    meta = prepare(hf_dataset("org/stories"), "char", out, chunk_chars=200, workers=1, **QUIET)
    assert meta["source_revision"] == "c" * 40 and set(hub.read) == {"c" * 40}
    said = []
    prepare(hf_dataset("org/stories"), "char", out, chunk_chars=200, workers=1, echo=said.append)
    assert said[0].endswith("the Hub has revision dddddddddddd since: preparing it again")
    assert load_data(out).meta["source_revision"] == "d" * 40


def test_offline_a_hub_folder_an_older_version_prepared_is_kept(tmp_path, monkeypatch, capsys):
    """A folder an older version prepared is prepared again; offline the Hub dataset cannot be read
    again, and the command failed where it had said 'already prepared': the folder is kept, as
    Tiny Shakespeare's is (training loads it as it is)."""
    hub, out = FakeHub(monkeypatch), tmp_path / "out"
    argv = ["data", "prepare", "hf", "org/stories", "--out", str(out), "--no-progress", "--workers", "1"]
    assert cli.main(argv) == 0
    _set_version(out, None)
    meta = (out / "meta.json").read_text()
    capsys.readouterr()

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/stories' on the Hub (LocalEntryNotFoundError)")

    import datasets

    hub.online = False
    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert cli.main(argv) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0].startswith(f"{out} was prepared by an older version of trickster (no version")
    assert said[1].startswith("could not read its source again (could not open dataset 'org/stories'")
    assert said[1].endswith(f"keeping {out} as it was prepared")
    # not then 'already prepared: out holds hf with the same settings (...); nothing was rewritten
    # (delete it to prepare it again)': the settings are another version's, and deleting it offline
    # would leave nothing to train on
    tokens = load_data(out).meta["train_tokens"]
    assert said[2:] == [
        f"{out} holds hf as that version prepared it (train {tokens:,} tokens, val "
        f"{load_data(out).meta['val_tokens']:,}, char vocabulary {load_data(out).meta['vocab_size']}); "
        "training loads it as it is, and this command prepares it again once its source can be read"
    ]
    assert (out / "meta.json").read_text() == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_finished_partial_of_a_commit_the_hub_has_moved_from_is_prepared_again(tmp_path, monkeypatch):
    """A DIR.partial finished from commit a, stopped before it took the name DIR, was renamed into
    place with 'nothing was prepared again' though the Hub had moved to b: its commit was compared
    only for a complete DIR, so the next run prepared it again. It takes DIR's place (until then the
    newest copy on this disk) and is prepared again at once, as a DIR of commit a is."""
    from trickster.data.hub import hf_dataset

    hub, out = FakeHub(monkeypatch), tmp_path / "out"
    partial = partial_dir(out)

    def run() -> list[str]:
        said = []
        prepare(hf_dataset("org/stories"), "char", out, workers=1, echo=said.append)
        return said

    run()
    out.rename(partial)  # finished from a, stopped before it took the name
    hub.sha, hub.read = "b" * 40, []
    said = run()
    assert said[0] == (
        f"{partial} held this preparation from revision aaaaaaaaaaaa of the dataset, finished but "
        f"stopped before it took the name out: renamed to {out}"
    )
    assert said[1] == (
        f"{out} was prepared from revision aaaaaaaaaaaa of the dataset; the Hub has revision "
        "bbbbbbbbbbbb since: preparing it again"
    )
    assert said[-1].startswith(f"wrote {out}") and set(hub.read) == {"b" * 40}
    assert load_data(out).meta["source_revision"] == "b" * 40 and not partial.exists()

    shutil.copytree(out, partial)  # finished from b, beside a DIR of a: it is what DIR should be
    (out / "meta.json").write_text((out / "meta.json").read_text().replace("b" * 40, "a" * 40))
    hub.read = []
    assert run() == [
        f"{partial} held this preparation, finished but stopped before it took the name out: "
        f"renamed to {out} (nothing was prepared again)"
    ]  # and not first 'out was prepared from revision aaaaaaaaaaaa ...: preparing it again'
    assert load_data(out).meta["source_revision"] == "b" * 40 and hub.read == []
    assert run()[0].startswith(f"already prepared: {out}")


def test_meta_json_lists_the_corpus_files_once_and_older_folders_listing_them_twice_are_kept(
    tmp_path, capsys
):
    """meta.json held every file (with its size and time) twice, as source_identity and in the
    settings: 10.2 MB at 50,000 files. A folder written so is still the same preparation."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"note-{i:02}.txt").write_text(f"note {i} about the project number {i * 17}\n")
    out = tmp_path / "out"
    assert cli.main(_argv(corpus, out)) == 0
    written = (out / "meta.json").read_text()
    assert written.count("note-29.txt") == 1, "the last file, past source_files' first 20"
    assert len(json.loads(written)["settings"]["source"]["files"]) == 30

    meta = json.loads(written)
    meta["source_identity"] = meta["settings"]["source"]  # as meta.json was written before
    (out / "meta.json").write_text(json.dumps(meta, indent=2))
    capsys.readouterr()
    assert cli.main(_argv(corpus, out)) == 0
    assert capsys.readouterr().out.startswith(f"already prepared: {out} holds text with the same settings")
    assert load_data(out).meta["source_identity"] == meta["settings"]["source"]


def test_a_vocab_size_bpe_cannot_learn_is_refused_before_the_folder_is_looked_at(tmp_path, capsys):
    """--vocab-size 100 into a prepared folder said 'holds data prepared with other settings ...:
    preparing it again' and only then refused the size (after reading the corpus): nothing was
    prepared again. Now the size is refused first, alone, and the folder is kept."""
    out, text = tmp_path / "data", tmp_path / "corpus.txt"
    shutil.copy(EXCERPT, text)
    assert cli.main(_argv(text, out)) == 0
    meta = (out / "meta.json").read_bytes()
    capsys.readouterr()
    assert cli.main([*_argv(text, out), "--tokenizer", "bpe", "--vocab-size", "100"]) == 2
    said = capsys.readouterr()
    assert said.out == "" and said.err.startswith("error: --vocab-size 100 is too small for bpe"), said
    assert (out / "meta.json").read_bytes() == meta and not partial_dir(out).exists()


def test_bpes_default_size_given_or_left_out_is_the_same_setting(tmp_path, capsys):
    """--vocab-size 4096, bpe's default, given to a folder prepared without it (or the reverse) was
    'other settings (vocab_size None, now 4096)': the folder was prepared again into the same
    tokens. Now it is already prepared; a size that differs is told with the default's number."""
    out, text = tmp_path / "data", tmp_path / "corpus.txt"
    shutil.copy(EXCERPT, text)
    bpe = [*_argv(text, out), "--tokenizer", "bpe"]
    assert cli.main(bpe) == 0
    stamps = _stamps(out)
    capsys.readouterr()
    assert cli.main([*bpe, "--vocab-size", "4096"]) == 0
    assert capsys.readouterr().out.startswith(f"already prepared: {out}")
    assert _stamps(out) == stamps

    assert cli.main([*bpe, "--vocab-size", "300"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{out} holds data prepared with other settings (vocab_size 4096 (the default), now 300): "
        "preparing it again; it is replaced once this preparation is done"
    )
    shutil.rmtree(out)
    assert cli.main([*bpe, "--vocab-size", "4096"]) == 0
    stamps = _stamps(out)
    capsys.readouterr()
    assert cli.main(bpe) == 0
    assert capsys.readouterr().out.startswith(f"already prepared: {out}")
    assert _stamps(out) == stamps


def test_a_bpe_folder_prepared_again_with_another_tokenizer_is_told_no_size_of_none(tmp_path, capsys):
    """bpe of 300 ids, then byte into the same folder said '(tokenizer bpe, now byte, vocab_size 300,
    now None)': byte has no --vocab-size, and None is no word a user typed."""
    out, text = tmp_path / "data", tmp_path / "corpus.txt"
    shutil.copy(EXCERPT, text)
    assert cli.main([*_argv(text, out), "--tokenizer", "bpe", "--vocab-size", "300"]) == 0
    capsys.readouterr()
    assert cli.main([*_argv(text, out), "--tokenizer", "byte"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{out} holds data prepared with other settings (tokenizer bpe, now byte): "
        "preparing it again; it is replaced once this preparation is done"
    )


def test_an_unfinished_bpe_preparation_continues_with_its_default_size_given(tmp_path, monkeypatch):
    """The same for DIR.partial: stopped without --vocab-size, the command with --vocab-size 4096
    continues it (it said 'holds an unfinished preparation with other settings (vocab_size)')."""
    paths, out = _texts(tmp_path / "texts"), tmp_path / "out"
    monkeypatch.setattr(encode_module, "encode_chunk", Interrupt(after=2))
    with pytest.raises(KeyboardInterrupt):
        prepare(sources.text_files(paths), "bpe", out, chunk_chars=200, workers=1, **QUIET)
    monkeypatch.undo()
    said = []
    prepare(
        sources.text_files(paths), "bpe", out, vocab_size=4096, chunk_chars=200, workers=1, echo=said.append
    )
    assert said[0].startswith(f"continuing the preparation in {partial_dir(out)}: "), said
    assert load_data(out).meta["settings"]["vocab_size"] is None


def test_a_folder_of_other_settings_or_input_is_told_it_is_replaced(tmp_path, capsys):
    """A second `data prepare` into the same --out with another tokenizer, or after a corpus file
    was edited, replaced the folder without a word: a run trained on it then refused --resume,
    and nothing had said the data changed. Now one line says what differs, before the work."""
    out, text = tmp_path / "data", tmp_path / "corpus.txt"
    shutil.copy(EXCERPT, text)
    assert cli.main(_argv(text, out)) == 0
    capsys.readouterr()

    assert cli.main([*_argv(text, out), "--tokenizer", "byte"]) == 0
    said = capsys.readouterr().out.splitlines()
    assert said[0] == (
        f"{out} holds data prepared with other settings (tokenizer char, now byte): preparing it "
        "again; it is replaced once this preparation is done"
    )
    assert load_data(out).meta["tokenizer"] == "byte"

    with text.open("a") as edited:
        edited.write("One more line.\n")
    assert cli.main([*_argv(text, out), "--tokenizer", "byte"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{out} holds data prepared from other input ({text} changed): preparing it again; it is "
        "replaced once this preparation is done"
    )


def test_a_prepared_folder_with_the_users_files_beside_is_kept_and_never_replaced(tmp_path, capsys):
    """A README put into a prepared folder made it 'not a prepared data folder': the same command
    (a second quick start) stopped with exit status 2 where it keeps the folder as it is. Prepared
    again (other settings), the folder is replaced whole: the user's file would go with it, so that
    is refused naming it, and Finder's .DS_Store alone goes with the folder."""
    out, text = tmp_path / "data", tmp_path / "corpus.txt"
    shutil.copy(EXCERPT, text)
    assert cli.main(_argv(text, out)) == 0
    (out / "NOTES.md").write_text("where this corpus came from\n")
    (out / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    tokens = (out / "train" / "000000.bin").read_bytes()
    capsys.readouterr()

    assert cli.main(_argv(text, out)) == 0
    assert capsys.readouterr().out.startswith(f"already prepared: {out} holds text with the same settings")

    assert cli.main([*_argv(text, out), "--tokenizer", "byte"]) == 2
    assert capsys.readouterr().err == (
        f"error: {out} holds data prepared with other settings (tokenizer char, now byte); beside the "
        "data it holds NOTES.md, which data prepare did not write and would delete with the folder it "
        f"replaces: move it out of {out}, or choose another --out (nothing was changed)\n"
    )
    assert (out / "NOTES.md").read_text() == "where this corpus came from\n"
    assert (out / "train" / "000000.bin").read_bytes() == tokens and not partial_dir(out).exists()

    (out / "NOTES.md").unlink()
    assert cli.main([*_argv(text, out), "--tokenizer", "byte"]) == 0
    assert load_data(out).meta["tokenizer"] == "byte" and not (out / ".DS_Store").exists()
