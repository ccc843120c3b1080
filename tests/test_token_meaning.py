"""A model's tokenizer against a data folder's, by what its ids mean (data/token_meaning.py): a model
exported to Hugging Face and imported back keeps its tokenizer for eval, fine-tuning and resuming on
the data it was trained on; a tokenizer that gives ids another meaning is still refused."""

from __future__ import annotations

import json
import shutil

import pytest

from trickster import cli
from trickster.data import sources
from trickster.data.prepare import prepare
from trickster.data.token_meaning import same_ids
from trickster.data.tokenizers import CharTokenizer, HFTokenizer
from trickster.train import checkpoint_load, checkpoint_path
from trickster.train.loop import train

from .conftest import EXCERPT, QUIET, events, finetune_config, micro_config, write_records
from .test_tokenizers import gpt2_or_skip


def round_trip(run, folder):
    """`run` exported to Hugging Face and imported back: the imported run's folder."""
    assert cli.main(["export", str(run), "--format", "hf", "--out", str(folder / "hf")]) == 0
    assert cli.main(["import", "hf", str(folder / "hf"), "--out", str(folder / "imported")]) == 0
    return folder / "imported"


@pytest.fixture(scope="module")
def imported(trained_run, tmp_path_factory):
    """The char trained_run through Hugging Face and back: its tokenizer is an `hf` one now."""
    run = round_trip(trained_run, tmp_path_factory.mktemp("round-trip"))
    assert checkpoint_load.read_tokenizer(checkpoint_path.resolve(run)).kind == "hf"
    return run


def scores(capsys, run, data) -> dict:
    capsys.readouterr()
    assert (
        cli.main(["eval", str(run), "--data", str(data), "--json", "--device", "cpu", "--max-tokens", "3000"])
        == 0
    ), capsys.readouterr()
    return json.loads(capsys.readouterr().out)


def test_an_imported_char_model_scores_its_own_data_as_the_original(
    trained_run, imported, shakespeare_dir, capsys
):
    original, back = scores(capsys, trained_run, shakespeare_dir), scores(capsys, imported, shakespeare_dir)
    assert back["tokens"] == original["tokens"] > 1000 and back["bytes"] == original["bytes"]
    assert back["loss"] == pytest.approx(original["loss"], abs=1e-6)
    capsys.readouterr()
    assert cli.main(["compare", str(imported), "--data", str(shakespeare_dir), "--max-new-tokens", "1"]) == 0
    assert "val loss n/a" not in capsys.readouterr().out


def test_an_imported_char_model_fine_tunes_on_its_original_data(imported, shakespeare_dir, tmp_path):
    result = train(finetune_config(imported, shakespeare_dir, tmp_path / "tuned", max_steps=2), **QUIET)
    assert [e["step"] for e in events(result, "train")] == [1, 2]


def test_a_run_resumes_on_its_data_prepared_with_the_imported_tokenizer(
    trained_run, imported, shakespeare_dir, tmp_path
):
    """The same text prepared with the imported tokenizer is the same tokens (the resume checks
    their checksum too), so the char run goes on with it."""
    data = tmp_path / "data"
    prepare(
        sources.shakespeare(EXCERPT),
        checkpoint_load.read_tokenizer(checkpoint_path.resolve(imported)),
        data,
        echo=lambda line: None,
    )
    run = shutil.copytree(trained_run, tmp_path / "run")
    training = {"max_steps": 14, "warmup_steps": 2, "log_every": 2, "eval_every": 6, "save_every": 6}
    resumed = train(micro_config(data, run, training_config=training), resume=True, **QUIET)
    assert [e["step"] for e in events(resumed, "resume")] == [12]
    assert events(resumed, "train")[-1]["step"] == 14


@pytest.mark.parametrize("kind", ["byte", "bpe", "gpt2"])
def test_the_other_kinds_come_back_from_hugging_face_with_the_same_ids(kind, tmp_path, capsys):
    if kind == "gpt2":
        gpt2_or_skip()
    data, run = tmp_path / "data", tmp_path / "run"
    prepare(
        sources.shakespeare(EXCERPT),
        kind,
        data,
        echo=lambda line: None,
        vocab_size=300 if kind == "bpe" else None,
    )
    training = {"max_steps": 1, "warmup_steps": 0, "eval_every": 1, "eval_batches": 1, "sample_tokens": 0}
    train(micro_config(data, run, training_config=training), **QUIET)
    back = round_trip(run, tmp_path)
    assert scores(capsys, back, data)["loss"] == pytest.approx(scores(capsys, run, data)["loss"], abs=1e-6)


def test_a_tokenizer_that_gives_ids_another_meaning_is_refused(imported, trained_run, tmp_path, capsys):
    theirs = checkpoint_load.read_tokenizer(checkpoint_path.resolve(imported))
    ours = checkpoint_load.read_tokenizer(checkpoint_path.resolve(trained_run))
    assert same_ids(ours, theirs) and same_ids(theirs, ours)
    swapped = CharTokenizer(ours.chars.replace("z", "#"))  # as many characters, one of them another
    assert len(swapped.chars) == len(ours.chars) and not same_ids(swapped, theirs)
    assert not same_ids(CharTokenizer(ours.chars, with_eot=True), theirs)  # an end-of-text id more
    reordered = CharTokenizer(ours.chars[1:] + ours.chars[0])  # the same characters under other ids
    assert not same_ids(reordered, theirs)
    vocab = theirs.tokenizer_json["model"]["vocab"]
    shuffled = {
        **theirs.tokenizer_json,
        "model": {
            **theirs.tokenizer_json["model"],
            "vocab": dict(zip(vocab, reversed(vocab.values()), strict=True)),
        },
    }
    assert not same_ids(HFTokenizer(shuffled, theirs.config), ours)
    # and from the command line: the imported model on byte-prepared data
    data = tmp_path / "bytes"
    prepare(sources.shakespeare(EXCERPT), "byte", data, echo=lambda line: None)
    capsys.readouterr()
    assert cli.main(["eval", str(imported), "--data", str(data), "--device", "cpu"]) == 2
    assert "uses another tokenizer" in capsys.readouterr().err


def test_data_prepare_keeps_a_folder_prepared_with_a_tokenizer_of_the_same_ids(
    imported, trained_run, tmp_path, capsys
):
    """Records prepared with the char run's tokenizer, then again into the same folder with the
    imported run's `hf` one (another kind, the same ids): the folder is kept as it is, not a file
    written again. A tokenizer that gives ids another meaning prepares the folder again."""
    write_records(tmp_path / "chat.jsonl", count=30)
    data = tmp_path / "data"
    argv = ["data", "prepare", "jsonl", str(tmp_path / "chat.jsonl"), "--out", str(data)]
    assert cli.main([*argv, "--tokenizer-from", str(trained_run)]) == 0
    written = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in data.rglob("*")}
    capsys.readouterr()

    assert cli.main([*argv, "--tokenizer-from", str(imported)]) == 0
    assert capsys.readouterr().out.startswith(f"already prepared: {data} holds jsonl")
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in data.rglob("*")} == written

    ours = checkpoint_load.read_tokenizer(checkpoint_path.resolve(trained_run))
    reordered = CharTokenizer(ours.chars[1:] + ours.chars[0])  # the same characters under other ids
    reordered.save(tmp_path / "reordered.json")
    assert cli.main([*argv, "--tokenizer-from", str(tmp_path / "reordered.json")]) == 0
    meta = json.loads((data / "meta.json").read_text())
    assert meta["tokenizer_fingerprint"] == reordered.fingerprint() != ours.fingerprint()
