"""`trickster eval --task hellaswag`: accuracies checked against each ending's loss computed here by
a plain forward pass on the trained micro run; long contexts; a char model's missing characters;
the download, its cache and its shape check (on files the tests write: no network)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trickster import cli
from trickster.data import sources
from trickster.data.tokenizers import ByteTokenizer
from trickster.errors import UserError
from trickster.observe import hellaswag
from trickster.train import checkpoint_load

from .conftest import EXCERPT
from .test_evaluation import save_random_checkpoint

CPU = torch.device("cpu")
LINES = [line.strip() for line in EXCERPT.read_text().splitlines() if line.strip()]


def write_file(path: Path, examples: list[dict], monkeypatch) -> Path:
    """hellaswag_val.jsonl's format, with the product's line count set to this file's."""
    monkeypatch.setattr(hellaswag, "VAL_EXAMPLES", len(examples))
    path.write_text("".join(json.dumps(e) + "\n" for e in examples), encoding="utf-8")
    return path


def excerpt_examples(count: int, context_lines: int = 1, seed: int = 0, chars: int = 20) -> list[dict]:
    """Contexts of `context_lines` excerpt lines (one: its first `chars` characters); endings cut
    from other lines at 3 to 40 characters, so that the lowest summed loss and the lowest loss per
    token often disagree."""
    rng = random.Random(seed)
    examples = []
    for i in range(count):
        context = " ".join(LINES[(i * 7 + k) % len(LINES)] for k in range(context_lines))
        context = context if context_lines > 1 else context[:chars]
        endings = [rng.choice(LINES)[: rng.randint(3, 40)] for _ in range(4)]
        examples.append({"ctx": context, "endings": endings, "label": 0})
    return examples


def losses_by_hand(loaded, context: str, ending: str) -> tuple[float, float]:
    """The summed and mean loss of " " + ending after the context, in one forward pass of the rows's
    last seq_len + 1 tokens, over the tokenizer's ids only."""
    tokenizer, window = loaded.tokenizer, loaded.cfg.seq_len
    ending_ids = tokenizer.encode(" " + ending)
    ids = (tokenizer.encode(context) + ending_ids)[-(window + 1) :]
    with torch.no_grad():
        logits = loaded.model(torch.tensor([ids[:-1]]))[0][0].float()
    logits[:, tokenizer.vocab_size :] = float("-inf")
    losses = F.cross_entropy(logits[-len(ending_ids) :], torch.tensor(ending_ids), reduction="none")
    return losses.sum().item(), losses.mean().item()


def label_and_expect(loaded, examples: list[dict]) -> tuple[list[bool], list[bool]]:
    """Set each label (the ending of lowest mean loss, of lowest summed loss, or another, in turn)
    and return, example by example, whether acc and acc_norm should count it right."""
    right, right_norm, disagree = [], [], 0
    for i, example in enumerate(examples):
        pairs = [losses_by_hand(loaded, example["ctx"], ending) for ending in example["endings"]]
        summed, mean = torch.tensor(pairs).T
        for losses in (summed, mean):  # no near-tie that float rounding in a batch could flip
            ordered = losses.sort().values
            assert ordered[1] - ordered[0] > 1e-4, example
        by_sum, by_mean = int(summed.argmin()), int(mean.argmin())
        example["label"] = [by_mean, by_sum, (by_mean + 1) % 4][i % 3]
        right.append(example["label"] == by_sum)
        right_norm.append(example["label"] == by_mean)
        disagree += by_sum != by_mean
    assert disagree >= 3 and sum(right) != sum(right_norm)  # the test tells acc from acc_norm
    return right, right_norm


def run_task(capsys, run, path: Path, *flags: str) -> dict:
    capsys.readouterr()
    argv = [
        "eval",
        str(run),
        "--task",
        "hellaswag",
        "--hellaswag-file",
        str(path),
        "--json",
        "--device",
        "cpu",
    ]
    assert cli.main([*argv, *flags]) == 0
    return json.loads(capsys.readouterr().out)


