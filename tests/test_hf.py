"""Hugging Face export and import, checked against `transformers` itself on tiny models.

Every Hugging Face model and tokenizer here is built by the test and saved to tmp_path: no hub,
no downloads. transformers is imported inside the tests that need it (it takes seconds).
"""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from trickster import cli, run_checkpoints
from trickster.config import config_from_dict
from trickster.data.new_tokenizer import build_tokenizer
from trickster.data.tokenizers import (
    ByteTokenizer,
    CharTokenizer,
    HFTokenizer,
    load_tokenizer,
)
from trickster.export.hf import FROM_HF, TO_HF, rename
from trickster.model.generate import generate
from trickster.model.transformer import Transformer
from trickster.model.vocab import padded_vocab
from trickster.train import checkpoint as ckpt
from trickster.train import checkpoint_load, checkpoint_path
from trickster.train.loop import train

from . import children
from .conftest import EXCERPT, QUIET, micro_config
from .test_tokenizers import gpt2_or_skip

TEXT = "ROMEO:\nIs it so?  Then,\tI defy you, stars!\n\n"
# where byte-level BPEs differ if one rule is off: scripts, emoji split across ids (a joined family
# of 18 bytes), runs of spaces, tabs and newlines, contractions in either case, digits, and the text
# of special tokens, which ours read as text
VARIED = (
    "naïve café, déjà vu — 日本語のテキスト 🎭🧪👩\u200d👩\u200d👧 \u200b\n\n\n"
    "It's John's; they'll've    gone.\t\tTabs\r\n  and  spaces   \n \n"
    "3.14159 1234567890 ٣٤ Ⅻ x²<|endoftext|>after <|pad|> IT'S'LL  '  s \n  "
)


def random_checkpoint(path, tokenizer, seed=0, **model):
    """A checkpoint of random weights large enough that greedy choices are clear-cut."""
    shape = dict(hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_seq_len=96)
    cfg = config_from_dict({"model_config": {**shape, **model}})
    torch.manual_seed(seed)
    net = Transformer(cfg.model)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.uniform_(0.5, 1.5) if name.endswith("norm.weight") else p.normal_(0.0, 0.3)
    ckpt.save_checkpoint(path, net, cfg, tokenizer, {"step": 0})
    return path


def hf_greedy(model, ids, n, **options):
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, **options)
    out = out[0, len(ids) :].tolist()
    eos = model.generation_config.eos_token_id
    return out[:-1] if out and out[-1] == eos else out  # ours does not yield the stop token


def assert_export_matches(checkpoint_path, out, text):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert cli.main(["export", str(checkpoint_path), "--format", "hf", "--out", str(out)]) == 0
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    loaded = checkpoint_load.load_checkpoint(checkpoint_path)
    ours, tokenizer = loaded.model, loaded.tokenizer
    theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    hf_tok = AutoTokenizer.from_pretrained(out)

    ids = tokenizer.start_ids() + tokenizer.encode(text)
    assert hf_tok(text)["input_ids"] == ids
    assert hf_tok.decode(ids, skip_special_tokens=True) == tokenizer.decode(ids) == text
    idx = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, ours(idx)[0])
    n = 20
    mine = list(
        generate(ours, ids, n, temperature=0, vocab_limit=tokenizer.vocab_size, stop_ids=tokenizer.stop_ids)
    )
    assert hf_greedy(theirs, ids, n) == mine
    return theirs, hf_tok


def test_name_map_is_a_bijection_over_every_parameter():
    cfg = config_from_dict(
        {
            "model_config": dict(
                vocab_size=10, hidden_dim=8, num_layers=3, num_heads=2, mlp_dim=16, tie_embeddings=False
            )
        }
    )
    names = list(Transformer(cfg.model).state_dict())
    hf_names = [rename(n, TO_HF) for n in names]
    assert None not in hf_names and len(set(hf_names)) == len(names)
    assert [rename(n, FROM_HF) for n in hf_names] == names
    assert rename("layers.2.feed_forward.w1.weight", TO_HF) == "model.layers.2.mlp.gate_proj.weight"
    assert rename("model.layers.11.self_attn.k_proj.weight", FROM_HF) == "layers.11.attention.wk.weight"


