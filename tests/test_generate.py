import json
import math

import pytest
import torch

from trickster import cli
from trickster.config import ModelConfig
from trickster.model.generate import generate, sample
from trickster.model.transformer import KVCache, Transformer


def small(**changes) -> ModelConfig:
    values = dict(vocab_size=40, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_seq_len=24)
    return ModelConfig(**{**values, **changes})


def lively(model: Transformer) -> Transformer:
    """The model with every matrix 20x larger. At its initial scale, greedy decoding repeats one
    token whatever the context (9, 9, 9, ...): two decoders that disagree about the context would
    still agree on every token."""
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(20)
    return model


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_cached_and_uncached_greedy_generation_agree(kv_heads):
    torch.manual_seed(0)
    model = lively(Transformer(small(num_kv_heads=kv_heads)))
    prompt = torch.randint(0, 40, (10,)).tolist()
    cached = list(generate(model, prompt, 30, temperature=0, use_cache=True))
    uncached = list(generate(model, prompt, 30, temperature=0, use_cache=False))
    assert cached == uncached
    assert len(cached) == 30  # runs past max_seq_len by sliding the window
    assert len(set(cached)) > 5  # the tokens depend on the context


def test_past_the_context_each_token_comes_from_the_last_max_seq_len_tokens():
    """Cached and uncached generation share the sliding window, so their agreement cannot show
    that it slides right: each greedy token is checked against a plain forward pass over exactly
    the last max_seq_len tokens (a window one token short predicts differently somewhere)."""
    torch.manual_seed(0)
    model = lively(Transformer(small())).eval()
    prompt = torch.randint(0, 40, (20,)).tolist()  # fills the 24-token window after 4 new tokens
    out = list(generate(model, prompt, 16, temperature=0))
    seq, short_differs = prompt + out, False
    with torch.no_grad():
        for i, token in enumerate(out):
            context = seq[: len(prompt) + i][-24:]
            assert token == int(model(torch.tensor([context]))[0][0, -1].argmax()), i
            short = int(model(torch.tensor([context[1:]]))[0][0, -1].argmax())
            short_differs |= len(context) == 24 and short != token
    assert short_differs  # else this model could not tell a wrong window from the right one


def test_a_prompt_longer_than_the_context_is_continued_from_its_last_max_seq_len_tokens():
    """docs/finetune-export.md says so: whatever comes before the prompt's last 24 tokens changes
    nothing, and its first token is the one a forward pass over exactly those 24 predicts (whose
    logits a window one token shorter does not give)."""
    torch.manual_seed(0)
    model = lively(Transformer(small())).eval()
    prompt = torch.randint(0, 40, (60,)).tolist()  # 2.5 windows of 24
    other_start = torch.randint(0, 40, (36,)).tolist() + prompt[-24:]
    out = list(generate(model, prompt, 8, temperature=0))
    assert out == list(generate(model, other_start, 8, temperature=0))
    with torch.no_grad():
        last = model(torch.tensor([prompt[-24:]]))[0][0, -1]
        shorter = model(torch.tensor([prompt[-23:]]))[0][0, -1]
    assert out[0] == int(last.argmax()) and not torch.allclose(last, shorter)


def test_generation_ends_before_the_stop_token():
    torch.manual_seed(0)
    model = lively(Transformer(small())).eval()
    prompt = torch.randint(0, 40, (10,)).tolist()
    free = list(generate(model, prompt, 20, temperature=0))
    stop = free[5]
    first = free.index(stop)
    assert list(generate(model, prompt, 20, temperature=0, stop_ids={stop})) == free[:first]


