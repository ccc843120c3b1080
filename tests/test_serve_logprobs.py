"""The token texts of /v1/completions logprobs, on small models served in-process: a byte of a
character is named by its bytes ("bytes:\\xc3", as OpenAI's legacy completions name it), every
alternative keeps a key of its own, and a SentencePiece piece keeps the space it adds in its
context, so the tokens join into the text and `text_offset` counts the text before each."""

from __future__ import annotations

import re

import pytest
import torch

from trickster import cli
from trickster.config import config_from_dict
from trickster.data.tokenizers import ByteTokenizer
from trickster.model.transformer import Transformer
from trickster.train import checkpoint as ckpt

from .live_server import live_server

httpx = pytest.importorskip("httpx")

SHAPE = {"hidden_dim": 64, "num_layers": 1, "num_heads": 2, "mlp_dim": 32, "max_seq_len": 64}
BYTE_NAME = re.compile(r"bytes:((?:\\x[0-9a-f]{2})+)")


def byte_model(target, follows: dict[int, list[int]] | None = None) -> None:
    """A byte model. With `follows`, its blocks add nothing and its head scores each byte's next
    bytes from its own embedding: follows[b][0] best, the others after it, everything else far
    below (so greedy decoding walks the chain)."""
    cfg = config_from_dict({"model_config": {**SHAPE, "vocab_size": 256, "tie_embeddings": False}})
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    with torch.no_grad():
        if follows:
            for layer in model.layers:
                layer.attention.wo.weight.zero_()
                layer.feed_forward.w2.weight.zero_()
            embedding = model.tok_embeddings.weight.normal_()
            head = model.output.weight.normal_(0.0, 0.01)
            for byte, nexts in follows.items():
                direction = embedding[byte] / embedding[byte].norm()
                for rank, following in enumerate(nexts):
                    head[following] += (2.0 - 0.2 * rank) * direction
    ckpt.save_checkpoint(target, model, cfg, ByteTokenizer(), {"step": 0})


