import pytest
import torch
import torch.nn.functional as F

from trickster.config import ModelConfig, load_config
from trickster.model import transformer
from trickster.model.flops import flops_per_token, parameter_breakdown
from trickster.model.transformer import Transformer, apply_rotary, chunked_cross_entropy, rotary_tables
from trickster.presets import preset_names


def small(**changes) -> ModelConfig:
    values = dict(vocab_size=50, hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_seq_len=16)
    return ModelConfig(**{**values, **changes})


@pytest.mark.parametrize("name", ["tiny", "nano", "mini", "midi", "mega", "gpt2-small"])
def test_breakdown_matches_the_built_model(name):
    cfg = load_config(preset=name).model
    if cfg.vocab_size == "auto":
        cfg.vocab_size = 65
    with torch.device("meta"):  # mega is 1.1B parameters: count without allocating
        model = Transformer(cfg)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert parameter_breakdown(cfg).total == sum(unique.values())


def test_nano_is_about_5_2_million_not_11():
    total = parameter_breakdown(load_config(preset="nano").model).total
    assert total == 5_180_672


def test_mega_has_tinyllama_size():
    total = parameter_breakdown(load_config(preset="mega").model).total
    assert total == 1_100_048_384  # TinyLlama-1.1B's published parameter count


def test_every_preset_is_listed():
    assert set(preset_names()) == {"tiny", "nano", "mini", "midi", "mega", "gpt2-small"}


def test_tied_output_is_the_embedding_and_untied_is_not():
    tied = Transformer(small())
    assert tied.output.weight is tied.tok_embeddings.weight
    untied = Transformer(small(tie_embeddings=False))
    assert untied.output.weight is not untied.tok_embeddings.weight
    extra = parameter_breakdown(small(tie_embeddings=False)).total - parameter_breakdown(small()).total
    assert extra == 50 * 32


@pytest.mark.parametrize("kv_heads", [None, 2, 1])
def test_attention_is_causal(kv_heads):
    torch.manual_seed(0)
    model = Transformer(small(num_kv_heads=kv_heads)).eval()
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % 50
    with torch.no_grad():
        a, _ = model(idx)
        b, _ = model(changed)
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_untrained_loss_is_near_uniform():
    torch.manual_seed(0)
    model = Transformer(small())
    idx, targets = torch.randint(0, 50, (2, 4, 16))
    _, loss = model(idx, targets)
    assert abs(loss.item() - torch.log(torch.tensor(50.0)).item()) < 0.1


def test_rotary_is_a_rotation_that_depends_on_relative_position():
    cos, sin = rotary_tables(8, 32, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i, j):
        qi = apply_rotary(q, cos[i : i + 1], sin[i : i + 1])
        kj = apply_rotary(k, cos[j : j + 1], sin[j : j + 1])
        return (qi * kj).sum()

    torch.testing.assert_close(apply_rotary(q, cos[5:6], sin[5:6]).norm(), q.norm())
    torch.testing.assert_close(score(3, 1), score(12, 10))