def test_export_of_a_trained_char_model_loads_in_transformers(trained_run, tmp_path):
    theirs, hf_tok = assert_export_matches(trained_run, tmp_path / "hf", EXCERPT.read_text()[:40])
    assert theirs.config.tie_word_embeddings
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    chars = load_tokenizer(trained_run / "tokenizer.json").vocab_size
    assert config["architectures"] == ["LlamaForCausalLM"] and hf_tok.vocab_size == chars == 61
    # vocab_size: auto padded the embedding to 64 rows; generation never picks the 3 pad rows
    assert config["vocab_size"] == 64
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == [61, 62, 63]


def test_export_byte_gqa_untied_with_unused_rows(tmp_path):
    """Byte tokenizer with end-of-text, grouped-query attention, untied output and 300 embedding
    rows of which the tokenizer uses 257: the unused rows are suppressed as ours masks them."""
    tokenizer = ByteTokenizer(with_eot=True)
    path = random_checkpoint(
        tmp_path / "ckpt", tokenizer, vocab_size=300, num_kv_heads=2, tie_embeddings=False, rope_theta=500.0
    )
    theirs, hf_tok = assert_export_matches(path, tmp_path / "hf", "naïve 日本語 🎭\nok")
    assert hf_tok.eos_token_id == tokenizer.eot_id == 256
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    # transformers 4 and vLLM read rope_theta at the top level, transformers 5 in rope_parameters
    assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == 500.0
    assert config["max_position_embeddings"] == theirs.config.max_position_embeddings == 96
    assert theirs.config.num_key_value_heads == 2 and not theirs.config.tie_word_embeddings
    assert hf_tok.decode([*"hé".encode(), 256], skip_special_tokens=True) == "hé"


def test_a_bfloat16_export_holds_bfloat16_weights_that_compute_our_rounded_logits(tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    tokenizer = CharTokenizer.from_texts([TEXT])
    path = random_checkpoint(tmp_path / "ckpt", tokenizer, vocab_size=tokenizer.vocab_size)
    out = tmp_path / "hf"
    assert cli.main(["export", str(path), "--format", "hf", "--out", str(out), "--dtype", "bfloat16"]) == 0
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(name).dtype for name in f.keys()} == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ours = checkpoint_load.load_checkpoint(path).model
    with torch.no_grad():
        for p in ours.parameters():
            p.copy_(p.to(torch.bfloat16).float())  # what the file holds
        theirs = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
        idx = torch.tensor([tokenizer.encode(TEXT)])
        torch.testing.assert_close(theirs(idx).logits, ours(idx)[0])


def test_export_char_with_end_of_text(tmp_path):
    tokenizer = CharTokenizer.from_texts([TEXT, "xyz"], with_eot=True)
    path = random_checkpoint(tmp_path / "ckpt", tokenizer, seed=1, vocab_size=tokenizer.vocab_size)
    _, hf_tok = assert_export_matches(path, tmp_path / "hf", TEXT)
    assert hf_tok.eos_token_id == tokenizer.eot_id and hf_tok.decode([0, tokenizer.eot_id]) != ""


def test_export_bpe_tokenizer_json_round_trips_in_transformers(tmp_path):
    """A byte-level BPE trained on a few lines: transformers' AutoTokenizer gives the same ids, the
    end-of-text id is its eos, and logits and greedy tokens match ours."""
    lines = [EXCERPT.read_text()[:3000], "naïve café, déjà vu 🎭", "ROMEO: is it so?"]
    tokenizer = build_tokenizer("bpe", iter(lines), with_eot=True, vocab_size=320)
    path = random_checkpoint(
        tmp_path / "ckpt", tokenizer, seed=2, vocab_size=padded_vocab(tokenizer.vocab_size)
    )
    theirs, hf_tok = assert_export_matches(path, tmp_path / "hf", "ROMEO: naïve déjà vu 🎭")
    assert hf_tok.eos_token_id == tokenizer.eot_id
    assert theirs.config.vocab_size % 64 == 0 and theirs.config.vocab_size >= tokenizer.vocab_size