def completion(url: str, **fields) -> dict:
    answer = httpx.post(url + "/v1/completions", json={"model": "byte", **fields}, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["choices"][0]


def test_a_byte_model_writing_e_acute_names_its_two_bytes(tmp_path):
    # "caf" then é (C3 A9) then "!": each step's runners-up are other bytes that are not whole text
    follows = {ord("f"): [0xC3, 0xE2, 0xC5], 0xC3: [0xA9, 0xA8, 0xA0], 0xA9: [ord("!"), 0x80, 0x81]}
    byte_model(tmp_path / "byte", follows)
    with live_server(tmp_path / "byte") as live:
        choice = completion(live.url, prompt="caf", max_tokens=3, temperature=0, logprobs=5)
    logprobs = choice["logprobs"]
    assert choice["text"] == "\u00e9!"
    assert logprobs["tokens"] == ["bytes:\\xc3", "bytes:\\xa9", "!"]
    assert logprobs["text_offset"] == [0, 0, 1]  # é is text only once its second byte has come
    assert list(logprobs["top_logprobs"][1])[:3] == ["bytes:\\xa9", "bytes:\\xa8", "bytes:\\xa0"]
    for token, logprob, top in zip(
        logprobs["tokens"], logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True
    ):
        assert len(top) == 5 and top[token] == pytest.approx(logprob)


def test_random_bytes_are_named_so_that_they_decode_back_to_the_text(tmp_path):
    """An untrained byte model writes bytes at random, most of them not whole characters: the
    tokens give back its bytes, every alternative has a key of its own, and a stream's chunks carry
    the same offsets into the whole text."""
    byte_model(tmp_path / "byte")
    fields = {"prompt": "caf\u00e9", "max_tokens": 40, "seed": 3, "logprobs": 6}
    with live_server(tmp_path / "byte") as live:
        choice = completion(live.url, **fields)
        stream = httpx.post(
            live.url + "/v1/completions", json={"model": "byte", **fields, "stream": True}, timeout=60
        ).text
    logprobs = choice["logprobs"]
    # the 6 likeliest, and the chosen byte where it is not among them
    assert all(len(top) in (6, 7) for top in logprobs["top_logprobs"])
    assert all(token in top for token, top in zip(logprobs["tokens"], logprobs["top_logprobs"], strict=True))
    written = b""
    for token in logprobs["tokens"]:
        named = BYTE_NAME.fullmatch(token)
        written += bytes.fromhex(named.group(1).replace("\\x", "")) if named else token.encode("utf-8")
    assert len(logprobs["tokens"]) == 40 and written.decode("utf-8", errors="replace") == choice["text"]
    assert sum(bool(BYTE_NAME.fullmatch(t)) for t in logprobs["tokens"]) > 5  # bytes were written
    offsets = []
    for event in stream.split("\n\n"):
        body = event.removeprefix("data: ")
        if body.startswith("{"):
            chunk = httpx.Response(200, content=body).json()["choices"][0]
            offsets += chunk["logprobs"]["text_offset"] if chunk["logprobs"] else []
    assert offsets == logprobs["text_offset"] and offsets[-1] <= len(choice["text"])


def test_a_stream_chunk_without_a_token_carries_no_logprobs(tmp_path):
    """The chunk that only ends a choice (finish_reason, no token) carried logprobs of four empty
    lists; OpenAI's client types it Optional, and OpenAI (its chat chunks without a token, the
    last among them) sends null there. Every token's chunk still has its own."""
    byte_model(tmp_path / "byte")
    fields = {"model": "byte", "prompt": "ab", "max_tokens": 5, "seed": 1, "logprobs": 2, "n": 2}
    with live_server(tmp_path / "byte") as live:
        stream = httpx.post(live.url + "/v1/completions", json={**fields, "stream": True}, timeout=60).text
    chunks = [
        httpx.Response(200, content=event.removeprefix("data: ")).json()["choices"][0]
        for event in stream.split("\n\n")
        if event.startswith("data: {")
    ]
    ends = [chunk for chunk in chunks if chunk["finish_reason"] is not None]
    assert [end["finish_reason"] for end in ends] == ["length", "length"]
    assert all(end["logprobs"] is None for end in ends), ends
    listed = [chunk["logprobs"] for chunk in chunks if chunk["logprobs"] is not None]
    assert len(listed) == 10 and all(len(logprobs["tokens"]) == 1 for logprobs in listed)


def test_an_imported_sentencepiece_model_joins_its_tokens_into_its_text(tmp_path):
    """Llama's "▁the" is " the" after a word: decoded alone it lost its space."""
    pytest.importorskip("transformers")
    from .test_hf import tiny_llama

    src, _, _ = tiny_llama(tmp_path)
    assert cli.main(["import", "hf", str(src), "--out", str(tmp_path / "run")]) == 0
    with live_server(tmp_path / "run") as live:
        fields = {"model": "final", "prompt": "Is it so? The", "max_tokens": 12, "seed": 0, "logprobs": 5}
        answer = httpx.post(live.url + "/v1/completions", json=fields, timeout=60)
    assert answer.status_code == 200, answer.text
    choice = answer.json()["choices"][0]
    tokens, logprobs = choice["logprobs"]["tokens"], choice["logprobs"]
    # a special token is named by its vocabulary entry, and adds no text (as decoding skips it)
    texts = ["" if token in {"<unk>", "<s>", "</s>"} else token for token in tokens]
    assert "".join(texts) == choice["text"]
    assert sum(token.startswith(" ") for token in tokens) > 2  # pieces that begin a word
    assert logprobs["text_offset"] == [len("".join(texts[:i])) for i in range(len(texts))]
    for token, logprob, top in zip(tokens, logprobs["token_logprobs"], logprobs["top_logprobs"], strict=True):
        assert top[token] == pytest.approx(logprob)  # the chosen piece, always among them
        assert len(top) == 5 or (len(top) == 6 and min(v for k, v in top.items() if k != token) >= logprob)


# ------------------------------------------------------------------ every tokenizer, one by one


def byte_fallback_llama():
    """A Llama 2-style tokenizer: SentencePiece's "▁" pieces, and the 256 byte tokens <0x00>..<0xFF>
    for what its pieces lack (é, ☃)."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers

    from trickster.data.tokenizers import HFTokenizer

    pieces = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *"\u2581theOncaf"]
    merges = [("\u2581", "t"), ("\u2581t", "h"), ("\u2581th", "e")]
    pieces += ["".join(pair) for pair in merges]
    model = models.BPE({p: i for i, p in enumerate(pieces)}, merges, unk_token="<unk>", byte_fallback=True)
    backend = Tokenizer(model)
    space = "\u2581"
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(space), normalizers.Replace(" ", space)])
    steps = [decoders.Replace(space, " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence([*steps, decoders.Strip(" ", 1, 0)])
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    return HFTokenizer(json.loads(backend.to_str()), {"eos_token": "</s>"})


def tokenizer_of(kind: str):
    from trickster.data.new_tokenizer import build_tokenizer

    from .test_tokenizers import LINES, gpt2_or_skip

    if kind == "gpt2":
        return gpt2_or_skip()
    if kind == "byte-fallback":
        pytest.importorskip("tokenizers")
        return byte_fallback_llama()
    return build_tokenizer(kind, LINES, with_eot=True, vocab_size=400 if kind == "bpe" else None)


@pytest.mark.parametrize("kind", ["byte", "bpe", "gpt2", "byte-fallback"])
def test_token_texts_give_back_the_text_and_name_each_token_apart(kind):
    """Each token's text after the ones before it: whole text, or bytes named as OpenAI names them;
    together they are the text's bytes. At one position, the texts of all ids are distinct."""
    from trickster.serve.token_text import TokenTexts

    tokenizer = tokenizer_of(kind)
    ids = tokenizer.encode("One the caf\u00e9 \u2603")
    texts = TokenTexts(tokenizer, ids[:1])
    written, named = b"", []
    for token in ids[1:]:
        text = texts.text(token)
        byte_name = BYTE_NAME.fullmatch(text)
        written += bytes.fromhex(byte_name.group(1).replace("\\x", "")) if byte_name else text.encode("utf-8")
        named += [text] if byte_name else []
        texts.advance(token)
    whole, first = tokenizer.decode(ids), tokenizer.decode(ids[:1])
    assert written == whole[len(first) :].encode("utf-8") and named  # é and ☃ are more than one token
    alternatives = texts.names(range(min(tokenizer.vocab_size, 2000)))
    assert len(set(alternatives)) == len(alternatives)


def test_an_alternative_whose_text_a_likelier_one_has_is_named_by_its_bytes():
    """Llama's piece "t" and its byte token <0x74> both add "t": the likelier keeps the text, the
    other is named by its byte as OpenAI names bytes, not by an id a client cannot read."""
    pytest.importorskip("tokenizers")
    from trickster.serve.token_text import TokenTexts

    tokenizer = byte_fallback_llama()
    piece, byte = tokenizer.backend.token_to_id("t"), tokenizer.backend.token_to_id("<0x74>")
    texts = TokenTexts(tokenizer, tokenizer.encode("the"))
    assert texts.names([piece, byte]) == ["t", "bytes:\\x74"]
    assert texts.names([byte, piece]) == ["t", "bytes:\\x74"]


@pytest.mark.parametrize("kind", ["byte", "byte-fallback"])
def test_an_end_of_text_token_is_named_by_its_own_text(kind):
    """End-of-text adds no text; it is named as the vocabulary writes it, so a client can see that
    the model chose to stop ("</s>", "<|endoftext|>"), not an empty string."""
    from trickster.serve.token_text import TokenTexts

    tokenizer = tokenizer_of(kind)
    expected = "</s>" if kind == "byte-fallback" else "<|endoftext|>"
    texts = TokenTexts(tokenizer, tokenizer.encode("the"))
    assert texts.text(tokenizer.eot_id) == expected
