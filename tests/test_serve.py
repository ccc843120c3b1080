"""`trickster serve` through the official `openai` client against a live server on 127.0.0.1:
completions and chat, streamed and not, n, stop, logprobs, seeds that reproduce `trickster generate`,
every error case with its status (and the server still serving after it), and concurrent clients
getting what they get alone."""

from __future__ import annotations

import concurrent.futures
import contextlib
import functools
import gzip
import http.client
import json
import logging
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from trickster import cli
from trickster.config import ModelConfig
from trickster.model.generate import generate
from trickster.model.transformer import Transformer
from trickster.serve.engine import Engine, Finished, Sampling, Sequence, Token
from trickster.train.loop import train

from .live_server import live_server

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@pytest.fixture(scope="module")
def server(trained_run):
    with live_server(trained_run) as live:
        yield live


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def generated(argv: list[str], capsys) -> str:
    """What `trickster generate` prints after the prompt (it ends with a newline of its own)."""
    capsys.readouterr()
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def completion(client, **fields) -> str:
    return client.completions.create(**fields).choices[0].text


# ----------------------------------------------------------------------------- answers


def test_models_lists_every_checkpoint_and_untrained(client):
    cards = {m.id: m for m in client.models.list().data}
    assert set(cards) == {"best", "final", "step_000006", "untrained"}
    assert cards["step_000006"].model_extra["step"] == 6 and cards["final"].model_extra["step"] == 12
    assert cards["best"].model_extra["context_length"] == 64 and not cards["best"].model_extra["chat"]


@pytest.mark.parametrize("model", ["best", "step_000006", "untrained"])
def test_seed_gives_the_text_of_trickster_generate(client, trained_run, model, capsys):
    target = trained_run / "checkpoints" / model if model != "untrained" else trained_run
    flags = ["--untrained"] if model == "untrained" else []
    argv = ["generate", str(target), "--prompt", "ROMEO:", "--max-new-tokens", "30", "--seed", "11", *flags]
    expected = generated([*argv, "--temperature", "0.9", "--top-k", "20"], capsys)
    answer = client.completions.create(
        model=model, prompt="ROMEO:", max_tokens=30, seed=11, temperature=0.9, extra_body={"top_k": 20}
    )
    assert "ROMEO:" + answer.choices[0].text + "\n" == expected
    assert answer.usage.prompt_tokens == 6 and answer.usage.completion_tokens == len(answer.choices[0].text)
    assert answer.usage.total_tokens == 6 + answer.usage.completion_tokens


def test_a_negative_seed_gives_the_text_of_trickster_generate(client, server, trained_run, capsys):
    """`generate --seed` takes what training_config.seed and torch.manual_seed take, -2**63 up, as
    OpenAI's API types `seed`; the server refused a request with any negative seed. Past either
    end it is a 400 naming the field, as the command line's one line names --seed."""
    for seed in (-1, -(2**63)):
        argv = ["generate", str(trained_run), "--prompt", "ROMEO:", "--max-new-tokens", "20"]
        text = completion(client, model="best", prompt="ROMEO:", max_tokens=20, seed=seed, temperature=0.8)
        assert "ROMEO:" + text + "\n" == generated([*argv, "--seed", str(seed)], capsys)
    for seed, bound in ((-(2**63) - 1, "greater than or equal to -9223372036854775808"), (2**63, "less")):
        answer = httpx.post(server.url + "/v1/completions", json={**GOOD, "seed": seed}, timeout=30)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "seed"
        assert f"seed: Input should be {bound}" in answer.json()["error"]["message"]