def test_accuracy_counts_the_examples_whose_right_ending_has_the_lowest_loss(
    trained_run, tmp_path, monkeypatch, capsys
):
    loaded = checkpoint_load.load_checkpoint(trained_run, CPU)
    examples = excerpt_examples(16)
    right_each, right_norm_each = label_and_expect(loaded, examples)
    right, right_norm = sum(right_each), sum(right_norm_each)
    path = write_file(tmp_path / "hellaswag_val.jsonl", examples, monkeypatch)

    # 3 examples a pass: rows of different lengths padded together, and a last pass of one
    result = run_task(capsys, trained_run, path, "--batch-size", "3")
    assert (result["correct"], result["correct_norm"]) == (right, right_norm)
    assert result["acc"] == right / 16 and result["acc_norm"] == right_norm / 16
    assert all(len(e["ctx"]) + 1 + len(end) <= 65 for e in examples for end in e["endings"])
    assert result["scored"] == result["examples"] == 16 and result["cut"] == 0
    assert result["task"] == "hellaswag" and result["context"] == loaded.cfg.seq_len == 64

    limited = run_task(capsys, trained_run, path, "--max-examples", "6")
    assert limited["examples"] == limited["scored"] == 6
    assert (limited["correct"], limited["correct_norm"]) == (sum(right_each[:6]), sum(right_norm_each[:6]))

    capsys.readouterr()
    assert cli.main(["eval", str(trained_run), "--task", "hellaswag", "--hellaswag-file", str(path)]) == 0
    printed = capsys.readouterr().out
    assert f"acc_norm {right_norm / 16:.4f} ({right_norm} of 16)" in printed
    assert f"acc {right / 16:.4f} ({right} of 16)" in printed and "0 contexts cut" in printed


def test_a_long_context_keeps_its_end(trained_run, tmp_path, monkeypatch, capsys):
    """Contexts of 3 lines (over 64 characters, the micro model's context) lose their start: the
    accuracies follow the losses of the last 65 tokens, and another start changes nothing."""
    loaded = checkpoint_load.load_checkpoint(trained_run, CPU)
    examples = excerpt_examples(12, context_lines=3, seed=1)
    right, right_norm = map(sum, label_and_expect(loaded, examples))
    path = write_file(tmp_path / "hellaswag_val.jsonl", examples, monkeypatch)
    too_long = sum(any(len(e["ctx"]) + 1 + len(end) > 65 for end in e["endings"]) for e in examples)
    assert too_long >= 10  # one character, one token

    result = run_task(capsys, trained_run, path, "--batch-size", "5")
    assert (result["correct"], result["correct_norm"]) == (right, right_norm)
    assert result["cut"] == too_long and result["scored"] == 12

    example = hellaswag.Example(examples[0]["ctx"], tuple(examples[0]["endings"]), 0)
    other_start = hellaswag.Example("x" * 200 + example.context[-60:], example.endings, 0)
    tail = hellaswag.render(loaded.tokenizer, example, 64)
    assert tail.cut and all(len(row) == 65 for row in tail.tokens)
    batches = [[hellaswag.render(loaded.tokenizer, e, 64)] for e in (example, other_start)]
    first, second = (
        hellaswag.ending_losses(loaded.model, b, loaded.tokenizer.vocab_size, CPU) for b in batches
    )
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    by_hand = torch.tensor([losses_by_hand(loaded, example.context, end) for end in example.endings]).T
    torch.testing.assert_close(torch.stack([first[0][0], first[1][0]]), by_hand, rtol=1e-5, atol=1e-5)


def test_examples_a_char_model_cannot_read_are_counted_and_left_out(
    trained_run, tmp_path, monkeypatch, capsys
):
    loaded = checkpoint_load.load_checkpoint(trained_run, CPU)
    examples = excerpt_examples(10, seed=2)
    examples[1]["endings"][2] += " 1984"  # digits: not in the excerpt
    examples[4]["ctx"] = "[header] " + examples[4]["ctx"]
    examples[7]["endings"][0] = " ".join(LINES[3:9])  # longer than the 64-token window
    for broken in (examples[1], examples[4]):
        assert set(broken["ctx"] + "".join(broken["endings"])) - set(loaded.tokenizer.chars)
    assert len(" " + examples[7]["endings"][0]) > 64
    path = write_file(tmp_path / "hellaswag_val.jsonl", examples, monkeypatch)

    result = run_task(capsys, trained_run, path)
    assert result["skipped"] == {"unknown_characters": 2, "ending_too_long": 1, "empty": 0}
    assert result["scored"] == 7 and result["examples"] == 10

    kept = [e for i, e in enumerate(examples) if i not in (1, 4, 7)]
    right, right_norm = map(sum, label_and_expect(loaded, kept))  # labels of the rest, set anew
    write_file(path, examples, monkeypatch)
    result = run_task(capsys, trained_run, path)
    assert (result["correct"], result["correct_norm"]) == (right, right_norm)
    capsys.readouterr()
    assert cli.main(["eval", str(trained_run), "--task", "hellaswag", "--hellaswag-file", str(path)]) == 0
    assert "left out of 10: 2 with characters outside the model's vocabulary, 1 with an ending" in (
        capsys.readouterr().out
    )