def test_cached_logits_match_a_full_forward_pass():
    torch.manual_seed(0)
    model = Transformer(small()).eval()
    idx = torch.randint(0, 40, (1, 12))
    with torch.no_grad():
        full, _ = model(idx)
        cache = KVCache.empty(model.cfg, 1, 24, "cpu", torch.float32)
        first, _ = model(idx[:, :5], cache=cache)  # prefill
        rest = [model(idx[:, i : i + 1], cache=cache)[0] for i in range(5, 9)]  # one at a time
        chunk, _ = model(idx[:, 9:], cache=cache)  # a chunk after cached positions
    torch.testing.assert_close(torch.cat([first, *rest, chunk], dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_rows_placed_at_their_own_positions_match_lone_rows(kv_heads):
    """KVCache.place (the server's batch): rows of different lengths decode one token each in
    one forward pass, and each row's logits are those of the same sequence run alone."""
    torch.manual_seed(0)
    model = Transformer(small(num_kv_heads=kv_heads)).eval()
    sequences = [torch.randint(0, 40, (n,)).tolist() for n in (3, 9, 6)]
    with torch.no_grad():
        alone = [model(torch.tensor([seq]))[0][0, -1] for seq in sequences]
        cache = KVCache.empty(model.cfg, 4, 24, "cpu", torch.float32)  # a spare row stays unused
        for row, seq in enumerate(sequences):  # each prompt but its last token, into its own row
            view = KVCache([k[row : row + 1] for k in cache.keys], [v[row : row + 1] for v in cache.values])
            model(torch.tensor([seq[:-1]]), cache=view)
        cache.place([len(seq) - 1 for seq in sequences])
        together, _ = model(torch.tensor([[seq[-1]] for seq in sequences]), cache=cache)
    torch.testing.assert_close(together[:, -1], torch.stack(alone), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one token each"):
        model(torch.tensor([[1, 2]] * 3), cache=cache)


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_fused_projections_give_the_same_logits_and_are_dropped_afterwards(kv_heads):
    torch.manual_seed(0)
    model = Transformer(small(num_kv_heads=kv_heads)).eval()
    idx = torch.randint(0, 40, (2, 12))
    with torch.no_grad():
        plain, _ = model(idx)
        with model.fused_projections():
            assert model.layers[0].attention.fused_qkv is not None
            fused, _ = model(idx)
            cache = KVCache.empty(model.cfg, 2, 24, "cpu", torch.float32)
            stepwise = [model(idx[:, i : i + 1], cache=cache)[0] for i in range(12)]
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat(stepwise, dim=1), plain, atol=1e-5, rtol=1e-5)
    assert all(b.attention.fused_qkv is None and b.feed_forward.fused_gate_up is None for b in model.layers)
    # training after generation uses the live weights, not a stale fused copy
    list(generate(model, [1, 2], 3, temperature=0))
    assert model.layers[0].attention.fused_qkv is None


def test_nothing_is_fused_when_a_projection_carries_a_lora_adapter():
    from trickster.config import LoraConfig
    from trickster.model.lora import apply_lora

    torch.manual_seed(0)
    model = Transformer(small()).eval()
    apply_lora(model, LoraConfig(rank=2, alpha=4, targets=["wq", "wv"]))
    with model.fused_projections():
        assert model.layers[0].attention.fused_qkv is None
        assert model.layers[0].feed_forward.fused_gate_up is None


def test_sampling_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    assert sample(logits, temperature=0).item() == 3
    top_k = {sample(logits, 1.0, top_k=2, generator=g).item() for _ in range(200)}
    assert top_k == {2, 3}
    # probabilities ~ [0.03, 0.09, 0.24, 0.64]: top_p=0.5 keeps only the first
    assert {sample(logits, 1.0, top_p=0.5, generator=g).item() for _ in range(100)} == {3}
    assert {sample(logits, 1.0, top_p=0.8, generator=g).item() for _ in range(300)} == {2, 3}
    assert len({sample(logits, 5.0, generator=g).item() for _ in range(300)}) == 4


def test_seeded_sampling_is_reproducible():
    torch.manual_seed(0)
    model = Transformer(small())
    a = list(generate(model, [1, 2], 20, temperature=1.0, seed=5))
    b = list(generate(model, [1, 2], 20, temperature=1.0, seed=5))
    assert a == b


def test_vocab_limit_never_samples_padding_rows():
    torch.manual_seed(0)
    model = Transformer(small())
    with torch.no_grad():
        model.output.weight[30:] += 5.0  # make the unused rows the most likely ones
    out = list(generate(model, [1], 50, temperature=1.0, seed=0, vocab_limit=30))
    assert max(out) < 30


@pytest.mark.parametrize("temperature", [1e-6, 1e-40, 1e-300])
def test_a_vanishing_temperature_is_greedy_not_a_crash(temperature):
    """logits / temperature would overflow float32 (1e-300 even becomes a divisor of 0): inf - inf
    gives NaN probabilities and multinomial refuses them."""
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.9], [10.0, -10.0, 0.0, 9.0]])
    assert sample(logits, temperature).tolist() == [1, 0]
    assert sample(logits, 1e-3, generator=torch.Generator().manual_seed(0)).tolist() == [1, 0]