def test_export_gpt2_gives_tiktokens_ids_and_our_logits(tmp_path):
    """GPT-2's vocabulary and merges, recovered from tiktoken's ranks: transformers' tokenizer gives
    tiktoken's ids on varied text and on each of its lines (a line ending in spaces, one of a
    lone space), and the model our logits."""
    tokenizer = gpt2_or_skip()
    rows = padded_vocab(tokenizer.vocab_size)
    path = random_checkpoint(tmp_path / "ckpt", tokenizer, vocab_size=rows, num_kv_heads=2, max_seq_len=256)
    theirs, hf_tok = assert_export_matches(path, tmp_path / "hf", VARIED)
    for line in VARIED.splitlines(keepends=True) + [" ", "  x", "Hello world"]:
        assert hf_tok(line)["input_ids"] == tokenizer.encode(line), line
    assert hf_tok("Hello world")["input_ids"] == [15496, 995]  # GPT-2's well-known ids
    assert hf_tok.eos_token_id == 50256 and 50256 not in hf_tok(VARIED)["input_ids"]
    assert hf_tok.decode([15496, 50256, 995], skip_special_tokens=True) == "Hello world"
    assert theirs.config.vocab_size == rows == 50304
    generation = json.loads((tmp_path / "hf" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == list(range(50257, 50304))


@pytest.mark.parametrize("kind", ["byte", "bpe", "gpt2"])
def test_exported_tokenizer_reads_special_token_text_as_text_like_ours(tmp_path, kind):
    """Ours never turns "<|endoftext|>" typed in a prompt into the end-of-text id; neither may
    the exported tokenizer (transformers splits on special tokens unless told not to)."""
    from transformers import AutoTokenizer

    from trickster.export.hf import hf_tokenizer_files

    size = 280 if kind == "bpe" else None
    if kind == "gpt2":
        gpt2_or_skip()
    tokenizer = build_tokenizer(kind, iter([TEXT, "naïve 🎭"]), with_eot=True, vocab_size=size)
    out = tmp_path / "tok"
    out.mkdir()
    for name, content in hf_tokenizer_files(tokenizer, 64).items():
        (out / name).write_text(json.dumps(content), encoding="utf-8")
    hf_tok = AutoTokenizer.from_pretrained(out)
    text = "Is it<|endoftext|> so?<|pad|>  🎭\n"
    assert hf_tok(text)["input_ids"] == tokenizer.encode(text)
    assert tokenizer.eot_id not in tokenizer.encode(text)
    assert hf_tok.eos_token_id == tokenizer.eot_id
    # and `import hf` of the export keeps the rule, as transformers does
    files = [json.loads((out / name).read_text()) for name in ("tokenizer.json", "tokenizer_config.json")]
    assert HFTokenizer(*files).encode(text) == tokenizer.encode(text)


def test_export_refuses_an_existing_folder(trained_run, tmp_path, capsys):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "notes.txt").write_text("mine")
    assert cli.main(["export", str(trained_run), "--out", str(tmp_path / "hf")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "hf").iterdir()] == ["notes.txt"]


def test_an_export_killed_as_it_takes_its_folder_loses_nothing(trained_run, tmp_path):
    """`--out` may be an empty folder the user made. Killed just before its staging folder takes
    that name, the export leaves the folder where it was; the next export deletes what the killed
    one left and fills the folder."""
    out = tmp_path / "hf"
    out.mkdir()
    argv = ["export", str(trained_run), "--out", str(out)]
    killed = children.run("tests.crash_child", "before-staged-rename", "1", *argv)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert out.is_dir() and not any(out.iterdir())
    assert cli.main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert checkpoint_path.resolve(trained_run)  # still there: nothing of the run was touched
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in out.iterdir()}