def test_a_byte_model_reads_every_example_with_a_context(tmp_path, monkeypatch, capsys):
    run = save_random_checkpoint(tmp_path / "ckpt", ByteTokenizer())
    examples = [
        {"ctx": "Un café à Zürich, 1984:", "endings": ["naïve", "日本語", "[title] x", "ok"], "label": 1},
        {"ctx": "A man is sitting on a roof. he", "endings": ["is", "rips tiles off.", "a", "b"], "label": 3},
        {"ctx": "", "endings": ["no", "context", "before", "these"], "label": 0},  # nothing to predict from
    ]
    result = run_task(capsys, run, write_file(tmp_path / "h.jsonl", examples, monkeypatch))
    assert result["scored"] == 2
    assert result["skipped"] == {"unknown_characters": 0, "ending_too_long": 0, "empty": 1}


def test_a_scoring_that_fails_leaves_the_model_in_the_mode_it_had(tmp_path, monkeypatch):
    """Scoring runs in eval mode (no dropout) and puts back the caller's mode, also when a pass
    fails (out of memory): training's model, or any caller's, is not left in eval mode."""
    loaded = checkpoint_load.load_checkpoint(save_random_checkpoint(tmp_path / "ckpt", ByteTokenizer()))
    short = [{"ctx": "A man is on a roof. He", "endings": [" is", " a", " b", " c"], "label": 0}] * 2
    examples = hellaswag.parse_examples(
        write_file(tmp_path / "h.jsonl", short, monkeypatch).read_bytes(), "h.jsonl", ""
    )
    seen = []

    def failing(model, *args):
        seen.append(model.training)
        raise RuntimeError("out of memory")

    monkeypatch.setattr(hellaswag, "ending_losses", failing)
    model = loaded.model.train()
    with pytest.raises(RuntimeError, match="out of memory"):
        hellaswag.score(model, loaded.tokenizer, examples, 16, torch.device("cpu"))
    assert seen == [False] and model.training


# --------------------------------------------------------------------------- the file


def test_downloaded_once_checked_by_shape_then_read_from_the_cache(tmp_path, monkeypatch):
    examples = excerpt_examples(5)
    served = write_file(tmp_path / "served.jsonl", examples, monkeypatch)
    monkeypatch.setenv("TRICKSTER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hellaswag, "VAL_URL", served.as_uri())
    cached = tmp_path / "cache" / "hellaswag" / "hellaswag_val.jsonl"

    loaded, where = hellaswag.load_examples()
    assert [e.context for e in loaded] == [e["ctx"] for e in examples] and where == str(cached)
    assert cached.read_bytes() == served.read_bytes()
    served.unlink()  # the second read needs no network
    again, where = hellaswag.load_examples()
    assert again == loaded and where == str(cached)

    monkeypatch.delenv("TRICKSTER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hellaswag.cache_file() == tmp_path / "xdg" / "trickster" / "hellaswag" / "hellaswag_val.jsonl"


def test_a_download_of_the_wrong_shape_is_refused_and_not_cached(tmp_path, monkeypatch):
    served = write_file(tmp_path / "served.jsonl", excerpt_examples(4), monkeypatch)
    monkeypatch.setattr(hellaswag, "VAL_EXAMPLES", 5)
    monkeypatch.setenv("TRICKSTER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hellaswag, "VAL_URL", served.as_uri())
    with pytest.raises(UserError, match=r"served.jsonl has 4 lines, but HellaSwag's validation set has 5"):
        hellaswag.load_examples()
    assert not (tmp_path / "cache").exists()

    monkeypatch.setattr(hellaswag, "VAL_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")
    with pytest.raises(sources.DownloadFailed, match="pass the local copy with --hellaswag-file FILE"):
        hellaswag.load_examples(timeout=5)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"ctx": "a", "endings": ["a", "b", "c"], "label": 0}', "line 2: 3 endings, not a JSON object"),
        ('{"ctx": "a", "endings": ["a", "b", "c", "d"], "label": 4}', "line 2: label 4, not"),
        ('{"ctx": "a", "endings": ["a", "b", "c", "d"], "label": true}', "line 2: label true, not"),
        ('{"ctx": "a", "endings": ["a", "b", "c", "d"], "label": "4"}', 'line 2: label "4", not'),
        ('{"ctx": "a", "endings": ["a", "b", "c", "d"], "label": ""}', 'line 2: label "", not'),
        ('{"ctx": "a", "endings": ["a", "b", "c", "d"], "label": " 1"}', 'line 2: label " 1", not'),
        ('{"ctx": 5, "endings": ["a", "b", "c", "d"], "label": 0}', "line 2: ctx is a number, not"),
        ('{"ctx": "a", "endings": ["a", 2, "c", "d"], "label": 0}', "line 2: an ending that is not text"),
        ('["a", "b"]', "line 2: an array, not"),
        ("{not json", "line 2 is not JSON"),
        ("[" * 100_000 + "]" * 100_000, "line 2 nests arrays or objects too deeply to read"),
    ],
)
def test_each_line_must_be_a_hellaswag_example(tmp_path, monkeypatch, line, problem):
    good = json.dumps({"ctx": "a", "endings": ["a", "b", "c", "d"], "label": 0})
    monkeypatch.setattr(hellaswag, "VAL_EXAMPLES", 3)
    raw = f"{good}\n{line}\n{good}\n".encode()
    with pytest.raises(UserError, match="^f.jsonl " + problem.replace("(", r"\(")) as err:
        hellaswag.parse_examples(raw, "f.jsonl", "pass the real file")
    assert str(err.value).endswith("; pass the real file")