@pytest.mark.parametrize("top_p", [1e-300, 1e-46])
def test_a_vanishing_top_p_keeps_the_likeliest_token(top_p):
    """A top_p that float32 rounds to 0 dropped every token, the first too: all-inf logits gave NaN
    probabilities, multinomial refused them, and serve answered 500."""
    logits = torch.tensor([[0.5, 3.0, -1.0, 2.9], [10.0, -10.0, 0.0, 9.0]])
    assert sample(logits, 1.0, top_p=top_p, generator=torch.Generator().manual_seed(0)).tolist() == [1, 0]


def test_sampled_frequencies_follow_the_tempered_and_filtered_distribution():
    """20,000 draws at once from logits 0, 1, 2, 3, against probabilities worked out by hand: at
    temperature 2, exp(l / 2) normalised; with top_k 3, exp(l) of the three kept; with top_k 2 or
    top_p 0.8 (the two likeliest reach 0.88, the likeliest alone 0.64), exp(l) of the two kept,
    normalised over them. Within 0.015 of each (a frequency's standard error is at most 0.0035)."""
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]]).expand(20_000, 4)

    def frequencies(**settings) -> list[float]:
        drawn = sample(logits, generator=torch.Generator().manual_seed(0), **settings)
        return (torch.bincount(drawn, minlength=4) / len(drawn)).tolist()

    def normalised(weights: list[float]) -> list[float]:
        return [w / sum(weights) for w in weights]

    tempered = normalised([math.exp(v / 2) for v in range(4)])  # 0.10, 0.17, 0.28, 0.46
    two_kept = normalised([0.0, 0.0, math.exp(2), math.exp(3)])  # 0, 0, 0.27, 0.73
    assert frequencies(temperature=2.0) == pytest.approx(tempered, abs=0.015)
    assert frequencies(temperature=1.0, top_k=2) == pytest.approx(two_kept, abs=0.015)
    assert frequencies(temperature=1.0, top_p=0.8) == pytest.approx(two_kept, abs=0.015)
    three_kept = normalised([0.0, math.exp(1), math.exp(2), math.exp(3)])  # top_k one below the vocabulary
    assert frequencies(temperature=1.0, top_k=3) == pytest.approx(three_kept, abs=0.015)


RUN_COMMANDS = {
    "generate": lambda target, out: ["generate", target, "--prompt", "ROMEO:", "--max-new-tokens", "5"],
    "export-hf": lambda target, out: ["export", target, "--out", str(out / "hf")],
    "export-gguf": lambda target, out: ["export", target, "--out", str(out / "m.gguf")],
}


@pytest.mark.parametrize("command", list(RUN_COMMANDS))
def test_a_run_folder_s_checkpoint_is_named_on_stderr_as_info_names_it(
    command, trained_run, tmp_path, capsys
):
    """Given a run folder, the command picks one of its checkpoints (best, else the newest) and says
    which on stderr, in `trickster info`'s words; stdout holds only its own output (generate's text,
    which users pipe). A checkpoint folder given is the one used: nothing is said."""
    if command == "export-gguf":
        pytest.importorskip("gguf")
    best = trained_run / "checkpoints" / "best"
    info = json.loads((best / "info.json").read_text())
    line = (
        f"checkpoint: {best} (step {info['step']}, val loss {info['val_loss']:.4f}, "
        f"best {info['best_val_loss']:.4f})"
    )
    capsys.readouterr()
    assert cli.main(["info", "--checkpoint", str(trained_run)]) == 0
    assert line in capsys.readouterr().out.splitlines()  # the same words
    assert cli.main(RUN_COMMANDS[command](str(trained_run), tmp_path / "run")) == 0
    out, err = capsys.readouterr()
    assert err == line + "\n" and "checkpoint:" not in out
    if command == "generate":
        assert out.startswith("ROMEO:") and len(out) > len("ROMEO:")
    assert cli.main(RUN_COMMANDS[command](str(best), tmp_path / "checkpoint")) == 0
    assert capsys.readouterr().err == ""


def test_generate_untrained_names_no_checkpoint_it_did_not_read(trained_run, capsys):
    """`generate RUN --untrained` wrote random weights' text, yet said on stderr `checkpoint:
    RUN/checkpoints/best (step N, val loss ...)` as if the text were that checkpoint's."""
    argv = ["generate", str(trained_run), "--max-new-tokens", "3", "--seed", "1", "--untrained"]
    capsys.readouterr()
    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    assert len(out) > 1 and err == ""
