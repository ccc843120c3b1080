"""`data prepare jsonl --format alpaca | messages`: instruction records and chat conversations laid
out as documented (docs/finetune-export.md), the loss mask over exactly the outputs and assistant
turns, and the chat template a run fine-tuned on them is asked through (chat, serve, export)
rendering a conversation to the ids the records were prepared into."""

from __future__ import annotations

import io
import json
import shlex
import sys
import urllib.request

import numpy as np
import pytest

from trickster import cli
from trickster.data.loader import load_data
from trickster.serve.chat import Template

from .conftest import EXCERPT, QUIET, finetune_config
from .test_gguf import read_gguf

# each line once: records made of them are no copies of each other (data prepare keeps one of each)
LINES = list(dict.fromkeys(line.strip() for line in EXCERPT.read_text().splitlines() if line.strip()))
ROLES = ("user", "assistant", "user", "assistant")


def alpaca_records(count: int = 20) -> list[dict]:
    """Every third record without an input ("" or left out), as Alpaca's own set has them."""
    records = []
    for i in range(count):
        record = {"instruction": LINES[i], "input": LINES[i + 1], "output": LINES[i + 2]}
        if i % 3 == 1:
            record["input"] = ""
        elif i % 3 == 2:
            del record["input"]
        records.append(record)
    return records


def conversations(count: int = 20) -> list[dict]:
    """Two exchanges each, with a system message first in every other one (the even ones) and a user
    message after the last reply (which teaches nothing: left out)."""
    result = []
    for i in range(count):
        user, reply, again, last = LINES[i : i + 4]
        messages = [] if i % 2 else [{"role": "system", "content": "Speak as a king."}]
        messages += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": f"  {reply} "},  # trimmed, as the template trims it
            {"role": "user", "content": again},
            {"role": "assistant", "content": last},
            {"role": "user", "content": "And then?"},
        ]
        result.append({"messages": messages})
    return result


def laid_out(layout: str, record: dict) -> list[tuple[str, int]]:
    """The record's text in the documented layout, written here by hand: (text, 1 where the loss
    covers it)."""
    if layout == "alpaca":
        prompt = f"### Instruction:\n{record['instruction']}\n\n"
        if record.get("input"):
            prompt += f"### Input:\n{record['input']}\n\n"
        return [(prompt + "### Response:\n", 0), (record["output"], 1)]
    parts, context = [], ""
    for message in record["messages"]:
        if message["role"] == "assistant":
            parts += [(context + "assistant:", 0), (" " + message["content"].strip() + "\n", 1)]
            context = ""
        else:
            context += f"{message['role']}: {message['content']}\n"
    return parts


def prepare(tmp_path, layout: str, records: list[dict], *flags: str):
    path = tmp_path / f"{layout}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = tmp_path / f"data-{layout}"
    argv = ["data", "prepare", "jsonl", str(path), "--format", layout, "--out", str(out), "--workers", "1"]
    # near-copies (records sharing a line) stay where they are: the last records validate
    assert cli.main([*argv, "--dedup", "exact", "--no-progress", *flags]) == 0
    return load_data(out)


@pytest.mark.parametrize("layout", ["alpaca", "messages"])
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_the_loss_covers_exactly_the_outputs_and_every_assistant_turn(tmp_path, capsys, layout, kind):
    records = alpaca_records() if layout == "alpaca" else conversations()
    flags = ["--tokenizer", kind] + (["--vocab-size", "300"] if kind == "bpe" else [])
    data = prepare(tmp_path, layout, records, *flags)
    tokenizer, n_val = data.tokenizer, 2  # the last 10% of 20 records
    assert tokenizer.eot_id is not None  # built from several records: they are told apart
    for split, kept in ((data.train, records[:-n_val]), (data.val, records[-n_val:])):
        tokens, mask = np.asarray(split), np.asarray(split.loss_mask)
        expected_tokens, expected_mask = [], []
        for record in kept:
            parts = laid_out(layout, record)
            for n, (text, covered) in enumerate(parts):
                ids = tokenizer.encode(text) + ([tokenizer.eot_id] if n == len(parts) - 1 else [])
                expected_tokens += ids
                expected_mask += [covered] * len(ids)
        assert tokens.tolist() == expected_tokens
        assert mask.tolist() == expected_mask
    replies = [text for r in records[:-n_val] for text, covered in laid_out(layout, r) if covered]
    if layout == "messages":
        assert len(replies) == 2 * len(records[:-n_val])  # both turns of each, not only the last
    if kind == "char":  # one token a character, and the end-of-text after each record's last reply
        covered = sum(len(text) for text in replies) + len(records[:-n_val])
        assert data.meta["train_loss_tokens"] == covered
    out = capsys.readouterr().out
    assert f"{len(records)} {'conversations' if layout == 'messages' else 'instruction records'} read" in out
    assert f"chat template: the {layout} layout, in tokenizer.json" in out