def test_a_hugging_face_export_scores_as_the_original_file(trained_run, tmp_path, monkeypatch, capsys):
    """Rowan/hellaswag's validation split written by `.to_json(...)`: the original's columns, in
    its own order, with the label as text. Its scores are those of the same examples in the
    original shape."""
    examples = excerpt_examples(12)
    for i, example in enumerate(examples):
        example["label"] = i % 4
    original_file = write_file(tmp_path / "hellaswag_val.jsonl", examples, monkeypatch)
    original = run_task(capsys, trained_run, original_file)
    exported = [
        {
            "ind": 24 + i,
            "activity_label": "Roof shingle removal",
            "ctx_a": e["ctx"],
            "ctx_b": "",
            "ctx": e["ctx"],
            "endings": e["endings"],
            "source_id": f"activitynet~v_{i}",
            "split": "val",
            "split_type": "indomain",
            "label": str(e["label"]),
        }
        for i, e in enumerate(examples)
    ]
    from_hf = run_task(capsys, trained_run, write_file(tmp_path / "validation.jsonl", exported, monkeypatch))
    assert from_hf["scored"] == 12 and 0 < from_hf["correct_norm"] < 12
    assert {**from_hf, "source": ""} == {**original, "source": ""}


def test_an_imported_llama_tokenizer_reads_each_ending_as_running_text():
    """Llama-2's tokenizer.json writes a word-start marker before every encoded text and turns spaces
    into markers: " is" encoded alone becomes two markers and "is", where the sentence "the man is"
    has one. Its post-processor puts <s> first, as every training document started. Each row must
    hold exactly the tokens of the text the model would read, <s> first."""
    pytest.importorskip("tokenizers")
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    from trickster.data.tokenizers import HFTokenizer

    backend = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    backend.normalizer = normalizers.Sequence(
        [normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")]
    )
    backend.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"])
    backend.train_from_iterator(EXCERPT.read_text().splitlines(), trainer)
    start = backend.token_to_id("<s>")
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", start)])
    tokenizer = HFTokenizer(json.loads(backend.to_str()), {"bos_token": "<s>", "eos_token": "</s>"})
    context, endings = "The king is", ("dead, and the queen", "here", "gone to bed", "not my lord")
    rows = hellaswag.render(tokenizer, hellaswag.Example(context, endings, 0), window=64)
    for row, length, ending in zip(rows.tokens, rows.ending_lengths, endings, strict=True):
        assert row == [start] + backend.encode(f"{context} {ending}", add_special_tokens=False).ids
        assert tokenizer.decode(row[-length:]) == ending  # the ending's own tokens are scored


def test_an_ending_that_fills_the_window_is_scored_after_one_context_token(trained_run):
    """The micro model reads 64 characters: " " + 63 letters is scored after the context's last
    character; " " + 64 letters leaves nothing to predict its first from, and is left out."""
    loaded = checkpoint_load.load_checkpoint(trained_run, CPU)
    fits = hellaswag.Example("And so", ("e" * 63, "a", "b", "c"), 0)
    rows = hellaswag.render(loaded.tokenizer, fits, 64)
    assert rows.tokens[0] == loaded.tokenizer.encode("o " + "e" * 63) and rows.ending_lengths[0] == 64
    summed, per_token = hellaswag.ending_losses(loaded.model, [rows], loaded.tokenizer.vocab_size, CPU)
    assert torch.isfinite(summed).all() and torch.isfinite(per_token).all()
    too_long = hellaswag.Example("And so", ("e" * 64, "a", "b", "c"), 0)
    assert hellaswag.render(loaded.tokenizer, too_long, 64) == "ending_too_long"


def test_a_row_one_token_longer_than_the_window_is_counted_as_cut(trained_run):
    """63 characters of context, then " e": 65 tokens, the 64 inputs and their targets, whole; a
    64th character of context makes 66, and its first is cut off."""
    tokenizer = checkpoint_load.load_checkpoint(trained_run, CPU).tokenizer
    whole = hellaswag.render(tokenizer, hellaswag.Example("a" * 63, ("e", "a", "b", "c"), 0), 64)
    cut = hellaswag.render(tokenizer, hellaswag.Example("b" + "a" * 63, ("e", "a", "b", "c"), 0), 64)
    assert not whole.cut and whole.tokens[0] == tokenizer.encode("a" * 63 + " e")
    assert cut.cut and cut.tokens[0] == whole.tokens[0]