@pytest.mark.parametrize("kv_heads", [None, 2])
def test_flops_per_token_matches_torchs_own_count_of_a_training_step(kv_heads):
    """torch.utils.flop_counter counts every matrix multiply of a forward and backward pass. Linear
    layers: 2 FLOPs per weight per token forward, 4 backward (gradients of input and weight), so
    6 x the matmul weights. Attention: QK^T and the weighted sum of V, 2 x 2 x T x hidden FLOPs per
    token and layer forward, twice that backward: 12 x layers x hidden x T. Both we and the counter
    take the full T x T scores (the causal half is computed and masked), so the tolerance is only
    float rounding. The CPU's fused attention kernel is invisible to the counter: the math kernel,
    plain matmuls, is counted instead."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    cfg = small(num_kv_heads=kv_heads)
    torch.manual_seed(0)
    model = Transformer(cfg)
    batch, seq_len = 2, cfg.max_seq_len
    x, y = torch.randint(0, cfg.vocab_size, (2, batch, seq_len))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x, y)[1].backward()
    counted = counter.get_flop_counts()["Global"]
    tokens = batch * seq_len
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    assert counted[torch.ops.aten.mm] / tokens == pytest.approx(6 * linear, rel=1e-9)
    attention = counted[torch.ops.aten.bmm] / tokens
    assert attention == pytest.approx(12 * cfg.num_layers * cfg.hidden_dim * seq_len, rel=1e-9)
    assert counter.get_total_flops() / tokens == pytest.approx(flops_per_token(cfg, seq_len), rel=1e-9)


def test_init_weights_scales_residual_projections():
    torch.manual_seed(0)
    model = Transformer(small(hidden_dim=256, num_heads=4, mlp_dim=512, num_layers=8))
    assert abs(model.layers[0].attention.wq.weight.std().item() - 0.02) < 0.002
    assert abs(model.layers[0].attention.wo.weight.std().item() - 0.02 / 4) < 0.001
    assert torch.all(model.norm.weight == 1)


def plain_loss(model, idx, targets):
    """The loss as it was computed before chunking: full float32 logits, then F.cross_entropy."""
    logits, _ = model(idx)
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)


@pytest.mark.parametrize("rows", [None, 5, 1])
@pytest.mark.parametrize("tied", [True, False])
def test_chunked_loss_and_gradients_equal_the_plain_ones(rows, tied, monkeypatch):
    """In float32 within rounding, skipped targets (-100) included, one chunk or many."""
    if rows is not None:  # 5 rows of 50 logits: chunks that do not divide the 2 x 16 tokens
        monkeypatch.setattr(transformer, "LOSS_CHUNK_ELEMENTS", rows * 50)
    torch.manual_seed(0)
    model = Transformer(small(tie_embeddings=tied))
    idx, targets = torch.randint(0, 50, (2, 2, 16))
    targets[0, :6] = -100  # a prompt: not scored
    targets[1, -1] = -100

    _, loss = model(idx, targets)
    loss.backward()
    chunked = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    reference = plain_loss(model, idx, targets)
    reference.backward()
    torch.testing.assert_close(loss, reference)
    for name, p in model.named_parameters():
        torch.testing.assert_close(chunked[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)
    with torch.no_grad():  # evaluation's path: no gradients computed
        torch.testing.assert_close(model(idx, targets)[1], reference)


def test_the_loss_keeps_no_tensor_of_tokens_x_vocabulary_for_the_backward_pass():
    torch.manual_seed(0)
    vocab, tokens = 512, 4 * 16  # more tokens than the width: the (vocab, width) gradient is smaller
    model = Transformer(small(vocab_size=vocab))
    idx, targets = torch.randint(0, vocab, (2, 4, 16))
    sizes = []

    def pack(tensor):
        sizes.append(tensor.numel())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, targets)
    assert sizes and max(sizes) < tokens * vocab  # the plain loss saves (tokens, vocab) log-softmax
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        plain_loss(model, idx, targets)
    assert max(sizes) >= tokens * vocab  # ... as this check of the check shows


def test_chunked_loss_under_bfloat16_autocast_tracks_float32():
    torch.manual_seed(0)
    h = torch.randn(40, 32, requires_grad=True)
    weight = (0.1 * torch.randn(300, 32)).requires_grad_()
    targets = torch.randint(0, 300, (40,))
    reference = chunked_cross_entropy(h, weight, targets)
    reference.backward()
    grads = h.grad.clone(), weight.grad.clone()
    h.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = chunked_cross_entropy(h, weight, targets, chunk_rows=7)
    loss.backward()
    assert loss.dtype == torch.float32 and weight.grad.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=1e-2, atol=0)
    for got, want in zip((h.grad, weight.grad), grads, strict=True):
        assert (got - want).abs().max() < 0.02 * want.abs().max()


def test_rotary_tables_at_the_largest_rope_theta_still_tell_positions_apart():
    """rope_theta's limit, 1e12, in float32 tables as wide as real heads (256): every frequency is
    positive and finite (no pair stands still), so position 1 is not position 0 for any pair;
    past float32's range (about 3.4e38) theta is infinite and every pair but the first stands still."""
    cos, sin = rotary_tables(256, 4096, 1e12)
    assert torch.isfinite(cos).all() and torch.isfinite(sin).all()
    assert (sin[1, 128:] > 0).all()
    _, beyond = rotary_tables(256, 2, 1e39)
    assert (beyond[1, 129:] == 0).all()


def test_init_weights_draws_each_matrix_at_its_documented_scale():
    """GPT-2's scheme with the figures written out for 8 layers: std 0.02 for the embedding and
    wq, wk, wv, w1, w3 (and an untied output); 0.02 / sqrt(2 x 8) = 0.005 for wo and w2, the two
    projections per block that add into the residual stream; mean 0; ones for every norm, the
    blocks' too. Each matrix holds at least 256 x 256 draws, so its sample std is within 0.3% of
    the true one (standard error 1 / sqrt(2n)): 1.5% tells 0.005 from 0.02 / sqrt(17)."""
    torch.manual_seed(0)
    cfg = small(vocab_size=512, hidden_dim=256, num_heads=4, mlp_dim=512, num_layers=8, tie_embeddings=False)
    model = Transformer(cfg)
    expected = {"tok_embeddings": 0.02, "output": 0.02, "wq": 0.02, "wk": 0.02, "wv": 0.02}
    expected |= {"w1": 0.02, "w3": 0.02, "wo": 0.005, "w2": 0.005}
    seen = set()
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(param == 1), name
            continue
        kind = name.split(".")[-2]
        seen.add(kind)
        assert param.std().item() == pytest.approx(expected[kind], rel=0.015), name
        assert abs(param.mean().item()) < 0.03 * expected[kind], name
    assert seen == set(expected)


def test_dropout_acts_in_training_only():
    """dropout 0.5 (on the attention weights and on each branch into the residual stream): in
    eval mode the logits are those of the same weights with dropout 0, call after call; in
    training mode two calls differ, and differ from them, and so do two calls of one attention."""
    torch.manual_seed(0)
    dropped = Transformer(small(dropout=0.5))
    plain = Transformer(small())
    plain.load_state_dict(dropped.state_dict())
    idx = torch.randint(0, 50, (2, 16))
    with torch.no_grad():
        reference = plain.eval()(idx)[0]
        dropped.eval()
        torch.testing.assert_close(dropped(idx)[0], reference, rtol=0, atol=0)
        torch.testing.assert_close(dropped(idx)[0], reference, rtol=0, atol=0)
        dropped.train()
        first, second = dropped(idx)[0], dropped(idx)[0]
        attention, x = dropped.layers[0].attention, torch.randn(2, 16, 32)
        weights = [attention(x, dropped.rope_cos[:16], dropped.rope_sin[:16]) for _ in range(2)]
    assert not torch.allclose(first, second) and not torch.allclose(first, reference)
    assert not torch.allclose(*weights)  # the attention weights themselves are dropped too