def test_a_folder_an_earlier_export_left_hidden_is_put_back(trained_run, tmp_path, dead_pid, capsys):
    """Earlier versions moved an existing `--out` aside (`.hf.old-PID`) before the new folder took
    its name: killed between the two, the folder was only that hidden copy. Import puts it back
    (as load_data does for data), and so does an export into that name, which then refuses it."""
    hf, run = tmp_path / "hf", tmp_path / "run"
    assert cli.main(["export", str(trained_run), "--out", str(hf)]) == 0
    hf.rename(tmp_path / f".hf.old-{dead_pid}")
    assert cli.main(["import", "hf", str(hf), "--out", str(run)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]
    hf.rename(tmp_path / f".hf.old-{dead_pid}")
    capsys.readouterr()
    assert cli.main(["export", str(trained_run), "--out", str(hf)]) == 2
    assert "hf already exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]
    assert (hf / "model.safetensors").is_file()


def test_an_export_into_a_link_to_an_empty_folder_fills_that_folder(trained_run, tmp_path):
    """`--out` a link to a folder on another disk: the link stays and the files go where it points."""
    disk = tmp_path / "big-disk" / "model"
    disk.mkdir(parents=True)
    (tmp_path / "hf").symlink_to(disk)
    assert cli.main(["export", str(trained_run), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf").is_symlink() and (disk / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big-disk", "hf"]
    assert sorted(p.name for p in disk.parent.iterdir()) == ["model"]


def test_an_exported_char_model_imported_back_refuses_characters_it_lacks(tmp_path, capsys):
    """A char run on lowercase text, exported and imported back: its tokenizer (BPE, no unknown
    token) dropped the 'H' of 'Hello' without a word, where the char model refuses it; the import
    suggested that very `--prompt 'Hello'`, and generate continued 'ello'."""
    (tmp_path / "quiet.txt").write_text("the cat sat on the mat and then it slept all day.\n" * 400)
    data, hf, run = tmp_path / "data", tmp_path / "hf", tmp_path / "run"
    assert cli.main(["data", "prepare", "text", str(tmp_path / "quiet.txt"), "--out", str(data)]) == 0
    training = {"max_steps": 2, "warmup_steps": 0, "eval_every": 2, "save_every": 2, "sample_tokens": 0}
    train(micro_config(data, tmp_path / "lower", training_config=training), **QUIET)
    assert cli.main(["export", str(tmp_path / "lower"), "--out", str(hf)]) == 0
    capsys.readouterr()
    assert cli.main(["import", "hf", str(hf), "--out", str(run)]) == 0
    suggested = capsys.readouterr().out.split("try: ")[1].strip()
    assert suggested == f"trickster generate {run}"
    assert cli.main([*suggested.split()[1:], "--max-new-tokens", "4"]) == 0
    capsys.readouterr()
    assert cli.main(["generate", str(run), "--prompt", "Hello", "--max-new-tokens", "4"]) == 2
    assert "character 'H' at column 1 is not in this model's character vocabulary" in capsys.readouterr().err
    assert load_tokenizer(run / "tokenizer.json").encode("hello the mat") == load_tokenizer(
        data / "tokenizer.json"
    ).encode("hello the mat")


def test_an_import_killed_half_way_leaves_no_half_run_folder(trained_run, tmp_path):
    """A run folder that an import killed half-way wrote would block the next import ("already
    exists"): the import builds it aside, and the next one deletes what the killed one left."""
    hf, run = tmp_path / "hf", tmp_path / "run"
    assert cli.main(["export", str(trained_run), "--out", str(hf)]) == 0
    argv = ["import", "hf", str(hf), "--out", str(run)]
    killed = children.run("tests.crash_child", "during-write-of-manifest.json", "1", *argv)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not run.exists()
    assert cli.main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]
    assert run_checkpoints.is_complete(run / "checkpoints" / "final")


# --------------------------------------------------------------------------- import


def tiny_llama(tmp_path, tie=False):
    """A random TinyLlama-shaped (GQA, untied head) LlamaForCausalLM and a SentencePiece-style BPE
    tokenizer trained on the excerpt with Llama's special tokens and <s>-prepending template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = EXCERPT.read_text()
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    backend.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], initial_alphabet=sorted(set(text + "\t"))
    )
    backend.train_from_iterator(text.splitlines(keepends=True), trainer)
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    tok.chat_template = "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        rms_norm_eps=1e-5,
        rope_theta=2000.0,
        tie_word_embeddings=tie,
        bos_token_id=1,
        eos_token_id=2,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    src = tmp_path / "tiny-llama"
    model.save_pretrained(src, max_shard_size="100KB" if tie else "1GB")  # the tied one in shards
    tok.save_pretrained(src)
    return src, model, tok


@pytest.mark.parametrize("tie", [False, True], ids=["untied", "tied"])
def test_import_of_a_hugging_face_llama_gives_the_same_logits(tmp_path, capsys, tie):
    src, theirs, hf_tok = tiny_llama(tmp_path, tie)
    run = tmp_path / "run"
    assert (src / "model.safetensors.index.json").is_file() == tie
    assert cli.main(["import", "hf", str(src), "--out", str(run)]) == 0
    loaded = checkpoint_load.load_checkpoint(run)
    assert loaded.cfg.model.num_kv_heads == 2 and loaded.cfg.model.tie_embeddings == tie
    assert loaded.cfg.model.rope_theta == 2000.0

    tokenizer = load_tokenizer(run / "tokenizer.json")
    assert tokenizer.bos_id == 1 and tokenizer.eot_id == 2
    assert tokenizer.start_ids() + tokenizer.encode(TEXT) == hf_tok(TEXT)["input_ids"]
    assert tokenizer.decode(hf_tok(TEXT)["input_ids"]) == TEXT
    idx = torch.tensor([hf_tok(TEXT)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx)[0], theirs(idx).logits)

    # info names the folder it came from; it printed 'data sha256 None (None)' and not the source
    capsys.readouterr()
    assert cli.main(["info", "--checkpoint", str(run)]) == 0
    shown = capsys.readouterr().out
    assert f"imported from {src.resolve()}" in shown and "None" not in shown, shown

    # generate accepts the run (the prompt starts with <s>, as transformers does)
    argv = ["generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "8", "--temperature", "0"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    ids = hf_tok("ROMEO:")["input_ids"]
    # the model has 320 rows, the tokenizer 300 ids: ours never samples the unused rows
    expected = hf_greedy(theirs, ids, 8, suppress_tokens=list(range(tokenizer.vocab_size, 320)))
    assert printed == hf_tok.decode(ids + expected, skip_special_tokens=True) + "\n"

    # streamed text continues the prompt: SentencePiece drops the space of a sequence's first piece
    whole = hf_tok("ROMEO: Is it so?")["input_ids"]
    assert whole[: len(ids)] == ids
    decode_next = tokenizer.stream_decoder(context=ids)
    assert "".join(decode_next(i) for i in whole[len(ids) :]) + decode_next(None) == " Is it so?"
    assert tokenizer.decode(whole[len(ids) :]) == "Is it so?"  # what decoding it alone gives

    # and export takes it back to Hugging Face unchanged
    if not tie:
        back, back_tok = assert_export_matches(run, tmp_path / "back", TEXT)
        assert back_tok(TEXT)["input_ids"] == hf_tok(TEXT)["input_ids"]
        assert back.config.bos_token_id == back.generation_config.bos_token_id == 1  # <s>
        assert back_tok.bos_token == "<s>" and back_tok.eos_token == "</s>"
        assert back_tok.chat_template == hf_tok.chat_template


def test_without_an_eos_token_in_tokenizer_config_the_first_of_config_jsons_eos_ids_ends_text(tmp_path):
    """config.json may list several end ids (Llama 3.1 does); the first is the end of text."""
    src, _, _ = tiny_llama(tmp_path)
    tokenizer_config = json.loads((src / "tokenizer_config.json").read_text())
    tokenizer_config.pop("eos_token", None)
    (src / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "eos_token_id": [2, 0]}))
    run = tmp_path / "run"
    assert cli.main(["import", "hf", str(src), "--out", str(run)]) == 0
    tokenizer = load_tokenizer(run / "tokenizer.json")
    assert tokenizer.eot_id == 2 and tokenizer.decode([tokenizer.eot_id]) == ""  # </s>, a special token


def test_generation_stops_on_any_of_the_eos_ids_the_model_lists(tmp_path, capsys):
    """Llama 3.1's generation_config.json lists three end ids (<|end_of_text|>, <|eom_id|>,
    <|eot_id|>), and transformers stops on any; `trickster generate` and serve stopped on the first
    alone, writing on past the others. Here the second listed id is a token greedy decoding reaches:
    generate, serve and the exported model (in transformers) all end the text before it."""
    from transformers import AutoModelForCausalLM

    httpx = pytest.importorskip("httpx")
    from .live_server import live_server

    src, theirs, hf_tok = tiny_llama(tmp_path)
    ids, unused = hf_tok("ROMEO:")["input_ids"], list(range(300, 320))  # 320 rows, 300 ids
    free = hf_greedy(theirs, ids, 16, suppress_tokens=unused)  # ended by </s> (2) alone
    cut = next(k for k in range(2, len(free)) if free[k] not in free[:k])
    end = free[cut]
    assert len(free) == 16 and end != 2 and 2 not in free
    for name in ("config.json", "generation_config.json"):
        written = json.loads((src / name).read_text())
        (src / name).write_text(json.dumps({**written, "eos_token_id": [2, end]}))
    run = tmp_path / "run"
    assert cli.main(["import", "hf", str(src), "--out", str(run)]) == 0
    assert load_tokenizer(run / "tokenizer.json").stop_ids == {2, end}
    expected = hf_tok.decode(ids + free[:cut], skip_special_tokens=True)
    assert expected != hf_tok.decode(ids + free, skip_special_tokens=True)

    capsys.readouterr()
    argv = ["generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "16", "--temperature", "0"]
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == expected + "\n"

    with live_server(run, checkpoints=["final"]) as live:
        body = {"model": "final", "prompt": "ROMEO:", "max_tokens": 16, "temperature": 0}
        choice = httpx.post(live.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]
    assert "ROMEO:" + choice["text"] == expected and choice["finish_reason"] == "stop"

    assert cli.main(["export", str(run), "--format", "hf", "--out", str(tmp_path / "back")]) == 0
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "back", dtype=torch.float32).eval()
    assert back.config.eos_token_id == back.generation_config.eos_token_id == [2, end]
    out = back.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False, suppress_tokens=unused)
    assert out[0, len(ids) :].tolist() == [*free[:cut], end]


def test_an_imported_model_fine_tunes_with_lora_and_exports(tmp_path, capsys):
    """The tutorial's path at toy scale: import a Llama, prepare prompt/response records with its
    tokenizer (each record starts with <s>), train LoRA adapters from it, export the result."""
    from transformers import AutoModelForCausalLM

    src, _, hf_tok = tiny_llama(tmp_path)
    run = tmp_path / "run"
    assert cli.main(["import", "hf", str(src), "--out", str(run)]) == 0
    lines = [line for line in EXCERPT.read_text().splitlines() if line.strip()][:41]
    records = [{"prompt": a + "\n", "response": b + "\n"} for a, b in zip(lines, lines[1:], strict=False)]
    (tmp_path / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    data = tmp_path / "chat"
    argv = ["data", "prepare", "jsonl", str(tmp_path / "chat.jsonl"), "--tokenizer-from", str(run)]
    assert cli.main([*argv, "--out", str(data)]) == 0
    tokens = (data / "train" / "000000.bin").read_bytes()  # the first shard: the first records
    first = records[0]
    assert json.loads((data / "meta.json").read_text())["tokenizer"] == "hf"
    expected = (
        hf_tok(first["prompt"])["input_ids"]
        + hf_tok(first["response"], add_special_tokens=False)["input_ids"]
    )
    assert list(memoryview(tokens).cast("H")[: len(expected) + 1]) == [*expected, hf_tok.eos_token_id]

    out = tmp_path / "tuned"
    overrides = [
        f"training_config.init_from={run}",
        "training_config.lora={rank: 2, alpha: 4, targets: [q_proj, v_proj]}",
        "training_config.max_steps=3",
        "training_config.warmup_steps=1",
        "training_config.eval_every=3",
        "training_config.eval_batches=1",
        "training_config.batch_size=4",
        "training_config.seq_len=32",
        "training_config.learning_rate=0.01",
        "training_config.sample_tokens=4",
    ]
    argv = [
        "train",
        "--config",
        str(run / "config.yaml"),
        "--data",
        str(data),
        "--out",
        str(out),
        "--no-progress",
    ]
    assert cli.main([*argv, *overrides]) == 0
    assert "with LoRA rank 2 on wq, wv" in capsys.readouterr().out
    assert cli.main(["export", str(out), "--out", str(tmp_path / "hf")]) == 0
    tuned = checkpoint_load.load_checkpoint(out).model
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    idx = torch.tensor([hf_tok(TEXT)["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(theirs(idx).logits, tuned(idx)[0])
        assert not torch.allclose(
            checkpoint_load.load_checkpoint(run).model(idx)[0], tuned(idx)[0], atol=1e-4
        )


@pytest.mark.skipif(not hasattr(os, "umask") or os.name == "nt", reason="POSIX file modes")
def test_an_export_and_its_checkpoint_are_readable_as_the_umask_allows(trained_run, tmp_path):
    """Every file of an export, model.safetensors too, has the mode the umask gives a new file:
    safetensors 0.8 writes 0o600 (safetensors#782), which a vLLM container running as another user
    could not read; the checkpoint it came from likewise."""
    old = os.umask(0o022)
    try:
        assert cli.main(["export", str(trained_run), "--out", str(tmp_path / "hf")]) == 0
        source = ckpt.save_checkpoint(tmp_path / "ck", *_plain_model_and_tokenizer(trained_run), {"step": 0})
    finally:
        os.umask(old)
    for folder in (tmp_path / "hf", source):
        modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in folder.iterdir() if path.is_file()}
        assert "model.safetensors" in modes and set(modes.values()) == {0o644}, modes


def _plain_model_and_tokenizer(run):
    loaded = checkpoint_load.load_checkpoint(run)
    return loaded.model, loaded.cfg, loaded.tokenizer