@pytest.mark.parametrize("layout", ["alpaca", "messages"])
@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_the_data_s_chat_template_renders_a_conversation_as_its_records_were_prepared(tmp_path, layout, kind):
    """The ids chat and serve would send (the data folder's tokenizer.json template, rendered as
    they render it) are those the model was trained on: for bpe too, whose words start with their
    space, so the space after "assistant:" must go with the reply."""
    records = alpaca_records() if layout == "alpaca" else conversations()
    records[-2].pop("input", None)  # the first validation record; a chat asks without an input
    flags = ["--tokenizer", kind] + (["--vocab-size", "300"] if kind == "bpe" else [])
    data = prepare(tmp_path, layout, records, *flags)
    template = Template(
        json.loads((data.path / "tokenizer.json").read_text())["chat_template"], data.tokenizer
    )
    val, mask = np.asarray(data.val).tolist(), np.asarray(data.val.loss_mask).tolist()
    if layout == "alpaca":
        asked = [[{"role": "user", "content": records[-2]["instruction"]}]]
    else:  # before the first reply (after a system message), and before the second
        messages = records[-2]["messages"]
        assert messages[0]["role"] == "system"
        asked = [messages[:-4], messages[:-2]]
    for conversation in asked:
        ids = template.prompt_ids(conversation)
        assert val[: len(ids)] == ids
        assert mask[len(ids) - 1] == 0 and mask[len(ids)] == 1  # the reply starts right after


SHORT = sorted({line for line in LINES if len(line) <= 7})  # conversations that fit a 64-token context


def occurs(ids: list[int], tokens: list[int]) -> bool:
    return any(tokens[i : i + len(ids)] == ids for i in range(len(tokens) - len(ids) + 1))