def test_streaming_gives_the_same_text_and_usage_on_the_last_chunk(client, server):
    fields = dict(model="best", prompt="JULIET:", max_tokens=25, seed=3, temperature=1.0)
    whole = client.completions.create(**fields)
    chunks = list(client.completions.create(**fields, stream=True))
    # one chunk per token (a character each), not one at the end; the last says why it ended
    assert [len(c.choices[0].text) for c in chunks] == [1] * 25 + [0]
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert [c.usage is not None for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 25
    assert chunks[-1].choices[0].finish_reason == "length"
    # the raw stream: server-sent events ending with [DONE]; include_usage adds a chunk of its own
    raw = httpx.post(
        server.url + "/v1/completions",
        json={**fields, "stream": True, "stream_options": {"include_usage": True}},
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = [line for line in raw.text.split("\n\n") if line]
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 25


def test_a_stream_sends_each_token_as_soon_as_it_is_decoded(client, server, monkeypatch):
    """Decoding steps wait on a gate: the first token (from the prompt's forward pass) must reach
    the client while the gate is still shut. A stream buffered to its end would send it only after
    the gate opens (by itself after 10 s), and then all at once."""
    from trickster.serve.engine import Batch

    gate, decode = threading.Event(), Batch._decode

    def gated(self):
        gate.wait(10)
        gate.set()  # waited once: the rest go on
        decode(self)

    monkeypatch.setattr(Batch, "_decode", gated)
    fields = {"model": "best", "prompt": "JULIET:", "max_tokens": 5, "seed": 3, "stream": True}
    try:
        with httpx.stream("POST", server.url + "/v1/completions", json=fields, timeout=60) as response:
            events = (line for line in response.iter_lines() if line)
            first = json.loads(next(events).removeprefix("data: "))
            shut = not gate.is_set()
            gate.set()
            rest = list(events)
    finally:
        gate.set()
    assert shut, "the first chunk came only once decoding could go on"
    assert len(first["choices"][0]["text"]) == 1 and rest[-1] == "data: [DONE]"
    texts = [json.loads(e.removeprefix("data: "))["choices"][0]["text"] for e in rest[:-1]]
    assert [first["choices"][0]["text"], *texts] == list(
        completion(client, **{**fields, "stream": False})
    ) + [""]


def test_every_chunk_of_a_stream_says_when_the_completion_was_created(client, monkeypatch):
    """OpenAI: "Each chunk has the same timestamp." Each took the clock as it was sent, so a stream
    that ran over a second's turn (here a decoding step of 1.1 s) told two times."""
    from trickster.serve.engine import Batch

    decode, slowed = Batch._decode, []

    def slow_once(self):
        if not slowed:
            time.sleep(1.1)
            slowed.append(True)
        decode(self)

    monkeypatch.setattr(Batch, "_decode", slow_once)
    chunks = list(
        client.completions.create(model="best", prompt="JULIET:", max_tokens=4, seed=3, stream=True)
    )
    assert slowed and len(chunks) == 5 and len({c.created for c in chunks}) == 1


def test_n_choices_take_consecutive_seeds(client):
    fields = dict(model="best", prompt="KING:", max_tokens=12, temperature=1.0)
    many = client.completions.create(**fields, n=3, seed=40)
    alone = [completion(client, **fields, seed=40 + i) for i in range(3)]
    assert [c.text for c in sorted(many.choices, key=lambda c: c.index)] == alone
    assert len(set(alone)) > 1
    assert many.usage.prompt_tokens == len("KING:") and many.usage.completion_tokens == 36
    streamed = list(client.completions.create(**fields, n=3, seed=40, stream=True))
    texts = ["".join(c.choices[0].text for c in streamed if c.choices[0].index == i) for i in range(3)]
    assert texts == alone


def test_stop_strings_cut_the_text(client):
    fields = dict(model="untrained", prompt="ROMEO:", max_tokens=40, seed=5, temperature=1.0)
    full = completion(client, **fields)
    stop = full[10:12]  # two characters from the middle: the text must end before their first place
    cut = client.completions.create(**fields, stop=[stop, "never seen"])
    assert cut.choices[0].text == full[: full.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = client.completions.create(**fields, stop=stop, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == full[: full.index(stop)]


def test_a_long_stop_string_does_not_hold_up_the_server(server, client):
    """The text held back in case it begins a stop string was found by copying every prefix of every
    stop string at each token, on the event loop: 600 KB of stop string took 24 s for 3 tokens here,
    and every other client (even GET /v1/models) waited that long."""
    fields = dict(model="best", prompt="ROMEO:", max_tokens=3, seed=0, stop="x" * 600_000)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        start = time.monotonic()
        long_stop = pool.submit(client.completions.create, **fields)
        time.sleep(0.3)
        assert httpx.get(server.url + "/v1/models", timeout=60).status_code == 200
        waited = time.monotonic() - start
        assert long_stop.result().choices[0].finish_reason == "length"
    assert waited < 3, f"GET /v1/models waited {waited:.1f} s behind a request with a long stop string"


def test_null_means_the_default_as_openai_documents_it(server, client):
    nulls = dict.fromkeys(["max_tokens", "temperature", "top_p", "top_k", "n", "stop", "seed", "stream"])
    answer = httpx.post(server.url + "/v1/completions", json={"model": "best", "prompt": "ROMEO:", **nulls})
    assert answer.status_code == 200, answer.text
    assert answer.json()["usage"]["completion_tokens"] == 16 and len(answer.json()["choices"]) == 1
    required = httpx.post(server.url + "/v1/completions", json={"model": None, "prompt": "ROMEO:"})
    assert required.status_code == 400 and required.json()["error"]["param"] == "model"


def test_logprobs_describe_each_token(client):
    """The 3 likeliest tokens at each step, and the chosen one always among them, as OpenAI's API
    ("always return the logprob of the sampled token, so there may be up to logprobs+1 elements")
    and vLLM list it: one sampled outside the 3 was missing from top_logprobs."""
    fields = dict(model="best", prompt="ROMEO:", max_tokens=30, seed=1, temperature=2.0, logprobs=3)
    choice = client.completions.create(**fields).choices[0]
    assert "".join(choice.logprobs.tokens) == choice.text
    assert len(choice.logprobs.token_logprobs) == 30 and all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    outside = 0
    for token, logprob, top in zip(
        choice.logprobs.tokens, choice.logprobs.token_logprobs, choice.logprobs.top_logprobs, strict=True
    ):
        assert top[token] == pytest.approx(logprob)
        likeliest = sorted(top.values(), reverse=True)[:3]
        assert len(top) == 3 or (len(top) == 4 and logprob <= min(likeliest))
        outside += len(top) == 4
    assert outside > 0  # temperature 2 picked tokens outside the likeliest 3: they are listed too
    assert choice.logprobs.text_offset == list(range(30))  # one character per token
    lone = client.completions.create(**{**fields, "logprobs": 0}).choices[0].logprobs
    assert lone.top_logprobs == [{t: lp} for t, lp in zip(lone.tokens, lone.token_logprobs, strict=True)]


def test_logprobs_beyond_a_small_vocabulary_list_the_tokens_there_are(tmp_path):
    """A 4-letter char model asked for the 5 most likely tokens gives its 4, all finite (the padding
    rows of the embedding came back as -Infinity: a 500, and a stream event that was not JSON)."""
    from .conftest import QUIET, micro_config

    (tmp_path / "dna.txt").write_text("ACGTTGCAAGCTTCGA" * 400)
    argv = ["data", "prepare", "text", str(tmp_path / "dna.txt"), "--tokenizer", "char"]
    assert cli.main([*argv, "--out", str(tmp_path / "data")]) == 0
    training = {"max_steps": 2, "warmup_steps": 1, "eval_every": 2, "save_every": 2, "sample_tokens": 0}
    train(micro_config(tmp_path / "data", tmp_path / "run", training_config=training), **QUIET)
    with live_server(tmp_path / "run", checkpoints=["final"]) as live:
        fields = {"model": "final", "prompt": "ACG", "max_tokens": 3, "logprobs": 5}
        answer = httpx.post(live.url + "/v1/completions", json=fields)
        assert answer.status_code == 200, answer.text
        tops = answer.json()["choices"][0]["logprobs"]["top_logprobs"]
        assert [sorted(top) for top in tops] == [list("ACGT")] * 3
        stream = httpx.post(live.url + "/v1/completions", json={**fields, "stream": True}).text
        for event in stream.split("\n\n")[:-2]:  # json.loads would take -Infinity: refuse it
            json.loads(event.removeprefix("data: "), parse_constant=pytest.fail)


def test_chat_renders_the_template_then_continues(trained_run, capsys, tmp_path):
    with live_server(trained_run, chat_template=CHAT_TEMPLATE) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who?"}]
        answer = client.chat.completions.create(model="best", messages=messages, max_tokens=20, seed=2)
        prompt = "system: Be brief.\nuser: Who?\nassistant:"
        same = completion(client, model="best", prompt=prompt, max_tokens=20, seed=2)
        assert answer.choices[0].message.content == same and answer.choices[0].message.role == "assistant"
        assert answer.usage.prompt_tokens == len(prompt)
        chunks = list(
            client.chat.completions.create(
                model="best", messages=messages, max_tokens=20, seed=2, stream=True
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == same
        assert chunks[-1].usage.completion_tokens == 20


def test_chat_context_errors_name_the_chat_fields(trained_run):
    with live_server(trained_run, chat_template=CHAT_TEMPLATE, checkpoints=["best"]) as live:
        url = live.url + "/v1/chat/completions"
        long = {"model": "best", "messages": [{"role": "user", "content": "a" * 70}]}
        short = {"model": "best", "messages": [{"role": "user", "content": "Who?"}]}
        cases = [
            (long, "messages", "messages: 87 tokens fill this model's context of 64"),
            ({**short, "max_completion_tokens": 100}, "max_completion_tokens", "ask for at most 43"),
            ({**short, "max_tokens": 100}, "max_tokens", "max_tokens: 100 new tokens"),
        ]
        for body, param, text in cases:
            answer = httpx.post(url, json=body)
            error = answer.json()["error"]
            assert answer.status_code == 400 and error["param"] == param
            assert error["message"].startswith(param) and text in error["message"]
        assert httpx.post(url, json={**short, "max_tokens": 2}).status_code == 200


def test_max_tokens_and_max_completion_tokens_that_differ_are_400_and_equal_ones_are_one_limit(trained_run):
    """Both given with different values: max_completion_tokens was used, max_tokens dropped unsaid."""
    with live_server(trained_run, chat_template=CHAT_TEMPLATE, checkpoints=["best"]) as live:
        url = live.url + "/v1/chat/completions"
        short = {"model": "best", "messages": [{"role": "user", "content": "Who?"}], "temperature": 0}
        for stream in (False, True):
            answer = httpx.post(
                url, json={**short, "max_tokens": 3, "max_completion_tokens": 5, "stream": stream}
            )
            error = answer.json()["error"]
            assert answer.status_code == 400 and error["param"] == "max_tokens"
            assert "max_tokens (3) and max_completion_tokens (5)" in error["message"]
            assert "send one of them (max_completion_tokens is the current name)" in error["message"]
        both = httpx.post(url, json={**short, "max_tokens": 3, "max_completion_tokens": 3})
        assert both.status_code == 200 and both.json()["usage"]["completion_tokens"] == 3
        one = httpx.post(url, json={**short, "max_tokens": None, "max_completion_tokens": 4})
        assert one.status_code == 200 and one.json()["usage"]["completion_tokens"] == 4


def test_a_chat_that_renders_to_nothing_is_400(trained_run):
    with live_server(trained_run, chat_template="{% for m in messages %}{{ m.content }}{% endfor %}") as live:
        url = live.url + "/v1/chat/completions"
        empty = httpx.post(url, json={"model": "best", "messages": [{"role": "user", "content": ""}]})
        assert empty.status_code == 400, empty.text
        assert empty.json()["error"]["param"] == "messages"
        assert "the chat template rendered these messages as no text" in empty.json()["error"]["message"]
        fields = {"model": "best", "messages": [{"role": "user", "content": "ROMEO:"}], "max_tokens": 2}
        assert httpx.post(url, json=fields).status_code == 200


def test_an_empty_chat_template_file_starts_the_server_as_before(trained_run, tmp_path, monkeypatch):
    """An empty --chat-template file leaves each model its own template (a run of ours has none):
    the start-time check of a given template met no template there and ended in AttributeError."""
    from trickster.serve import server

    class Binding(Exception):
        """serve got past its checks to opening its socket."""

    def bind(host: str, port: int):
        raise Binding

    monkeypatch.setattr(server, "bind", bind)
    empty = tmp_path / "empty.jinja"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(Binding):
        cli.main(["serve", str(trained_run), "--device", "cpu", "--chat-template", str(empty)])


def test_a_lone_surrogate_is_400_whatever_the_tokenizer(tmp_path):
    """JSON may escape half of a surrogate pair ("\\ud800"): no character. The byte tokenizer
    failed on it with a UnicodeEncodeError, a 500, in a prompt and in a chat message alike."""
    from trickster.config import config_from_dict
    from trickster.data.tokenizers import ByteTokenizer
    from trickster.train import checkpoint as ckpt

    shape = {"hidden_dim": 16, "num_layers": 1, "num_heads": 2, "mlp_dim": 32, "max_seq_len": 32}
    cfg = config_from_dict({"model_config": {**shape, "vocab_size": 256}})
    ckpt.save_checkpoint(tmp_path / "byte", Transformer(cfg.model), cfg, ByteTokenizer(), {"step": 0})
    with live_server(tmp_path / "byte", chat_template=CHAT_TEMPLATE) as live:
        half = "caf\ud800"  # json.dumps writes it as the escape \ud800
        chat = {"model": "byte", "messages": [{"role": "user", "content": half}], "max_tokens": 2}
        cases = [
            ("/v1/completions", {"model": "byte", "prompt": half, "max_tokens": 2}, "prompt"),
            ("/v1/chat/completions", chat, "messages"),
        ]
        for path, body, param in cases:
            answer = httpx.post(live.url + path, content=json.dumps(body).encode())
            assert answer.status_code == 400, answer.text
            error = answer.json()["error"]
            assert error["param"] == param and "lone surrogate (\\ud800 at character" in error["message"]
        good = {"model": "byte", "prompt": "caf\u00e9", "max_tokens": 2}
        assert httpx.post(live.url + "/v1/completions", json=good).status_code == 200


def test_a_model_without_chat_template_points_to_completions(client):
    with pytest.raises(openai.BadRequestError, match="use /v1/completions"):
        client.chat.completions.create(model="best", messages=[{"role": "user", "content": "hi"}])


# ----------------------------------------------------------------------------- errors


def _post(path: str, body: bytes | dict, **headers) -> tuple[str, bytes, dict]:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return path, content, {"Content-Type": "application/json", **headers}


GOOD = {"model": "best", "prompt": "ROMEO:", "max_tokens": 2}
CHAT = {"model": "best", "messages": [{"role": "user", "content": "Who?"}], "max_tokens": 2}
TEXT_5 = {"type": "text", "text": 5}
IMAGE = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
TOOL_CALL = {
    "role": "assistant",
    "content": None,
    "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
}
TOOL_ANSWER = {"role": "tool", "tool_call_id": "call_1", "content": "42"}
ERRORS = [
    (
        "malformed-json",
        _post("/v1/completions", b'{"model": "best", "prompt": '),
        400,
        "not valid JSON",
        None,
    ),
    ("body-not-object", _post("/v1/completions", b"[1, 2]"), 400, "must be a JSON object", None),
    # a body declared as something else was read as JSON all the same (curl -d sends a form's type)
    *(
        (
            f"content-type-{kind.partition('/')[2]}",
            _post(path, body, **{"Content-Type": kind}),
            415,
            f"its Content-Type says '{kind}'; send the header 'Content-Type: application/json'",
            None,
        )
        for path, body, kind in [
            ("/v1/completions", GOOD, "text/plain"),
            ("/v1/completions", GOOD, "application/x-www-form-urlencoded"),
            ("/v1/chat/completions", CHAT, "text/plain;charset=UTF-8"),
        ]
    ),
    (
        "body-not-utf-8",
        _post("/v1/completions", b'{"model": "best", "prompt": "caf\xe9"}'),
        400,
        "the request body is not UTF-8 (byte 0xe9 at offset 32 is not valid UTF-8); send JSON text "
        "encoded as UTF-8",
        None,
    ),
    (
        "no-messages",
        _post("/v1/chat/completions", {**CHAT, "messages": []}),
        400,
        'messages: give at least one message, such as {"role": "user", "content": "Hello"} (got [])',
        "messages",
    ),
    # a gzip body was read as text: "not valid JSON ('utf-8' codec can't decode byte 0x8b ...)"
    (
        "content-encoding-gzip",
        _post("/v1/completions", gzip.compress(json.dumps(GOOD).encode()), **{"Content-Encoding": "gzip"}),
        415,
        "the request body is compressed (Content-Encoding: gzip), and this server reads bodies as they "
        "are; send it uncompressed",
        None,
    ),
    # a browser's page on another origin, or another port of this machine, posts text without a
    # preflight: it made the server generate for it
    *(
        (
            f"foreign-page-{name}",
            _post("/v1/completions", GOOD, **headers),
            403,
            f"a web page of another origin ({said}) may not call this API",
            None,
        )
        for name, headers, said in [
            ("origin", {"Origin": "http://127.0.0.1:1"}, "http://127.0.0.1:1"),
            ("null-origin", {"Origin": "null"}, "null"),
            (
                "cross-site",
                {"Sec-Fetch-Site": "cross-site", "Origin": "https://a.example"},
                "https://a.example",
            ),
            ("same-site", {"Sec-Fetch-Site": "same-site"}, "same-site"),
            # text, as a page posts it without a preflight: it was a 415 asking for JSON
            ("text", {"Origin": "http://127.0.0.1:1", "Content-Type": "text/plain"}, "http://127.0.0.1:1"),
            (
                "form",
                {"Sec-Fetch-Site": "cross-site", "Content-Type": "application/x-www-form-urlencoded"},
                "cross-site",
            ),
        ]
    ),
    (
        "body-nested-too-deep",  # json.loads raised RecursionError: a 500
        _post("/v1/completions", b"[" * 100_000 + b"]" * 100_000),
        400,
        "nests arrays or objects too deeply",
        None,
    ),
    (
        "body-integer-too-long",  # json.loads raised ValueError (int's digit limit): a 500
        _post("/v1/completions", b'{"model": "best", "prompt": "A", "max_tokens": ' + b"9" * 5000 + b"}"),
        400,
        "holds an integer of more than",
        None,
    ),
    ("missing-prompt", _post("/v1/completions", {"model": "best"}), 400, "prompt: Field required", "prompt"),
    ("missing-model", _post("/v1/completions", {"prompt": "A"}), 400, "model: Field required", "model"),
    (
        "max-tokens-string",
        _post("/v1/completions", {**GOOD, "max_tokens": "5"}),
        400,
        "valid integer",
        "max_tokens",
    ),
    (
        "temperature-negative",
        _post("/v1/completions", {**GOOD, "temperature": -1}),
        400,
        "temperature: Input should be greater than or equal to 0 (got -1)",
        "temperature",
    ),
    (
        "temperature-infinite",
        _post("/v1/completions", b'{"model": "best", "prompt": "ROMEO:", "temperature": Infinity}'),
        400,
        "temperature: Input should be a finite number",
        "temperature",
    ),
    (
        "temperature-above-openai-range",
        _post("/v1/completions", {**GOOD, "temperature": 1e300}),
        400,
        "temperature: Input should be less than or equal to 2 (got 1e+300)",
        "temperature",
    ),
    (
        "top-k-below-minus-one",  # was taken as off, as 0 and -1 are
        _post("/v1/completions", {**GOOD, "top_k": -5}),
        400,
        "top_k: give a number of tokens (1 or more), or 0 or -1 for off (got -5)",
        "top_k",
    ),
    (
        "stop-not-strings",
        _post("/v1/completions", {**GOOD, "stop": [1, 2]}),
        400,
        "stop: give a string or a list of up to 4 strings (got [1, 2])",
        "stop",
    ),
    (
        "prompt-token-ids",
        _post("/v1/completions", {**GOOD, "prompt": [5, 6]}),
        400,
        "prompt: give a string or a list of strings",
        "prompt",
    ),
    (
        "content-part-text-not-string",
        _post("/v1/chat/completions", {"model": "best", "messages": [{"role": "user", "content": [TEXT_5]}]}),
        400,
        "messages.0.content: give a string or a list of parts",
        "messages.0.content",
    ),
    (
        "content-part-image",
        _post("/v1/chat/completions", {"model": "best", "messages": [{"role": "user", "content": [IMAGE]}]}),
        400,
        "messages.0.content: this model reads text only; drop the 'image_url' part",
        "messages.0.content",
    ),
    (
        "content-part-without-type",  # was 'drop the None part'
        _post(
            "/v1/chat/completions",
            {"model": "best", "messages": [{"role": "user", "content": [{"text": "A"}]}]},
        ),
        400,
        'messages.0.content: a part has no "type"; send {"type": "text", "text": "..."}',
        "messages.0.content",
    ),
    ("messages-missing", _post("/v1/chat/completions", {"model": "best"}), 400, "messages", "messages"),
    (
        "unknown-model",
        _post("/v1/completions", {**GOOD, "model": "step_999"}),
        404,
        "does not exist",
        "model",
    ),
    (
        "max-tokens-beyond-context",
        _post("/v1/completions", {**GOOD, "max_tokens": 100}),
        400,
        "exceed this model's context of 64 tokens; ask for at most 58",
        "max_tokens",
    ),
    # the message said 16 with nothing to tell a client that never sent it where the number came from
    *(
        (
            f"max-tokens-{name}-beyond-context",
            _post("/v1/completions", {**fields, "prompt": "A" * 54}),
            400,
            "max_tokens: 16 new tokens (the default, as the request gives no max_tokens) after a prompt "
            "of 54 exceed this model's context of 64 tokens; send max_tokens of at most 10",
            "max_tokens",
        )
        for name, fields in [
            ("left-out", {"model": "best"}),
            ("null", {"model": "best", "max_tokens": None}),
            ("left-out-in-a-stream", {"model": "best", "stream": True}),
        ]
    ),
    (
        "prompt-fills-context",
        _post("/v1/completions", {**GOOD, "prompt": "A" * 64}),
        400,
        "fill this model's",
        "prompt",
    ),
    (
        "character-outside-vocabulary",
        _post("/v1/completions", {**GOOD, "prompt": "ROMEO: 42"}),
        400,
        "not in this model's character vocabulary",
        "prompt",
    ),
    ("empty-prompt", _post("/v1/completions", {**GOOD, "prompt": ""}), 400, "prompt is empty", "prompt"),
    (
        "empty-prompt-in-a-batch",  # named no prompt: 'prompt is empty'
        _post("/v1/completions", {**GOOD, "prompt": ["ROMEO:", ""]}),
        400,
        "prompt.1 is empty",
        "prompt.1",
    ),
    (
        "batch-prompt-fills-context",
        _post("/v1/completions", {**GOOD, "prompt": ["ROMEO:", "ROMEO:", "A" * 64]}),
        400,
        "prompt.2: 64 tokens fill this model's",
        "prompt.2",
    ),
    ("too-many-stops", _post("/v1/completions", {**GOOD, "stop": list("abcde")}), 400, "at most 4", "stop"),
    (
        "oversized-body",
        _post("/v1/completions", {**GOOD, "prompt": "A" * 2_000_000}),
        413,
        "larger than",
        None,
    ),
    (
        "too-many-choices",
        _post("/v1/completions", {**GOOD, "prompt": ["A"] * 9, "n": 16, "max_tokens": 1}),
        400,
        "prompt: 9 prompts with n=16 ask for 144 completions; one request asks for at most 128",
        "prompt",
    ),
    # it said 'the API is under /v1', of a path under /v1
    (
        "unknown-route",
        ("/v1/embeddings", b"{}", {}),
        404,
        "no route /v1/embeddings; this server answers GET /v1/models, POST /v1/completions and POST "
        "/v1/chat/completions (and the playground at /)",
        None,
    ),
    # fields this server does not take were accepted and ignored: the answer silently was another
    (
        "field-misspelt",
        _post("/v1/completions", {**GOOD, "temprature": 0}),
        400,
        "temprature: unrecognized request argument (did you mean temperature?); fix its name or leave it out",
        "temprature",
    ),
    # a required field misspelt was told as missing ('prompt: Field required'), hiding the typo
    (
        "required-field-misspelt",
        _post("/v1/completions", {"model": "best", "promt": "ROMEO:", "max_tokens": 2}),
        400,
        "promt: unrecognized request argument (did you mean prompt?); fix its name",
        "promt",
    ),
    (
        "chat-required-field-misspelt",
        _post("/v1/chat/completions", {"model": "best", "mesages": CHAT["messages"]}),
        400,
        "mesages: unrecognized request argument (did you mean messages?); fix its name",
        "mesages",
    ),
    (
        "field-unknown",
        _post("/v1/completions", {**GOOD, "repetition_penalty": 1.3}),
        400,
        "repetition_penalty: unrecognized request argument; fix its name or leave it out",
        "repetition_penalty",
    ),
    (
        "penalty",
        _post("/v1/completions", {**GOOD, "presence_penalty": 1.5}),
        400,
        "presence_penalty: this server applies no penalties; send 0 or leave it out (got 1.5)",
        "presence_penalty",
    ),
    (
        "echo",
        _post("/v1/completions", {**GOOD, "echo": True}),
        400,
        "echo: the answer never repeats the prompt; leave it out (got true)",
        "echo",
    ),
    (
        "chat-logprobs",
        _post("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 3}),
        400,
        "logprobs: chat answers carry no logprobs; use /v1/completions for them (got true)",
        "logprobs",
    ),
    (
        "chat-tools",
        _post("/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}),
        400,
        "tools: this model does not call tools (it answers with text only); leave it out",
        "tools",
    ),
    (
        "chat-json-format",
        _post("/v1/chat/completions", {**CHAT, "response_format": {"type": "json_object"}}),
        400,
        'response_format: this server does not constrain the answer to JSON; leave it out (got {"type"',
        "response_format",
    ),
    # and so were fields inside a message or stream_options
    (
        "message-tool-calls",
        _post("/v1/chat/completions", {**CHAT, "messages": [*CHAT["messages"], TOOL_CALL]}),
        400,
        "messages.1.tool_calls: this model does not call tools (it answers with text only); leave it out "
        '(got [{"id": "call_1"',
        "messages.1.tool_calls",
    ),
    (
        "message-of-a-tool",
        _post("/v1/chat/completions", {**CHAT, "messages": [*CHAT["messages"], TOOL_ANSWER]}),
        400,
        "messages.1.role: this model does not call tools (it answers with text only), so it reads no "
        "tool's answer; leave out the messages of role tool",
        "messages.1.role",
    ),
    (
        "message-field-misspelt",
        _post(
            "/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "Who?", "nmae": "A"}]}
        ),
        400,
        "messages.0.nmae: unrecognized request argument (did you mean messages.0.name?); fix its name or "
        "leave it out",
        "messages.0.nmae",
    ),
    (
        "stream-option-misspelt",
        _post("/v1/completions", {**GOOD, "stream": True, "stream_options": {"include_usge": True}}),
        400,
        "stream_options.include_usge: unrecognized request argument (did you mean "
        "stream_options.include_usage?); fix its name or leave it out",
        "stream_options.include_usge",
    ),
    # a stream's options without a stream changed nothing: OpenAI and vLLM refuse them
    (
        "stream-options-without-stream",
        _post("/v1/completions", {**GOOD, "stream_options": {"include_usage": True}}),
        400,
        'stream_options: only allowed when stream is true; send "stream": true, or leave stream_options out',
        "stream_options",
    ),
    (
        "chat-stream-options-without-stream",
        _post("/v1/chat/completions", {**CHAT, "stream": False, "stream_options": {"include_usage": False}}),
        400,
        "stream_options: only allowed when stream is true",
        "stream_options",
    ),
    # JSON's true and false are not numbers: `best_of: true` passed as 1 (True == 1 in Python)
    *(
        (
            f"{field}-{json.dumps(value)}",
            _post(path, {**body, field: value}),
            400,
            f"{field}: Input should be a valid {kind} (got {json.dumps(value)})",
            field,
        )
        for path, body, field, kind, value in [
            ("/v1/completions", GOOD, "best_of", "integer", True),
            ("/v1/completions", GOOD, "best_of", "integer", 1.0),
            ("/v1/completions", GOOD, "frequency_penalty", "number", False),
            ("/v1/completions", GOOD, "presence_penalty", "number", False),
            ("/v1/chat/completions", CHAT, "top_logprobs", "integer", False),
            ("/v1/completions", GOOD, "max_tokens", "integer", True),
            ("/v1/completions", GOOD, "n", "integer", True),
            ("/v1/completions", GOOD, "seed", "integer", False),
            ("/v1/completions", GOOD, "top_k", "integer", True),
            ("/v1/completions", GOOD, "temperature", "number", False),
            ("/v1/completions", GOOD, "top_p", "number", True),
            ("/v1/chat/completions", CHAT, "max_tokens", "integer", True),
            ("/v1/chat/completions", CHAT, "max_completion_tokens", "integer", True),
        ]
    ),
    (
        "completion-logprobs-true",
        _post("/v1/completions", {**GOOD, "logprobs": True}),
        400,
        "logprobs: on /v1/completions it is how many of the likeliest tokens to list beside each token: "
        "send a number from 0 to 20 (true/false is chat's form), or false or null for none (got true)",
        "logprobs",
    ),
]


@pytest.mark.parametrize(("case", "request_", "status", "text", "param"), ERRORS, ids=[e[0] for e in ERRORS])
def test_errors_are_openai_json_and_the_server_goes_on(server, client, case, request_, status, text, param):
    path, content, headers = request_
    answer = httpx.post(server.url + path, content=content, headers=headers, timeout=30)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert text in error["message"] and error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}
    assert completion(client, **GOOD, seed=0)  # still serving


def test_an_unknown_route_is_answered_with_the_routes_the_app_has(trained_run):
    """The routes a 404 lists were a sentence written by hand beside the route table, and a route
    added to the table was missing from it: they are the app's own now."""
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from trickster.serve.app import create_app
    from trickster.serve.models import Catalog

    engine = Engine(1)
    try:
        app = create_app(Catalog(trained_run, torch.device("cpu"), ["best"]), engine)
        app.router.routes.append(Route("/v1/embeddings", lambda request: JSONResponse({}), methods=["POST"]))
        answer = TestClient(app, base_url="http://localhost").get("/v1/responses")
    finally:
        engine.close()
    assert answer.status_code == 404
    assert answer.json()["error"]["message"] == (
        "no route /v1/responses; this server answers GET /v1/models, POST /v1/completions, POST "
        "/v1/chat/completions and POST /v1/embeddings (and the playground at /)"
    )


def test_json_bodies_from_programs_and_the_servers_own_page_are_taken(server):
    """A JSON type with parameters, a body that names no type (as vLLM's FastAPI reads it), and a
    browser's request from the server's own page (the playground) or a typed address."""
    host = server.url.removeprefix("http://")
    for headers in [
        {"Content-Type": "application/json; charset=utf-8"},
        {"Content-Type": "application/vnd.example+json"},
        {},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "same-origin", "Origin": server.url},
        {"Content-Type": "application/json", "Sec-Fetch-Site": "none"},
        {"Content-Type": "application/json", "Origin": server.url, "Host": host},
    ]:
        answer = httpx.post(server.url + "/v1/completions", content=json.dumps(GOOD), headers=headers)
        assert answer.status_code == 200, (headers, answer.text)


REBOUND = ["rebind.example", "rebind.example:8000", "127.0.0.1.nip.io", "localhost.rebind.example"]
LOCAL = ["localhost", "LocalHost.:8000", "app.localhost", "127.0.0.1", "127.8.9.10:80", "[::1]:8000"]


def test_a_name_another_site_pointed_here_is_refused_without_an_api_key(trained_run):
    """DNS rebinding: a page of another site points a name of its own at 127.0.0.1 and reads every
    answer as its own origin's (its Sec-Fetch-Site says same-origin). Refused on every route but
    /health; localhost, its subdomains, any address and the names allowed are served."""
    named = ["llm.example.com", "LLM.example.com.:443"]  # --allowed-host llm.example.com
    with live_server(trained_run, checkpoints=["best"], allowed_hosts=("llm.example.com",)) as live:
        for host in REBOUND:
            for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions"), ("GET", "/")]:
                headers = {"Host": host, "Sec-Fetch-Site": "same-origin"}
                answer = httpx.request(method, live.url + path, json=GOOD, headers=headers, timeout=30)
                assert answer.status_code == 403, (host, path, answer.text)
                error = answer.json()["error"]
                assert set(error) == {"message", "type", "param", "code"}
                assert f"Host '{host}' is not a name of this server" in error["message"]
                assert f"--allowed-host {host.partition(':')[0]} if that name is yours" in error["message"]
            assert httpx.get(live.url + "/health", headers={"Host": host}).status_code == 200
        for host in [*LOCAL, "192.168.1.5:8000", "[fe80::1]", *named]:
            answer = httpx.post(live.url + "/v1/completions", json=GOOD, headers={"Host": host}, timeout=30)
            assert answer.status_code == 200, (host, answer.text)
    with live_server(trained_run, api_key="s3cret", checkpoints=["best"]) as live:
        for key, status in [(None, 401), ("s3cret", 200)]:  # a key guards it: a page cannot send it
            headers = {"Host": REBOUND[0], **({"Authorization": f"Bearer {key}"} if key else {})}
            assert httpx.get(live.url + "/v1/models", headers=headers).status_code == status


def test_fields_that_ask_for_nothing_we_lack_are_accepted(client):
    """OpenAI's fields that change nothing in the text (user, metadata, ...), and those we do not
    do sent with the value that asks for nothing (as clients send their defaults), or null: the
    same text as without them."""
    fields = dict(model="best", prompt="ROMEO:", max_tokens=12, seed=5)
    neutral = dict(user="me", presence_penalty=0, frequency_penalty=0, logit_bias={}, echo=False, best_of=1)
    extra = {"metadata": {"run": "a"}, "store": False, "suffix": None, "tools": [], "response_format": None}
    assert completion(client, **fields, **neutral, extra_body=extra) == completion(client, **fields)


def test_completion_logprobs_false_asks_for_none(client):
    """OpenAI's client types completions' logprobs as a count, but Python's False is one: it sends
    `false`, which was a 400 ('Input should be a valid integer'); it asks for no logprobs."""
    fields = dict(model="best", prompt="ROMEO:", max_tokens=12, seed=5)
    answer = client.completions.create(**fields, logprobs=False)
    assert answer.choices[0].logprobs is None and answer.choices[0].text == completion(client, **fields)


def test_message_and_stream_option_fields_that_ask_for_nothing_are_accepted(trained_run):
    """A user message's `name`, an answer sent back with its empty `tool_calls`, null `refusal` and
    `annotations`, and stream_options' include_obfuscation: the same text as without them."""
    with live_server(trained_run, chat_template=CHAT_TEMPLATE, checkpoints=["best"]) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        said = {"role": "assistant", "content": "Peace."}
        plain = [{"role": "user", "content": "Who?"}, said, {"role": "user", "content": "Thou."}]
        named = [
            {**plain[0], "name": "romeo"},
            {**said, "tool_calls": [], "refusal": None, "annotations": [], "function_call": None},
            plain[2],
        ]
        fields = dict(model="best", max_tokens=12, seed=3)

        def text(messages, **extra):
            chunks = client.chat.completions.create(messages=messages, **fields, **extra, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        options = {"include_usage": True, "include_obfuscation": False}
        assert text(named, stream_options=options) == text(plain)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_an_error_naming_a_path_with_a_line_break_is_one_line(server, method):
    """uvicorn decodes %0B (a vertical tab) and %E2%80%A8 (a line separator) in the path, which the
    404 and 405 messages name: the message was two lines, or three."""
    path = "/v1/a%0Bb%E2%80%A8c" if method == "GET" else "/v1/models/a%0Bb%E2%80%A8c"
    answer = httpx.request(method, server.url + path)
    assert answer.status_code == (404 if method == "GET" else 405)
    message = answer.json()["error"]["message"]
    assert len(message.splitlines()) == 1, message
    assert "a\\x0bb\\u2028c" in message


def test_a_vanishing_temperature_is_greedy(client):
    """A temperature so small that logits / temperature overflow float32 samples as greedy, not 500."""
    fields = dict(model="best", prompt="ROMEO:", max_tokens=12, seed=1)
    assert completion(client, **fields, temperature=1e-40) == completion(client, **fields, temperature=0)


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/completions", {"POST"}),
        ("OPTIONS", "/v1/chat/completions", {"POST"}),
        ("DELETE", "/v1/models/best", {"GET", "HEAD"}),
    ],
)
def test_a_wrong_method_is_405_with_the_allowed_ones(server, client, method, path, allow):
    answer = httpx.request(method, server.url + path)
    assert answer.status_code == 405
    assert set(answer.headers["allow"].split(", ")) == allow
    message = answer.json()["error"]["message"]
    assert message == f"{method} is not allowed on {path}; use {answer.headers['allow']}"
    assert completion(client, **GOOD)


def test_the_openai_client_sees_the_errors_as_its_own_exceptions(client):
    with pytest.raises(openai.NotFoundError, match="step_999"):
        client.completions.create(model="step_999", prompt="A")
    with pytest.raises(openai.BadRequestError, match="at most 58"):
        client.completions.create(model="best", prompt="ROMEO:", max_tokens=100)
    with pytest.raises(openai.APIStatusError) as oversized:
        client.completions.create(model="best", prompt="A" * 2_000_000)
    assert oversized.value.status_code == 413


def closed(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (bytes sent now are refused, or read as its end)."""
    sock.settimeout(3)
    try:
        sock.sendall(b" ")
        return sock.recv(1) == b""
    except TimeoutError:  # still open, waiting for more
        return False
    except OSError:  # reset: the server closed with bytes of ours unread
        return True


@pytest.mark.parametrize(
    ("framing", "fix"),
    [
        ("Content-Length: 1000", "send all the bytes Content-Length promises, without pausing"),
        # the fix named Content-Length, which a chunked request has not sent
        (
            "Transfer-Encoding: chunked",
            "send all the chunks without pausing, ending with a chunk of size 0",
        ),
    ],
    ids=["content-length", "chunked"],
)
@pytest.mark.parametrize("trickle", [False, True], ids=["silent", "byte-by-byte"])
def test_a_body_not_all_in_by_the_deadline_is_answered_408(trained_run, framing, fix, trickle):
    """1000 bytes promised, or chunks begun, and 12 come, then nothing or a byte every 0.1 s: 0.8 s
    after the headers, one JSON error, and the connection is closed. A byte now and then held the
    connection for ever: only 30 s of silence between bytes was timed (here that wait was 0.8 s, and
    the trickle kept coming for the test's 3 s)."""
    with live_server(trained_run, checkpoints=["best"], body_timeout=0.8) as live:
        host, port = live.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            head = f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n{framing}\r\n\r\n"
            part = b'{"model": "b'
            start = time.monotonic()
            sock.sendall(head.encode() + (part if "Length" in framing else b"c\r\n" + part + b"\r\n"))
            sent = len(part)
            # until the answer comes (or 3 s), one more byte every 0.1 s if trickling
            while not select.select([sock], [], [], 0.1)[0] and time.monotonic() - start < 3:
                if trickle:
                    sock.sendall(b" " if "Length" in framing else b"1\r\n \r\n")
                    sent += 1
            waited = time.monotonic() - start
            answer = http.client.HTTPResponse(sock)
            answer.begin()
            assert 0.7 < waited < 1.8, f"the answer came after {waited:.1f} s"
            assert answer.status == 408 and answer.getheader("connection") == "close"
            message = json.loads(answer.read())["error"]["message"]
            assert re.fullmatch(
                rf"the request body did not all arrive within 0.8 s \(\d+ bytes in\); {fix}", message
            ), message
            assert int(re.search(r"\((\d+) bytes", message)[1]) in range(len(part), sent + 1)
            assert closed(sock)
        assert httpx.post(live.url + "/v1/completions", json=GOOD).status_code == 200


def test_a_body_far_over_the_limit_gets_its_413_in_a_client_that_reads_after_writing(server):
    """http.client (and requests) read the answer only once the whole body is written: a server that
    closed the connection on its 413 reset it under them ('Broken pipe' at 20 MB), so the 413 leaves
    the connection open and uvicorn drops the rest of the body."""
    host, port = server.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", "/v1/completions", body=b"x" * 20_000_000)
    answer = connection.getresponse()
    assert answer.status == 413
    assert "larger than 1,048,576 bytes" in json.loads(answer.read())["error"]["message"]
    connection.close()


def _chunked(sock: socket.socket, *chunks: bytes, size: str | None = None) -> None:
    """A chunked POST to /v1/completions: each chunk whole, then a chunk that declares `size`
    (hex) and sends 12 bytes of it, or the last chunk (size 0) when no size is given."""
    head = b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
    framed = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    sock.sendall(head + framed + (b"0\r\n\r\n" if size is None else size.encode() + b'\r\n{"model": "b'))


@pytest.mark.parametrize(
    ("before", "size"),
    [(0, "FFFFFFFF"), (0, "100001"), (600_000, "80000")],
    ids=["4-GiB-chunk", "limit-plus-one", "second-chunk-past-the-limit"],
)
def test_a_chunk_declaring_more_than_the_limit_is_413_at_once(server, client, before, size):
    """A chunk whose size line declares more than the body may hold (alone, or with the chunks
    before it: 600,000 + 524,288 bytes) is answered 413 as soon as its size is read: the server
    waited for its bytes until the body's deadline (60 s), then answered 408."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        start = time.monotonic()
        _chunked(sock, *([b" " * before] if before else []), size=size)
        assert select.select([sock], [], [], 3)[0], "no answer within 3 s"
        waited = time.monotonic() - start
        answer = http.client.HTTPResponse(sock)
        answer.begin()
        assert answer.status == 413, answer.read()
        assert "larger than 1,048,576 bytes" in json.loads(answer.read())["error"]["message"]
    assert waited < 2, f"the 413 came after {waited:.1f} s"
    assert completion(client, **GOOD)  # still serving


def test_a_body_in_chunks_near_the_limit_is_served(server):
    """What a chunk still promises is counted once: a body of 1,000,000 bytes (the limit is
    1,048,576), in one chunk or in three, arrives in many reads and is read whole, not refused for
    the bytes of its last read counted both as promised and as come."""
    body = json.dumps({**GOOD, "prompt": "ROMEO:" + " " * 40, "stop": ["x" * 999_880]}).encode()
    assert 999_900 < len(body) <= 1_000_000
    host, port = server.url.removeprefix("http://").split(":")
    for chunks in ([body], [body[:20], body[20:-30], body[-30:]]):
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            _chunked(sock, *chunks)
            answer = http.client.HTTPResponse(sock)
            answer.begin()
            assert answer.status == 200, answer.read()
            assert json.loads(answer.read())["usage"]["completion_tokens"] == 2


def test_api_key_is_required_when_set(trained_run):
    with live_server(trained_run, api_key="s3cret", checkpoints=["best"]) as live:
        # a key in another scheme (Basic, or none) was 'no API key given', with the header right there
        given = ((None, "no API key given"), ("Bearer wrong", "the API key is wrong"))
        other = (
            ("Basic czNjcmV0", "is 'Basic ...', not 'Bearer KEY'"),
            ("s3cret", "does not start with 'Bearer '"),
        )
        for key, text in (*given, *other):
            headers = {} if key is None else {"Authorization": key}
            for path in ("/v1/models", "/v1/completions"):
                answer = (
                    httpx.post(live.url + path, json=GOOD, headers=headers)
                    if "compl" in path
                    else httpx.get(live.url + path, headers=headers)
                )
                assert answer.status_code == 401 and text in answer.json()["error"]["message"]
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=live.url + "/v1", api_key="wrong", max_retries=0).models.list()
        right = openai.OpenAI(base_url=live.url + "/v1", api_key="s3cret", max_retries=0)
        assert [m.id for m in right.models.list().data] == ["best"]
        assert completion(right, **GOOD)
        # the scheme's case and the spaces after it are free (RFC 9110 11.4): this was 'the key is wrong'
        for given in ("bearer s3cret", "Bearer  s3cret", "BEARER   s3cret"):
            answer = httpx.get(live.url + "/v1/models", headers={"Authorization": given})
            assert answer.status_code == 200, (given, answer.text)
        assert httpx.get(live.url + "/").status_code == 200  # the page itself holds nothing secret
        # a load balancer's probe holds no key (as vLLM's and llama.cpp's /health take none)
        health = httpx.get(live.url + "/health")
        assert health.status_code == 200 and health.json() == {"status": "ok"}


# ----------------------------------------------------------------------------- concurrency


def test_concurrent_clients_get_what_they_get_alone(client, server):
    requests = [
        dict(model=m, prompt=p, max_tokens=k, seed=s, temperature=t, top_p=tp)
        for m, p, k, s, t, tp in [
            ("best", "ROMEO:", 40, 1, 0.8, 1.0),
            ("best", "O", 25, 2, 1.0, 0.9),
            ("best", "JULIET: What", 30, 3, 0.0, 1.0),
            ("best", "KING:", 50, 4, 1.2, 1.0),
            ("untrained", "ROMEO:", 35, 5, 0.9, 1.0),
            ("untrained", "A", 20, 6, 1.0, 0.5),
            ("step_000006", "First Citizen:", 30, 7, 0.7, 1.0),
            ("best", "MENENIUS:", 45, 8, 1.0, 1.0),
        ]
    ]
    alone = [completion(client, **r) for r in requests]
    server.engine.largest_batch = 0
    barrier = threading.Barrier(len(requests))

    def together(fields):
        barrier.wait()
        return completion(client, **fields)

    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        assert list(pool.map(together, requests)) == alone
    assert server.engine.largest_batch > 1  # they were decoded together, not one after another


def test_engine_batch_matches_lone_generation():
    """Sequences of different lengths, admitted while others decode (4 rows for 10 sequences),
    each get the tokens `generate` gives them alone."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=64, hidden_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128, max_seq_len=64
    )
    model = Transformer(cfg).eval()
    with torch.no_grad():  # larger weights than the initialisation: peaked, varied distributions
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 0.3)
    engine = Engine(capacity=4)
    jobs = []
    for i in range(10):
        prompt = torch.randint(0, 60, (3 + i % 5,)).tolist()
        sampling = Sampling(
            max_tokens=10 + 3 * i,
            temperature=0.0 if i % 3 == 0 else 0.9,
            top_k=20 if i % 2 else None,
            top_p=0.9 if i % 4 == 1 else None,
            seed=i,
        )
        events, done = [], threading.Event()

        def emit(event, events=events, done=done):
            events.append(event)
            if not isinstance(event, Token):
                done.set()

        jobs.append((prompt, sampling, events, done))
        engine.submit(model, 60, Sequence(prompt, sampling, emit, stop_ids={12}))
    try:
        for prompt, s, events, done in jobs:
            assert done.wait(60)
            alone = generate(
                model, prompt, s.max_tokens, s.temperature, s.top_k, s.top_p, s.seed, 60, stop_ids={12}
            )
            assert [e.id for e in events[:-1]] == list(alone)
            assert events[-1] == Finished("length" if len(events) - 1 == s.max_tokens else "stop")
    finally:
        engine.close()
    assert engine.largest_batch == 4


def test_on_a_gpu_the_engine_computes_as_generate_does_there_in_bfloat16(monkeypatch):
    """On a GPU of Ampere or later `generate` decodes under bfloat16 autocast with a bfloat16 KV
    cache (precision.inference_dtype). The engine must too, or a seed served there gives other
    tokens than `trickster generate` with it (and its cache takes twice the memory): it decoded
    the float32 weights in float32. Shown on the CPU, whose autocast takes bfloat16, with the
    dtype a GPU would choose."""
    from trickster.model import generate as generate_module
    from trickster.serve import engine as engine_module

    for module in (generate_module, engine_module):
        monkeypatch.setattr(module, "inference_dtype", lambda device: "bfloat16", raising=False)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.endswith("norm.weight"):
                p.normal_(0.0, 0.3)
    engine = Engine(capacity=1)  # each alone: the same matrix shapes as generate's
    cache_dtypes, jobs = [], []
    for seed in range(4):
        prompt, sampling = (
            torch.randint(0, 60, (5,)).tolist(),
            Sampling(max_tokens=12, temperature=0.9, seed=seed),
        )
        events, done = [], threading.Event()

        def emit(event, events=events, done=done):
            batch = engine.batches.get(model)
            if batch is not None and batch.cache is not None:
                cache_dtypes.append(batch.cache.keys[0].dtype)
            events.append(event)
            if not isinstance(event, Token):
                done.set()

        jobs.append((prompt, sampling, events, done))
        engine.submit(model, 60, Sequence(prompt, sampling, emit))
    try:
        for prompt, s, events, done in jobs:
            assert done.wait(60)
            alone = generate(model, prompt, s.max_tokens, s.temperature, seed=s.seed, vocab_limit=60)
            assert [e.id for e in events[:-1]] == list(alone)
    finally:
        engine.close()
    assert set(cache_dtypes) == {torch.bfloat16}


def test_a_prompt_the_model_cannot_take_fails_alone():
    """A prefill that raises (here an empty prompt, which the routes refuse before it gets this far)
    fails that sequence only: the ones already decoding and the ones admitted after it finish."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_dim=32, num_layers=1, num_heads=2, mlp_dim=64, max_seq_len=64)
    model = Transformer(cfg).eval()
    engine = Engine(capacity=4)
    outcomes = []
    for prompt in ([1, 2, 3], [], [4, 5]):
        events, done = [], threading.Event()

        def emit(event, events=events, done=done):
            events.append(event)
            if not isinstance(event, Token):
                done.set()

        engine.submit(model, 60, Sequence(prompt, Sampling(max_tokens=20, seed=1), emit))
        outcomes.append((events, done))
    try:
        for _, done in outcomes:
            assert done.wait(60)
    finally:
        engine.close()
    kinds = [type(events[-1]).__name__ for events, _ in outcomes]
    assert kinds == ["Finished", "Failed", "Finished"]
    assert [len(outcomes[i][0]) for i in (0, 2)] == [21, 21]  # 20 tokens, then Finished("length")


# ----------------------------------------------------------------------------- the real command


def serve_process(run: Path, cwd: Path, *flags: str) -> tuple[subprocess.Popen, str]:
    """`trickster serve RUN --checkpoints best,untrained` in a process of its own, and its URL."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent / "src")}
    argv = [sys.executable, "-m", "trickster", "serve", str(run), "--port", "0", "--device", "cpu"]
    process = subprocess.Popen(
        [*argv, "--checkpoints", "best,untrained", *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    line = process.stdout.readline()
    assert line.startswith("serving best, untrained from"), line + process.stderr.read()
    return process, line.split(" at ")[1].split("/v1")[0]


@pytest.mark.slow
def test_trickster_serve_process_answers_and_stops_on_ctrl_c(trained_run, tmp_path):
    process, url = serve_process(trained_run, tmp_path)
    try:
        assert url.startswith("http://127.0.0.1:")  # loopback unless told otherwise
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert len(completion(client, **GOOD)) == 2
        process.send_signal(signal.SIGINT)
        # 130 and `interrupted`, as generate, chat and train end on Ctrl-C: serve ended with 0
        assert process.wait(timeout=30) == 130
        assert process.stderr.read() == "interrupted\n"
    finally:
        process.kill()


@pytest.mark.slow
def test_the_name_it_listens_on_and_allowed_hosts_are_served_without_a_key(trained_run, tmp_path):
    """`--host NAME` (this machine's name) and `--allowed-host` are names a browser may ask by; a
    name pointed here by another site is not."""
    name = socket.gethostname()
    try:
        socket.getaddrinfo(name, 0)
    except OSError:
        pytest.skip(f"this machine's name {name!r} does not resolve")
    process, url = serve_process(trained_run, tmp_path, "--host", name, "--allowed-host", "llm.example.com")
    try:
        port = url.rpartition(":")[2]
        served = [(f"{name}:{port}", 200), ("llm.example.com", 200), (f"rebind.example:{port}", 403)]
        for host, status in served:
            answer = httpx.get(url + "/v1/models", headers={"Host": host}, timeout=30)
            assert answer.status_code == status, (host, answer.text)
    finally:
        process.kill()


@pytest.mark.slow
def test_ctrl_c_ends_the_streams_under_way_with_an_error_event_at_once(trained_run, tmp_path):
    """Ctrl-C while streams decode: uvicorn gave them 3 s, then cancelled them, each cut off
    mid-stream and logged as a traceback ('Exception in ASGI application', then the decoding
    thread's 'Event loop is closed'). Now each stream gets an error event saying the server stops,
    then [DONE], at once, and the server ends without a traceback. One sequence at a time
    (--max-batch 1) and 2 x 128 of them keep these streams going for far longer than 3 s."""
    process, url = serve_process(trained_run, tmp_path, "--max-batch", "1")
    fields = {"model": "best", "prompt": ["ROMEO:"] * 8, "n": 16, "max_tokens": 50, "stream": True}
    try:
        with contextlib.ExitStack() as streams:
            lines = []
            for _ in range(2):  # the second one's sequences wait behind the first one's
                answer = httpx.stream("POST", url + "/v1/completions", json=fields, timeout=30)
                lines.append(streams.enter_context(answer).iter_lines())
            assert next(lines[0]).startswith("data: {")  # it decodes
            process.send_signal(signal.SIGINT)
            ends = [[line for line in stream if line.startswith("data: ")][-2:] for stream in lines]
        assert process.wait(timeout=30) == 130
        assert process.stderr.read() == "interrupted\n"
    finally:
        process.kill()
    for error, done in ends:
        message = json.loads(error.removeprefix("data: "))["error"]["message"]
        assert message.startswith("the server is stopping")
        assert done == "data: [DONE]"  # whole: not cancelled at the end of uvicorn's grace


def test_a_slow_forward_pass_does_not_hold_up_other_requests(trained_run, monkeypatch):
    """With every decoding step made slow (0.2 s), a request for the model list is answered while a
    completion is still being generated: forward passes run off the event loop."""
    from trickster.serve.engine import Batch

    decode = Batch._decode

    def slow_decode(self):
        time.sleep(0.2)
        decode(self)

    monkeypatch.setattr(Batch, "_decode", slow_decode)
    with live_server(trained_run, checkpoints=["best"]) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(completion, client, model="best", prompt="ROMEO:", max_tokens=10)
            time.sleep(0.5)  # the completion is decoding now (10 steps: 2 s or more)
            start = time.perf_counter()
            assert [m.id for m in client.models.list().data] == ["best"]
            waited = time.perf_counter() - start
            assert not pending.done() and waited < 1.0
            assert len(pending.result(timeout=60)) == 10


@pytest.mark.parametrize("route", ["completions", "chat/completions"])
def test_a_long_prompt_being_tokenized_does_not_hold_up_other_requests(trained_run, monkeypatch, route):
    """Tokenizing ran on the event loop: a prompt of 1 MiB took a trained bpe tokenizer 2.2 s (GPT-2's
    1.1 s), and every other client, even GET /v1/models, waited that long. Here tokenizing a long
    prompt is made to take 1 s: the model list is answered meanwhile."""
    from trickster.data.tokenizers import CharTokenizer

    encode = CharTokenizer.encode

    def slow_encode(self, text):
        if len(text) > 1000:
            time.sleep(1.0)
        return encode(self, text)

    monkeypatch.setattr(CharTokenizer, "encode", slow_encode)
    long = "A" * 100_000
    body = {"model": "best", "prompt": long} if route == "completions" else {"model": "best"}
    if route != "completions":
        body["messages"] = [{"role": "user", "content": long}]
    with live_server(trained_run, checkpoints=["best"], chat_template=CHAT_TEMPLATE) as live:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(httpx.post, f"{live.url}/v1/{route}", json=body, timeout=60)
            time.sleep(0.3)  # the prompt is being tokenized now
            start = time.perf_counter()
            assert httpx.get(live.url + "/v1/models", timeout=60).status_code == 200
            waited = time.perf_counter() - start
            assert not pending.done() and waited < 0.5, f"GET /v1/models waited {waited:.1f} s"
            answer = pending.result(timeout=60)
            assert (
                answer.status_code == 400 and "fill this model's context" in answer.json()["error"]["message"]
            )


@pytest.mark.parametrize("route", ["completions", "chat"])
def test_tokenizing_a_long_prompt_lets_other_threads_run(route):
    """Off the event loop is not enough: a Hugging Face tokenizer's encode holds the GIL throughout,
    so the loop stood still all the same. The main thread ticks every 1 ms while another thread
    tokenizes 256 KiB of prompt with a trained bpe (0.4 s or more), as each route does."""
    from trickster.data.new_tokenizer import build_tokenizer
    from trickster.serve import chat

    bpe = build_tokenizer("bpe", ["To be, or not to be, that is the question"] * 50, False, 300)
    text = "To be, or not to be" * 14_000
    if route == "completions":
        work = functools.partial(chat.encode, bpe, text)
    else:
        template = chat.Template(CHAT_TEMPLATE, bpe)
        work = functools.partial(template.prompt_ids, [{"role": "user", "content": text}])
    ticks, worker = 0, threading.Thread(target=work)
    start = time.perf_counter()
    worker.start()
    while worker.is_alive():
        time.sleep(0.001)
        ticks += 1
    took = time.perf_counter() - start
    assert ticks >= 20, f"the main thread ran {ticks} times in the {took:.2f} s the tokenizing took"


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_hangs_up_stops_its_generation(trained_run, monkeypatch, stream):
    """With each decoding step slowed to 0.05 s, a client asks for 50 tokens and leaves after 0.3 s:
    its sequence leaves the batch within a step or two, and the next client is served."""
    from trickster.serve.engine import Batch

    decode, steps = Batch._decode, []

    def slow_decode(self):
        time.sleep(0.05)
        steps.append(len(self.rows))
        decode(self)

    monkeypatch.setattr(Batch, "_decode", slow_decode)
    with live_server(trained_run, checkpoints=["best"]) as live:
        host, port = live.url.removeprefix("http://").split(":")
        body = json.dumps({"model": "best", "prompt": "ROMEO:", "max_tokens": 50, "stream": stream})
        with socket.create_connection((host, int(port))) as sock:
            head = f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall((head + body).encode())
            time.sleep(0.3)
        time.sleep(0.5)  # a step or two to notice, then nothing left to decode
        decoded = len(steps)
        time.sleep(0.5)
        assert len(steps) == decoded and decoded < 30, f"{len(steps)} steps decoded for a client that left"
        assert httpx.post(live.url + "/v1/completions", json=GOOD).status_code == 200


def test_a_client_that_leaves_mid_stream_logs_nothing_and_stops_its_generation(
    trained_run, monkeypatch, caplog
):
    """A stream of n=16 choices (16 tokens a decoding step, 0.02 s a step) whose client leaves
    while the server's event loop is held up for 0.3 s (as other clients' chunks, or a long prompt,
    hold it up): the tokens sampled meanwhile were written in a row once it ran again, before
    uvicorn heard of the loss, and asyncio logged 'socket.send() raised exception.' for each past
    the fourth. Now nothing is logged, and the engine samples at most two more steps once the loop
    runs (tokens counted as the engine samples them; the 50 asked of each choice would be 800)."""
    from trickster.serve.choices import Generation
    from trickster.serve.engine import Batch

    decode, take, arrive = Batch._decode, Batch._take, Generation._arrive
    sampled, arrived, held, released = [], [], threading.Event(), []

    def slow_decode(self):
        time.sleep(0.02)
        decode(self)

    def counted_take(self, seq, logits):
        sampled.append(time.monotonic())
        take(self, seq, logits)

    def held_arrive(self, index, event):
        arrived.append(index)
        if len(arrived) == 64:  # the fourth step: the client leaves now
            held.set()
            time.sleep(0.3)  # on the event loop: it reads nothing from the sockets meanwhile
            released.append(time.monotonic())
        arrive(self, index, event)

    monkeypatch.setattr(Batch, "_decode", slow_decode)
    monkeypatch.setattr(Batch, "_take", counted_take)
    monkeypatch.setattr(Generation, "_arrive", held_arrive)
    caplog.set_level(logging.WARNING)
    body = json.dumps({"model": "best", "prompt": "ROMEO:", "max_tokens": 50, "n": 16, "stream": True})
    with live_server(trained_run, checkpoints=["best"]) as live:
        host, port = live.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port))) as sock:
            head = f"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {len(body)}\r\n\r\n"
            sock.sendall((head + body).encode())
            assert held.wait(timeout=60), "the stream never reached its fourth step"
        while not released or time.monotonic() - max(sampled) < 0.3:  # the engine idle a while
            time.sleep(0.05)
        after = sum(t > released[0] for t in sampled)
        assert after <= 32 and len(sampled) < 800, f"{after} tokens sampled after the client left"
    noise = [r.getMessage() for r in caplog.records if "raised exception" in r.getMessage()]
    assert not noise, f"{len(noise)} lines logged for a client gone: {noise[0]}"


@pytest.mark.slow
def test_an_imported_hugging_face_chat_model_answers_as_transformers_does(tmp_path):
    """Its own chat template (from tokenizer_config.json), rendered and tokenized as
    apply_chat_template does, then greedy decoding: the same tokens as transformers' generate."""
    pytest.importorskip("transformers")
    from .test_hf import hf_greedy, tiny_llama

    src, theirs, hf_tok = tiny_llama(tmp_path)
    run = tmp_path / "run"
    assert cli.main(["import", "hf", str(src), "--out", str(run)]) == 0
    messages = [{"role": "user", "content": "Is it so?"}]
    ids = hf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    expected = hf_greedy(theirs, ids, 6, suppress_tokens=list(range(300, 320)))
    with live_server(run) as live:
        client = openai.OpenAI(base_url=live.url + "/v1", api_key="unused", max_retries=0)
        assert client.models.list().data[0].model_extra["chat"]
        answer = client.chat.completions.create(model="final", messages=messages, max_tokens=6, temperature=0)
    assert answer.usage.prompt_tokens == len(ids)
    # the reply is text that continues the prompt (SentencePiece keeps a piece's leading space there)
    prompt_text = hf_tok.decode(ids, skip_special_tokens=True)
    whole = hf_tok.decode(ids + expected, skip_special_tokens=True)
    assert whole.startswith(prompt_text) and answer.choices[0].message.content == whole[len(prompt_text) :]


def test_a_stop_while_a_prompt_is_admitted_fails_that_sequence_too(monkeypatch):
    """Engine.stop fails the rows and the waiting; a sequence the worker had taken from `waiting`
    and not yet put in a row (its prefill) was in neither, and decoded to its end after the stop."""
    from trickster.serve import engine as engine_module

    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, hidden_dim=32, num_layers=1, num_heads=2, num_kv_heads=2, mlp_dim=64,
                      max_seq_len=64)  # fmt: skip
    model = Transformer(cfg).eval()
    engine = Engine(capacity=2)
    prefill = engine_module.Batch._prefill
    stopping = RuntimeError("the server is stopping")

    def stopped_during_prefill(batch, seq):
        engine.stop(stopping)  # from the server's thread, in the gap
        prefill(batch, seq)

    monkeypatch.setattr(engine_module.Batch, "_prefill", stopped_during_prefill)
    events, done = [], threading.Event()

    def emit(event):
        events.append(event)
        if not isinstance(event, Token):
            done.set()

    try:
        engine.submit(model, 60, Sequence([1, 2, 3], Sampling(max_tokens=40, temperature=0.0), emit))
        assert done.wait(60)
    finally:
        engine.close()
    assert isinstance(events[-1], engine_module.Failed) and events[-1].error is stopping, events[-1:]
    # the prompt's token and the one the same step decodes, then the failure (not 40 tokens)
    assert len(events) <= 3, events
