"""`trickster eval` and the scoring under it: loss, perplexity and bits per byte, checked against
hand computations on tiny random models; vocabulary padding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from trickster import cli
from trickster.config import config_from_dict
from trickster.data.loader import load_data
from trickster.data.tokenizers import ByteTokenizer, CharTokenizer, load_tokenizer
from trickster.errors import UserError
from trickster.model.transformer import Transformer
from trickster.model.vocab import padded_vocab, resolve_vocab
from trickster.observe.evaluation import score_sequence, text_sequence
from trickster.train import checkpoint as ckpt

CPU = torch.device("cpu")


def random_model(vocab_size: int, max_seq_len: int = 16, seed: int = 0) -> Transformer:
    cfg = config_from_dict(
        {
            "model_config": dict(
                vocab_size=vocab_size,
                hidden_dim=16,
                num_layers=1,
                num_heads=2,
                mlp_dim=32,
                max_seq_len=max_seq_len,
            )
        }
    )
    torch.manual_seed(seed)
    model = Transformer(cfg.model)
    with torch.no_grad():  # larger than the usual init so that the loss differs clearly per token
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def save_random_checkpoint(path, tokenizer, data_path=None, **training) -> Path:
    rows = padded_vocab(tokenizer.vocab_size)
    cfg = config_from_dict(
        {
            "model_config": dict(
                vocab_size=rows, hidden_dim=16, num_layers=1, num_heads=2, mlp_dim=32, max_seq_len=16
            ),
            "training_config": training,
        }
    )
    torch.manual_seed(1)
    model = Transformer(cfg.model)
    info = {"step": 0, **({"data_path": str(data_path)} if data_path else {})}
    ckpt.save_checkpoint(path, model, cfg, tokenizer, info)
    return path


def eval_json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert cli.main(["eval", *argv, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def test_vocab_auto_is_padded_to_a_multiple_of_64():
    assert [padded_vocab(n) for n in (1, 64, 65, 257, 50257)] == [64, 64, 128, 320, 50304]
    cfg = config_from_dict({"model_config": {"vocab_size": "auto"}})
    assert resolve_vocab(cfg, CharTokenizer("abc", with_eot=True)).model.vocab_size == 64
    fixed = config_from_dict({"model_config": {"vocab_size": 4}})
    assert resolve_vocab(fixed, CharTokenizer("abc", with_eot=True)).model.vocab_size == 4  # as set
    short = config_from_dict({"model_config": {"vocab_size": 3}})  # one row fewer than a, b, c, end-of-text
    with pytest.raises(UserError, match=r"model_config.vocab_size \(3\) is smaller than the tokenizer's"):
        resolve_vocab(short, CharTokenizer("abc", with_eot=True))


def test_scores_match_a_token_by_token_hand_computation():
    tokenizer = CharTokenizer("ab é日\n")  # 1-, 2- and 3-byte characters
    text = "ab é日\nba 日é a\nb日 éé\n" * 2
    tokens, whole = text_sequence(tokenizer, text, "test")
    assert not whole and len(tokens) == len(text)  # no eot or bos: the first char is context only
    model = random_model(padded_vocab(tokenizer.vocab_size))
    seq_len = 5  # 38 targets: seven full windows and a partial one

    score = score_sequence(model, tokens, tokenizer, seq_len, CPU, batch_size=3)

    nats = 0.0
    with torch.no_grad():
        for j in range(1, len(tokens)):  # target j sees its window's tokens before it
            start = (j - 1) // seq_len * seq_len
            logits = model(torch.from_numpy(tokens[start:j])[None])[0][0, -1]
            logits[tokenizer.vocab_size :] = float("-inf")  # pad rows are never produced
            nats -= torch.log_softmax(logits, -1)[tokens[j]].item()
    n_bytes = len(text[1:].encode("utf-8"))
    assert score.tokens == len(text) - 1 and score.bytes == n_bytes
    assert score.loss == pytest.approx(nats / (len(text) - 1), rel=1e-5)
    assert score.bits_per_byte == pytest.approx(nats / math.log(2) / n_bytes, rel=1e-5)
    assert score.perplexity == pytest.approx(math.exp(nats / (len(text) - 1)), rel=1e-5)
    assert score.bits_per_byte < score.loss / math.log(2)  # more bytes than tokens


def test_a_byte_models_bits_per_byte_is_its_loss_over_ln2(tmp_path, capsys):
    run = save_random_checkpoint(tmp_path / "ckpt", ByteTokenizer())
    text = "naïve café, 日本語!\n" * 3
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    result = eval_json(capsys, str(run), "--text", str(tmp_path / "t.txt"))
    assert result["tokens"] == result["bytes"] == len(text.encode("utf-8")) - 1  # first byte: context
    assert result["bits_per_byte"] == pytest.approx(result["loss"] / math.log(2), rel=1e-9)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))
    assert result["loss"] > 0 and result["context"] == 16


def test_eval_on_prepared_bpe_data_and_text_agree(tmp_path, capsys):
    lines = [f"line {i}: the cat sat on the mat, and the dog sat on the log.\n" for i in range(60)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(lines), encoding="utf-8")
    data = tmp_path / "bpe-data"
    argv = [
        "data",
        "prepare",
        "text",
        str(corpus),
        "--tokenizer",
        "bpe",
        "--vocab-size",
        "300",
        "--out",
        str(data),
    ]
    assert cli.main(argv) == 0
    assert "vocabulary 300" in capsys.readouterr().out
    tokenizer = load_tokenizer(data / "tokenizer.json")
    run = save_random_checkpoint(tmp_path / "ckpt", tokenizer, data_path=data)
    val = np.asarray(load_data(data).val)

    by_data = eval_json(capsys, str(run))  # the run's own data by default
    assert by_data["tokens"] == len(val) - 1
    val_text = tokenizer.decode(val.tolist())
    assert by_data["bytes"] == len(val_text.encode()) - tokenizer.count_bytes(val[:1])
    limited = eval_json(capsys, str(run), "--data", str(data), "--max-tokens", "20")
    assert limited["tokens"] == 20 and limited["bytes"] == tokenizer.count_bytes(val[1:21])

    # the same text as a file: it starts after <|endoftext|>, so every token of it is scored
    (tmp_path / "val.txt").write_text(val_text, encoding="utf-8")
    by_text = eval_json(capsys, str(run), "--text", str(tmp_path / "val.txt"))
    assert by_text["tokens"] == len(tokenizer.encode(val_text))
    assert by_text["bytes"] == len(val_text.encode())
    assert by_text["bits_per_byte"] == pytest.approx(by_text["nats"] / math.log(2) / by_text["bytes"])

    capsys.readouterr()
    assert cli.main(["eval", str(run), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert f"loss {by_data['loss']:.4f}" in printed and "bits per byte" in printed


@pytest.mark.slow
def test_eval_accepts_an_imported_hugging_face_llama(tmp_path, capsys):
    from .test_hf import TEXT, tiny_llama

    src, theirs, hf_tok = tiny_llama(tmp_path)
    run = tmp_path / "run"
    assert cli.main(["import", "hf", str(src), "--out", str(run)]) == 0
    (tmp_path / "t.txt").write_text(TEXT, encoding="utf-8")
    result = eval_json(capsys, str(run), "--text", str(tmp_path / "t.txt"))

    ids = hf_tok(TEXT)["input_ids"]  # <s> then the text, as transformers tokenizes it
    assert len(ids) <= 64  # one window: the imported context is 64
    with torch.no_grad():
        logits = theirs(torch.tensor([ids])).logits[0, :-1].float()
    logits[:, 300:] = float("-inf")  # 320 rows, 300 tokenizer ids
    nats = torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum").item()
    assert result["tokens"] == len(ids) - 1 and result["bytes"] == len(TEXT.encode())
    assert result["loss"] == pytest.approx(nats / (len(ids) - 1), rel=1e-4)
    assert result["bits_per_byte"] == pytest.approx(nats / math.log(2) / len(TEXT.encode()), rel=1e-4)


def test_a_run_whose_data_is_not_found_from_here_says_to_pass_data(
    trained_run, shakespeare_dir, tmp_path, monkeypatch, capsys
):
    """A run records its data folder as it was given (`data/shakespeare-char`, relative to where it
    trained). From another folder, eval said to prepare data (`no prepared data in ... (meta.json
    missing); give a folder written by trickster data prepare`) and compare printed 'val loss n/a
    (no data)' without saying why; both now name the folder and --data."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    info = run / "checkpoints" / "best" / "info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "data_path": "data/shakespeare-char"}))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["eval", str(run), "--max-tokens", "50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "data/shakespeare-char" in err and "--data DIR" in err, err
    assert "trickster data prepare" not in err
    assert cli.main(["compare", str(run), "--max-new-tokens", "5", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "data/shakespeare-char" in out and "--data DIR" in out, out
    # and with --data, both score it
    assert cli.main(["eval", str(run), "--max-tokens", "50", "--data", str(shakespeare_dir)]) == 0
    assert cli.main(["compare", str(run), "--max-new-tokens", "5", "--data", str(shakespeare_dir)]) == 0
    assert "n/a" not in capsys.readouterr().out


def test_a_run_whose_data_was_moved_away_says_it_is_gone(trained_run, tmp_path, capsys):
    """An absolute data folder that is no longer there is not a matter of where the command runs:
    the line said 'relative to where it trained; run from that folder', advice that cannot help."""
    import shutil

    run, gone = tmp_path / "run", tmp_path / "moved" / "shakespeare-char"
    shutil.copytree(trained_run, run)
    info = run / "checkpoints" / "best" / "info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "data_path": str(gone)}))
    assert cli.main(["eval", str(run), "--max-tokens", "50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"the data it trained on, {gone}, is not there" in err, err
    assert "--data DIR" in err and "run from that folder" not in err and "relative" not in err
    assert cli.main(["compare", str(run), "--max-new-tokens", "5", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert f"{gone}, is not there" in out and "run from that folder" not in out, out


def test_data_of_another_tokenizer_names_what_to_pass(trained_run, tmp_path, capsys):
    """eval on data of another tokenizer said only 'pass --data DIR'. The run's own folder prepared
    again since with another tokenizer (its path recorded, its tokens not the model's) is told so,
    with the --tokenizer-from that prepares text for the model."""
    import shutil

    text = tmp_path / "notes.txt"
    text.write_text("some unrelated text with its own characters 0123456789\n" * 40, encoding="utf-8")
    other = tmp_path / "other"
    argv = ["data", "prepare", "text", str(text), "--tokenizer", "byte", "--out", str(other), "--no-progress"]
    assert cli.main(argv) == 0
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    info = run / "checkpoints" / "best" / "info.json"
    info.write_text(json.dumps({**json.loads(info.read_text()), "data_path": str(other)}))
    capsys.readouterr()
    assert cli.main(["eval", str(run), "--max-tokens", "50"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"data in {other} uses another tokenizer than {run}/checkpoints/best; it was prepared again" in err
    assert f"trickster data prepare ... --tokenizer-from {run}/checkpoints/best" in err, err
    assert "pass --data" not in err


def test_a_slow_eval_says_how_far_it_got_on_stderr(trained_run, shakespeare_dir, capsys, monkeypatch):
    """`trickster eval --max-tokens 10000000` of a large model scores thousands of windows before
    it prints a line; once it has taken a while it says how far it got (stderr: --json's stdout is
    read by programs). A fast one says nothing."""
    import re

    from trickster.train.console import SlowPass

    command = ["eval", str(trained_run), "--data", str(shakespeare_dir), "--max-tokens", "640", "--json"]
    assert cli.main(command) == 0
    quick = capsys.readouterr()
    assert quick.err == ""
    monkeypatch.setattr(SlowPass, "AFTER_SECONDS", 0.0)
    assert cli.main([*command, "--batch-size", "2"]) == 0
    slow = capsys.readouterr()
    assert json.loads(slow.out)["loss"] == pytest.approx(json.loads(quick.out)["loss"], rel=1e-5)
    windows = 640 // 64  # --max-tokens over the run's context (micro_config: max_seq_len 64)
    shown = (
        rf"scoring {shakespeare_dir} \(val split\): 1 of {windows // 2} batches in \d+ s, about \d+ s to go\n"
    )
    assert re.fullmatch(shown, slow.err), slow.err


def test_one_scored_token_is_said_in_the_singular(tmp_path, capsys):
    """A two-character text scores one token of one byte (the first character is context only):
    the summary said '1 tokens, 1 bytes'."""
    run = save_random_checkpoint(tmp_path / "ckpt", CharTokenizer("ab"))
    (tmp_path / "t.txt").write_text("ab", encoding="utf-8")
    assert cli.main(["eval", str(run), "--text", str(tmp_path / "t.txt"), "--device", "cpu"]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary.startswith("1 token, 1 byte (1.00 bytes per token); "), summary
    (tmp_path / "t.txt").write_text("abba", encoding="utf-8")
    assert cli.main(["eval", str(run), "--text", str(tmp_path / "t.txt"), "--device", "cpu"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("3 tokens, 3 bytes (1.00 bytes per token); ")


def test_windows_of_one_token_are_said_in_the_singular(tmp_path, capsys):
    """A checkpoint trained on windows of one token (training_config.seq_len 1): the summary said
    'windows of 1 tokens'."""
    run = save_random_checkpoint(tmp_path / "ckpt", CharTokenizer("ab"), seq_len=1)
    (tmp_path / "t.txt").write_text("abba", encoding="utf-8")
    assert cli.main(["eval", str(run), "--text", str(tmp_path / "t.txt"), "--device", "cpu"]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert summary.endswith("; windows of 1 token, each token predicted once"), summary