@pytest.mark.slow
def test_a_run_fine_tuned_on_conversations_is_asked_by_chat_serve_and_export_as_it_learned(
    trained_run, tmp_path, capsys, monkeypatch
):
    from transformers import AutoTokenizer

    from trickster import commands_chat
    from trickster.train.loop import train

    from .live_server import live_server

    turns = [[SHORT[(i + k) % len(SHORT)] for k in range(4)] for i in range(len(SHORT))]
    records = [
        {"messages": [{"role": r, "content": c} for r, c in zip(ROLES, t, strict=True)]} for t in turns
    ]
    records[-2]["messages"].insert(0, {"role": "system", "content": "Be brief."})
    path, data_dir, run = tmp_path / "talk.jsonl", tmp_path / "talk", tmp_path / "ft"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    argv = [
        "data",
        "prepare",
        "jsonl",
        str(path),
        "--format",
        "messages",
        "--tokenizer-from",
        str(trained_run),
    ]
    assert cli.main([*argv, "--out", str(data_dir), "--dedup", "exact", "--no-progress"]) == 0
    train(finetune_config(trained_run, data_dir, run), **QUIET)
    data = load_data(data_dir)
    val, tokenizer = np.asarray(data.val).tolist(), data.tokenizer  # the last 3 conversations
    user, reply, again, _ = turns[-3]
    second = tokenizer.encode(f"user: {user}\nassistant: {reply}\nuser: {again}\nassistant:")
    first = tokenizer.encode(f"system: Be brief.\nuser: {turns[-2][0]}\nassistant:")
    assert val[: len(second)] == second and occurs(first, val)

    # trickster chat: the run's own template, without --chat-template
    asked, stream = [], commands_chat.stream
    monkeypatch.setattr(
        commands_chat, "stream", lambda m, t, ids, *a, **k: asked.append(ids) or stream(m, t, ids, *a, **k)
    )
    monkeypatch.setattr(sys, "stdin", io.StringIO(turns[-2][0] + "\n"))
    capsys.readouterr()
    assert cli.main(["chat", str(run), "--system", "Be brief.", "--max-new-tokens", "2"]) == 0
    assert "chatting with" in capsys.readouterr().out
    assert asked == [first]
    mine = tmp_path / "mine.jinja"  # an explicit --chat-template still wins
    mine.write_text("{% for m in messages %}{{ m.content }}\n{% endfor %}", encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", io.StringIO(user + "\n"))
    assert cli.main(["chat", str(run), "--chat-template", str(mine), "--max-new-tokens", "2"]) == 0
    assert asked[-1] == tokenizer.encode(user + "\n")

    # trickster serve: /v1/chat/completions, the conversation up to the second reply
    conversation = [{"role": r, "content": c} for r, c in zip(ROLES, (user, reply, again), strict=False)]
    with live_server(run) as live:
        sent, submit = [], live.engine.submit
        monkeypatch.setattr(live.engine, "submit", lambda *a: sent.append(a[2].prompt_ids) or submit(*a))
        body = json.dumps({"model": "best", "messages": conversation, "max_tokens": 1}).encode()
        request = urllib.request.Request(
            live.url + "/v1/chat/completions", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert json.load(answer)["usage"]["prompt_tokens"] == len(second)
    assert sent == [second]

    # export: transformers' apply_chat_template, and the GGUF file for llama.cpp
    capsys.readouterr()
    assert cli.main(["export", str(run), "--out", str(tmp_path / "hf")]) == 0
    assert "chat template: the layout of the records it was fine-tuned on" in capsys.readouterr().out
    theirs = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert (
        list(theirs.apply_chat_template(conversation, add_generation_prompt=True, return_dict=False))
        == second
    )
    assert cli.main(["export", str(run), "--out", str(tmp_path / "ft.gguf")]) == 0
    template = json.loads((run / "tokenizer.json").read_text())["chat_template"]
    assert read_gguf(tmp_path / "ft.gguf")[0]["tokenizer.chat_template"] == template


def test_a_char_vocabulary_of_conversations_without_a_system_message_writes_their_layout(tmp_path):
    """--tokenizer char (the default) learns its characters from the records: with no system
    message and no 'y' among them it had none for "system:", and data prepare refused the layout as
    one 'this tokenizer cannot encode', telling the user to fine-tune another model. Now the
    layout's own text is in the vocabulary, and the template asks with a system message too."""
    records = [
        {
            "messages": [
                {**m, "content": m["content"].replace("y", "i")}
                for m in c["messages"]
                if m["role"] != "system"
            ]
        }
        for c in conversations()
    ]
    data = prepare(tmp_path, "messages", records)
    template = Template(data.tokenizer.chat_template, data.tokenizer)
    user = records[0]["messages"][0]["content"]
    ids = template.prompt_ids([{"role": "system", "content": "Be brief."}, {"role": "user", "content": user}])
    assert data.tokenizer.decode(ids) == f"system: Be brief.\nuser: {user}\nassistant:"


@pytest.mark.parametrize("layout", ["alpaca", "messages"])
def test_the_line_after_training_on_records_with_a_chat_template_suggests_chat(tmp_path, capsys, layout):
    """It suggested `trickster generate RUN --prompt` with a record's context, which for a
    conversation may be a later turn without the ones before it; `trickster chat RUN` asks the run
    through its chat template, as it learned."""
    from trickster.cli_parser import build_parser

    from .test_fitted import SHORT

    records = alpaca_records() if layout == "alpaca" else conversations()
    data, run = prepare(tmp_path, layout, records), tmp_path / "my run"
    capsys.readouterr()
    argv = ["train", "--preset", "tiny", "--data", str(data.path), "--out", str(run), "--no-progress", *SHORT]
    assert cli.main([*argv, "training_config.max_steps=2"]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"next: trickster chat '{run}'"
    args = build_parser().parse_args(shlex.split(last.removeprefix("next: trickster ")))
    assert (args.command, args.target) == ("chat", str(run))


def test_an_input_of_spaces_is_no_input():
    """Written as '### Input:\n  \n\n', which the chat template, asking without an input, never
    writes; an instruction of spaces is refused as empty, an input of them is none."""
    from trickster.data.record_layouts import segments

    record = {"instruction": "Who is there?", "input": "  \n", "output": "Nay, answer me."}
    assert segments(record, "x", "alpaca") == (
        "### Instruction:\nWho is there?\n\n### Response:\n",
        "Nay, answer me.",
    )


@pytest.mark.slow
def test_an_imported_llama_s_conversations_are_prepared_as_its_chat_template_asks(
    tmp_path,
):
    """SentencePiece starts each text it encodes with '▁': conversations encoded segment by segment
    read '▁system' after <s> and '▁user' after a reply, where the conversation the template
    renders, which chat, serve and transformers encode whole, reads 'system' and 'user'."""
    pytest.importorskip("transformers")
    from .test_hf import tiny_llama

    src, _, hf_tok = tiny_llama(tmp_path)
    assert cli.main(["import", "hf", str(src), "--out", str(tmp_path / "llama")]) == 0
    records = conversations()
    data = prepare(tmp_path, "messages", records, "--tokenizer-from", str(tmp_path / "llama"))
    val, mask = np.asarray(data.val).tolist(), np.asarray(data.val.loss_mask).tolist()
    system, user, reply, again, last, _ = (m["content"].strip() for m in records[-2]["messages"])
    first = f"<s>system: {system}\nuser: {user}\nassistant:"
    second = f"{first} {reply}\nuser: {again}\nassistant:"
    template = Template(data.tokenizer.chat_template, data.tokenizer)
    for text, asked in (
        (first, records[-2]["messages"][:2]),
        (second, records[-2]["messages"][:4]),
    ):
        ids = hf_tok.encode(text, add_special_tokens=False)
        assert template.prompt_ids(asked) == ids == val[: len(ids)]
        assert mask[len(ids) - 1] == 0 and mask[len(ids)] == 1
    # the loss covers the replies (with their line breaks) and the end-of-text, counted on the whole text
    ends = [first, f"{first} {reply}\n", second, f"{second} {last}\n"]
    lengths = [len(hf_tok.encode(text, add_special_tokens=False)) for text in ends]
    record = val.index(data.tokenizer.eot_id) + 1
    covered = [i for i in range(record) if mask[i]]
    assert covered == [
        *range(lengths[0], lengths[1]),
        *range(lengths[2], lengths[3]),
        lengths[3],
    ]


def test_a_run_on_conversations_samples_their_first_turn(tmp_path):
    """The sample prompt a fine-tune takes from its validation records (record_prompt) is a
    conversation's first turn, up to and including its first "assistant:": it was the shortest
    context of any turn, a later one ("user: Go on.\nassistant:") without the turns it follows."""
    records = conversations()
    for record in records:
        record["messages"][-3]["content"] = "Go on."  # each conversation's second user message
    data = prepare(tmp_path, "messages", records)
    firsts = []
    for record in records[-2:]:  # the validation conversations, one with a system message
        before = record["messages"][
            : next(i for i, m in enumerate(record["messages"]) if m["role"] == "assistant")
        ]
        firsts.append("".join(f"{m['role']}: {m['content']}\n" for m in before) + "assistant:")
    assert data.record_prompt in firsts
    assert data.record_prompt == min(firsts, key=len)


def llama_style_bpe(texts: list[str]):
    """A throwaway SentencePiece-like BPE, as Llama 2's tokenizer.json: spaces read as '▁', one put
    before the text, no pre-tokenizer (merges cross spaces and line breaks), byte fallback, <s> first."""
    hf = pytest.importorskip("tokenizers")
    from trickster.data.tokenizers import HFTokenizer

    backend = hf.Tokenizer(hf.models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = hf.normalizers.Sequence(
        [hf.normalizers.Prepend("▁"), hf.normalizers.Replace(" ", "▁")]
    )
    backend.decoder = hf.decoders.Sequence(
        [
            hf.decoders.Replace("▁", " "),
            hf.decoders.ByteFallback(),
            hf.decoders.Fuse(),
            hf.decoders.Strip(" ", 1, 0),
        ]
    )
    trainer = hf.trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False
    )
    backend.train_from_iterator(texts, trainer)
    backend.post_processor = hf.processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return HFTokenizer(json.loads(backend.to_str()), {"bos_token": "<s>", "eos_token": "</s>"}), backend


def test_a_token_spanning_the_alpaca_cue_and_the_output_is_the_output_s(tmp_path):
    """An imported Llama-style tokenizer encodes a record whole, as its chat template renders it, and
    merges across "### Response:\\n" into the output ('.\\n\\n###▁Response:\\nYes,▁'). That token went
    to the context, where its first character is: the loss never covered "Yes, ". As transformers'
    assistant mask (TRL's assistant-only loss) counts it, it is the output's: every output character
    is in a token the loss covers, and every token of the context alone is not."""
    records = alpaca_records()
    for record in records:
        record["output"] = "Yes, " + record["output"]
    texts = ["".join(text for text, _ in laid_out("alpaca", r)) for r in records]
    tokenizer, backend = llama_style_bpe(texts)
    tokenizer.save(tmp_path / "tokenizer.json")
    data = prepare(tmp_path, "alpaca", records, "--tokenizer-from", str(tmp_path / "tokenizer.json"))
    eot, spans = data.tokenizer.eot_id, 0
    ids = np.asarray(data.train).tolist() + np.asarray(data.val).tolist()
    mask = np.asarray(data.train.loss_mask).tolist() + np.asarray(data.val.loss_mask).tolist()
    ends = [i + 1 for i, token in enumerate(ids) if token == eot]
    for record, start, end in zip(records, [0, *ends[:-1]], ends, strict=True):
        (prompt, _), (output, _) = laid_out("alpaca", record)
        encoding = backend.encode(prompt + output)  # with <s>, offsets into the text
        assert ids[start : end - 1] == encoding.ids and mask[end - 1] == 1
        for (first, after), covered, special in zip(
            encoding.offsets, mask[start : end - 1], encoding.special_tokens_mask, strict=True
        ):
            spans += first < len(prompt) < after
            assert covered == (not special and after > len(prompt)), (first, after, len(prompt))
    assert spans >= len(records) // 2  # the case at hand: most records merge across the cue
