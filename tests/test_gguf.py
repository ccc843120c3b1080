"""GGUF export, read back with the `gguf` package's reader.

llama.cpp itself is not installed here, so the check is a small reference forward pass written the
way llama.cpp computes a Llama (rotary on interleaved pairs, tensors by their GGUF names) over the
tensors read back from the file; its logits must equal ours.
"""

from __future__ import annotations

import math

try:
    import resource
except ImportError:  # Windows
    resource = None

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from trickster import cli
from trickster.config import config_from_dict
from trickster.data.new_tokenizer import build_tokenizer
from trickster.data.tokenizers import ByteTokenizer, CharTokenizer, HFTokenizer
from trickster.errors import UserError
from trickster.export.gguf import gguf_vocabulary
from trickster.model.transformer import Transformer
from trickster.model.vocab import padded_vocab
from trickster.train import checkpoint as ckpt
from trickster.train import checkpoint_load

from . import children
from .conftest import EXCERPT
from .test_hf import TEXT, VARIED, random_checkpoint
from .test_tokenizers import gpt2_or_skip


def read_gguf(path, types=None):
    """The file's fields and its tensors as float32; `types`, a dict, gets each tensor's GGML type."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items()}
    tensors = {t.name: torch.from_numpy(np.array(t.data, dtype=np.float32)) for t in reader.tensors}
    if types is not None:
        types.update({t.name: int(t.tensor_type) for t in reader.tensors})
    return fields, tensors


def check_shapes(fields, t):
    """What llama.cpp's loader checks before it computes anything: every tensor has the shape the
    hyperparameters give it (rows, columns as torch lists them)."""
    embd, heads, kv_heads = (
        fields["llama.embedding_length"],
        fields["llama.attention.head_count"],
        fields["llama.attention.head_count_kv"],
    )
    ff, vocab, head_dim = fields["llama.feed_forward_length"], fields["llama.vocab_size"], embd // heads
    assert t["token_embd.weight"].shape == (vocab, embd)
    for i in range(fields["llama.block_count"]):
        b = f"blk.{i}."
        assert t[b + "attn_q.weight"].shape == (heads * head_dim, embd)
        assert t[b + "attn_k.weight"].shape == t[b + "attn_v.weight"].shape == (kv_heads * head_dim, embd)
        assert t[b + "attn_output.weight"].shape == (embd, heads * head_dim)
        assert t[b + "ffn_gate.weight"].shape == t[b + "ffn_up.weight"].shape == (ff, embd)
        assert t[b + "ffn_down.weight"].shape == (embd, ff)
        assert t[b + "attn_norm.weight"].shape == t[b + "ffn_norm.weight"].shape == (embd,)


def interleaved_rope(x, theta, n_rot):
    """x (T, heads, head_dim); rotate the pairs (0, 1), (2, 3), ... of the first n_rot dimensions
    (llama.rope.dimension_count) as llama.cpp's Llama does; the rest pass unrotated."""
    if n_rot < x.shape[-1]:
        return torch.cat([interleaved_rope(x[..., :n_rot], theta, n_rot), x[..., n_rot:]], dim=-1)
    T, _, D = x.shape
    freqs = theta ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)  # (D/2,)
    angles = torch.arange(T, dtype=torch.float32)[:, None] * freqs  # (T, D/2)
    cos, sin = angles.cos()[:, None, :], angles.sin()[:, None, :]  # (T, 1, D/2)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def reference_logits(fields, t, ids):
    """A Llama forward pass over GGUF tensors, in llama.cpp's conventions."""
    layers, heads = fields["llama.block_count"], fields["llama.attention.head_count"]
    kv_heads, eps = fields["llama.attention.head_count_kv"], fields["llama.attention.layer_norm_rms_epsilon"]
    theta, n_rot = fields["llama.rope.freq_base"], fields["llama.rope.dimension_count"]
    check_shapes(fields, t)

    def norm(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w

    x = t["token_embd.weight"][ids]  # (T, C)
    T = len(ids)
    for i in range(layers):
        b = f"blk.{i}."
        h = norm(x, t[b + "attn_norm.weight"])
        q = (h @ t[b + "attn_q.weight"].T).view(T, heads, -1)
        k = (h @ t[b + "attn_k.weight"].T).view(T, kv_heads, -1)
        v = (h @ t[b + "attn_v.weight"].T).view(T, kv_heads, -1)
        q, k = interleaved_rope(q, theta, n_rot), interleaved_rope(k, theta, n_rot)
        k, v = k.repeat_interleave(heads // kv_heads, 1), v.repeat_interleave(heads // kv_heads, 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(q.shape[-1])
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        attended = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(T, -1)
        x = x + attended @ t[b + "attn_output.weight"].T
        h = norm(x, t[b + "ffn_norm.weight"])
        x = (
            x
            + (F.silu(h @ t[b + "ffn_gate.weight"].T) * (h @ t[b + "ffn_up.weight"].T))
            @ t[b + "ffn_down.weight"].T
        )
    out = t.get("output.weight", t["token_embd.weight"])  # tied: llama.cpp reuses the embedding
    return norm(x, t["output_norm.weight"]) @ out.T


@pytest.mark.parametrize(
    ("tokenizer", "model"),
    [
        (CharTokenizer.from_texts([TEXT]), {}),
        (ByteTokenizer(with_eot=True), {"vocab_size": 300, "num_kv_heads": 2, "tie_embeddings": False}),
    ],
    ids=["char-tied", "byte-gqa-untied-padded"],
)
def test_gguf_export_reads_back_and_computes_our_logits(tmp_path, tokenizer, model):
    model = {"vocab_size": tokenizer.vocab_size, "rope_theta": 300.0, **model}
    path = random_checkpoint(tmp_path / "ckpt", tokenizer, **model)
    out = tmp_path / "model.gguf"
    assert cli.main(["export", str(path), "--format", "gguf", "--out", str(out)]) == 0
    fields, tensors = read_gguf(out)
    loaded = checkpoint_load.load_checkpoint(path)
    m = loaded.cfg.model
    assert fields["general.architecture"] == "llama" and fields["tokenizer.ggml.model"] == "llama"
    assert fields["llama.block_count"] == m.num_layers and fields["llama.embedding_length"] == m.hidden_dim
    assert fields["llama.attention.head_count_kv"] == (m.num_kv_heads or m.num_heads)
    assert fields["llama.context_length"] == m.max_seq_len and fields["llama.rope.freq_base"] == 300.0
    assert ("output.weight" in tensors) == (not m.tie_embeddings)

    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == m.vocab_size
    if tokenizer.kind == "char":
        assert tokens == [c if c != " " else "\u2581" for c in tokenizer.chars]
        assert "tokenizer.ggml.eos_token_id" not in fields
    else:
        assert tokens[0x41] == "<0x41>" and types[0x41] == 6
        # the space is a normal token "▁" (llama.cpp reads a byte token's value from its <0xNN> text)
        assert tokens[0x20] == "\u2581" and types[0x20] == 1
        assert (
            tokens[256] == "<|endoftext|>"
            and types[256] == 3
            and fields["tokenizer.ggml.eos_token_id"] == 256
        )
        assert set(types[257:]) == {5}  # unused rows
    assert fields["tokenizer.ggml.add_bos_token"] is False

    ids = tokenizer.encode(TEXT)
    with torch.no_grad():
        ours = loaded.model(torch.tensor([ids]))[0][0]
    torch.testing.assert_close(
        reference_logits(fields, tensors, torch.tensor(ids)), ours, rtol=1e-4, atol=1e-4
    )


def byte_level_encoder(tokens, merges):
    """A byte-level BPE as llama.cpp's "gpt2" tokenizer with the "gpt-2" pre-tokenizer runs it,
    from a file's token texts and merges: GPT-2's split of the text, each byte of a piece as its
    stand-in character (a printable Latin-1 character other than the space is itself; the other 68
    bytes are chr(256), chr(257), ... in byte order), then the adjacent pair of lowest merge rank
    joined (the leftmost of equals) until no pair is a merge."""
    regex = pytest.importorskip("regex")
    split = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    others = iter(range(256, 512))
    stand_in = [chr(b) if chr(b).isprintable() and b != 0x20 else chr(next(others)) for b in range(256)]
    ids = {text: token for token, text in enumerate(tokens)}
    ranks = {tuple(merge.split(" ")): rank for rank, merge in enumerate(merges)}

    def encode(text):
        out = []
        for piece in split.findall(text):
            parts = [stand_in[b] for b in piece.encode("utf-8")]
            while len(parts) > 1:
                pairs = zip(parts, parts[1:], strict=False)
                rank, at = min((ranks.get(pair, math.inf), i) for i, pair in enumerate(pairs))
                if rank == math.inf:
                    break
                parts[at : at + 2] = [parts[at] + parts[at + 1]]
            out += [ids[part] for part in parts]
        return out

    return encode


def trained_bpe():
    lines = [EXCERPT.read_text()[:4000], "naïve café, déjà vu 🎭 日本語", "It's 3.14; they'll go.  \n\n"]
    return build_tokenizer("bpe", iter(lines), with_eot=True, vocab_size=400)


@pytest.mark.parametrize("kind", ["bpe", "gpt2"])
def test_a_byte_level_bpe_goes_to_gguf_as_llama_cpps_gpt2_tokenizer(tmp_path, kind):
    """bpe and gpt2 are written as llama.cpp's byte-level BPE: a BPE written here from the file's
    tokens and merges alone gives our ids on varied text, and the reference forward pass our logits."""
    tokenizer = gpt2_or_skip() if kind == "gpt2" else trained_bpe()
    rows = padded_vocab(tokenizer.vocab_size)
    path = random_checkpoint(tmp_path / "ckpt", tokenizer, vocab_size=rows, num_kv_heads=2, max_seq_len=512)
    out = tmp_path / "model.gguf"
    assert cli.main(["export", str(path), "--format", "gguf", "--out", str(out)]) == 0
    fields, tensors = read_gguf(out)
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "gpt-2"
    tokens, types, merges = (fields[f"tokenizer.ggml.{key}"] for key in ("tokens", "token_type", "merges"))
    assert len(tokens) == len(types) == rows and len(set(tokens)) == rows
    eot = tokenizer.eot_id
    assert tokens[eot] == "<|endoftext|>" and fields["tokenizer.ggml.eos_token_id"] == eot
    assert fields["tokenizer.ggml.bos_token_id"] == eot and fields["tokenizer.ggml.add_bos_token"] is False
    specials = {eot} if kind == "gpt2" else {eot, tokenizer.pad_id}
    assert {i for i, t in enumerate(types) if t == 3} == specials  # control
    assert set(types[tokenizer.vocab_size :]) == {5}  # unused rows
    assert types.count(1) == tokenizer.vocab_size - len(specials)  # the rest normal
    if kind == "gpt2":
        assert len(merges) == 50000 and merges[:2] == ["Ġ t", "Ġ a"]  # GPT-2's merges.txt begins so
        assert tokens[15496] == "Hello" and tokens[995] == "Ġworld"
    else:
        assert fields["tokenizer.ggml.padding_token_id"] == tokenizer.pad_id == 1

    encode = byte_level_encoder(tokens, merges)
    for text in [VARIED, *VARIED.splitlines(keepends=True), " ", "  x", "<|endoftext|>"]:
        assert encode(text) == tokenizer.encode(text), text
    ids = tokenizer.encode(VARIED)
    loaded = checkpoint_load.load_checkpoint(path)
    with torch.no_grad():
        ours = loaded.model(torch.tensor([ids]))[0][0]
    torch.testing.assert_close(
        reference_logits(fields, tensors, torch.tensor(ids)), ours, rtol=1e-4, atol=1e-4
    )


def test_an_imported_or_altered_tokenizer_is_not_written_to_gguf():
    """An imported Hugging Face tokenizer (any model, any pre-tokenizer) is left to llama.cpp's own
    converter; a bpe whose tokenizer.json no longer splits as GPT-2 is refused too."""
    bpe = trained_bpe()
    with pytest.raises(UserError, match="convert_hf_to_gguf.py"):
        gguf_vocabulary(HFTokenizer(bpe.tokenizer_json), 448)
    altered = type(bpe)({**bpe.tokenizer_json, "pre_tokenizer": {"type": "Whitespace"}})
    with pytest.raises(UserError, match="is not GPT-2's byte-level BPE"):
        gguf_vocabulary(altered, 448)


@pytest.mark.parametrize(
    ("part", "edit"),
    [
        ("pre_tokenizer", {"add_prefix_space": True}),
        ("model", {"end_of_word_suffix": "</w>"}),
        ("normalizer", {"type": "Lowercase"}),
    ],
)
def test_a_bpe_edited_to_split_text_otherwise_is_not_written_as_gpt2s(part, edit):
    """Each edit makes the tokenizer read text into other ids than GPT-2's byte-level BPE over the
    same vocabulary and merges would, which is what llama.cpp would read from the file."""
    bpe = trained_bpe()
    spec = bpe.tokenizer_json
    altered = type(bpe)({**spec, part: edit if part == "normalizer" else {**spec[part], **edit}})
    text = "One more: The Castle"
    assert altered.encode(text) != bpe.encode(text)
    with pytest.raises(UserError, match="is not GPT-2's byte-level BPE"):
        gguf_vocabulary(altered, 448)


def test_a_float16_gguf_keeps_its_norms_in_float32_and_computes_our_logits(tmp_path):
    """As llama.cpp's own converter writes it: matrices float16, the 1-D norm weights float32, and
    general.file_type saying 'mostly F16' (1)."""
    import gguf

    tokenizer = ByteTokenizer(with_eot=True)
    path = random_checkpoint(
        tmp_path / "ckpt", tokenizer, vocab_size=260, num_kv_heads=2, tie_embeddings=False
    )
    out = tmp_path / "model.gguf"
    assert cli.main(["export", str(path), "--format", "gguf", "--out", str(out), "--dtype", "float16"]) == 0
    types = {}
    fields, tensors = read_gguf(out, types)
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_F16)
    f32, f16 = int(gguf.GGMLQuantizationType.F32), int(gguf.GGMLQuantizationType.F16)
    assert types == {name: f32 if name.endswith("norm.weight") else f16 for name in tensors}
    ids = tokenizer.encode(TEXT)
    with torch.no_grad():
        ours = checkpoint_load.load_checkpoint(path).model(torch.tensor([ids]))[0][0]
    torch.testing.assert_close(
        reference_logits(fields, tensors, torch.tensor(ids)), ours, rtol=0.02, atol=0.02
    )


def test_gguf_without_end_of_text_ends_on_an_unused_row(tmp_path):
    """llama.cpp takes id 2 as the end token unless the file names one: a char model without
    end-of-text names its first padding row instead, so no character stops generation."""
    tokenizer = CharTokenizer.from_texts([TEXT])
    path = random_checkpoint(tmp_path / "ckpt", tokenizer, vocab_size=tokenizer.vocab_size + 3)
    out = tmp_path / "model.gguf"
    assert cli.main(["export", str(path), "--format", "gguf", "--out", str(out)]) == 0
    fields, _ = read_gguf(out)
    end = fields["tokenizer.ggml.eos_token_id"]
    assert end == tokenizer.vocab_size
    types = fields["tokenizer.ggml.token_type"]
    assert types[end] == 3 and types[end + 1 :] == [5, 5]  # control, then unused


def char_checkpoint(path):
    tokenizer = CharTokenizer.from_texts([TEXT])
    return random_checkpoint(path, tokenizer, vocab_size=tokenizer.vocab_size)


def test_two_exports_to_one_file_at_once_never_mix(tmp_path):
    """The first export (float32) stops before its tensors while a second one to the same file
    (float16) runs to the end: each writes its own staging file, so the file is the second's,
    whole; the first then finds the name taken and leaves that file as it is, with one line."""
    path = char_checkpoint(tmp_path / "ckpt")
    out, hold = tmp_path / "out" / "m.gguf", tmp_path / "hold"
    argv = ["export", str(path), "--format", "gguf", "--out", str(out)]
    with children.held("hold-before-gguf-tensors", 1, argv, hold) as first:
        assert cli.main([*argv, "--dtype", "float16"]) == 0
        written = out.read_bytes()
    assert first.wait(120) == 2
    assert out.read_bytes() == written
    assert "written by another process while this export ran" in first.output(5)[1]
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.gguf"]
    reference = tmp_path / "reference" / "m.gguf"
    assert cli.main([*argv[:-1], str(reference), "--dtype", "float16"]) == 0
    assert reference.read_bytes() == written


def test_an_export_deletes_what_killed_exports_left_never_a_running_ones(tmp_path, dead_pid, live_pid):
    path = char_checkpoint(tmp_path / "ckpt")
    killed, running = tmp_path / f".m.gguf.tmp-{dead_pid}", tmp_path / f".m.gguf.tmp-{live_pid}"
    for staging in (killed, running):
        staging.write_bytes(b"GGUF, half")
    assert cli.main(["export", str(path), "--format", "gguf", "--out", str(tmp_path / "m.gguf")]) == 0
    assert not killed.exists() and running.read_bytes() == b"GGUF, half"
    assert read_gguf(tmp_path / "m.gguf")[0]["general.architecture"] == "llama"


def test_an_out_that_is_a_link_to_nothing_already_exists(tmp_path, capsys):
    """A link whose file is gone is a name taken: refused before anything is read, as an existing
    file is (it was refused only at the end, as 'written by another process while this export ran')."""
    path = char_checkpoint(tmp_path / "ckpt")
    out = tmp_path / "m.gguf"
    out.symlink_to(tmp_path / "gone.gguf")
    assert cli.main(["export", str(path), "--format", "gguf", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {out} already exists; choose a new file with --out (nothing was changed)\n"
    assert out.is_symlink() and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "m.gguf"]


def test_an_out_that_is_a_folder_gets_the_runs_file_in_it(tmp_path, capsys):
    """`--out export/` (a folder meant, made if missing) or an existing folder: NAME.gguf in it, NAME
    the run's and its checkpoint's (one file named `export`, or a refusal, before)."""
    path = char_checkpoint(tmp_path / "runs" / "tiny" / "checkpoints" / "final")
    folder = tmp_path / "export"
    assert cli.main(["export", str(path), "--format", "gguf", "--out", f"{folder}/"]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["tiny-final.gguf"]
    assert read_gguf(folder / "tiny-final.gguf")[0]["general.architecture"] == "llama"
    assert f"wrote {folder / 'tiny-final.gguf'} " in capsys.readouterr().out
    other = char_checkpoint(tmp_path / "other")
    assert cli.main(["export", str(other), "--format", "gguf", "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["other.gguf", "tiny-final.gguf"]


def test_an_out_named_gguf_is_a_gguf_file_without_format_and_refused_with_format_hf(tmp_path, capsys):
    """`--format` left out took hf: `--out model.gguf` wrote a Hugging Face folder of that name,
    which llama.cpp cannot read. An --out ending .gguf now chooses GGUF; with --format hf, which
    writes a folder, it is refused (exit 2, nothing written)."""
    path = char_checkpoint(tmp_path / "ck")
    assert cli.main(["export", str(path), "--out", str(tmp_path / "model.gguf")]) == 0
    assert (tmp_path / "model.gguf").is_file()
    assert read_gguf(tmp_path / "model.gguf")[0]["general.architecture"] == "llama"
    capsys.readouterr()
    assert cli.main(["export", str(path), "--format", "hf", "--out", str(tmp_path / "other.GGUF")]) == 2
    assert "--format hf writes a folder; pass --format gguf" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck", "model.gguf"]
    assert cli.main(["export", str(path), "--out", str(tmp_path / "hf")]) == 0  # else still hf
    assert (tmp_path / "hf" / "config.json").is_file()


def test_the_llama_cpp_line_continues_the_models_own_sample_prompt(tmp_path, capsys):
    """A fine-tune on records samples a prompt of its records: the line printed after the export
    continues that one (its line break as bash's $'...'), with the completion tool of llama.cpp."""
    tokenizer = CharTokenizer.from_texts([TEXT, "Who?\nA:"])  # records of that shape were its text
    shape = dict(hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_seq_len=96)
    cfg = config_from_dict(
        {
            "model_config": {**shape, "vocab_size": tokenizer.vocab_size},
            "training_config": {"sample_prompt": "Who?\nA:"},
        }
    )
    path = ckpt.save_checkpoint(tmp_path / "ck", Transformer(cfg.model), cfg, tokenizer, {"step": 0})
    out = tmp_path / "m.gguf"
    assert cli.main(["export", str(path), "--format", "gguf", "--out", str(out)]) == 0
    assert f"llama-completion -m {out} -p $'Who?\\nA:' -n 100" in capsys.readouterr().out


@pytest.mark.skipif(resource is None, reason="needs RLIMIT_FSIZE")
def test_a_refused_write_says_why_and_leaves_nothing(tmp_path, capsys):
    """A real refusal part way through the tensors: a file size limit (EFBIG; Python ignores
    SIGXFSZ), which reaches the writer as a full disk does, a short write. numpy's tofile dropped
    its cause ("16384 requested and 14568 written"); the line now says it, with its fix."""
    path = char_checkpoint(tmp_path / "ck")
    out = tmp_path / "m.gguf"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 10, hard))
    try:
        assert cli.main(["export", str(path), "--format", "gguf", "--out", str(out)]) == 2
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert capsys.readouterr().err == (
        f"error: could not write {out} (File too large); lift the file size limit (ulimit -f), "
        "or choose another --out\n"
    )
    assert list(tmp_path.iterdir()) == [tmp_path / "ck"]


def test_the_llama_cpp_line_leaves_out_a_sample_prompt_the_vocabulary_cannot_encode(tmp_path, capsys):
    """A run trained before its sample prompt was fitted to its data kept tiny's ROMEO: in a char
    vocabulary without 'R' or ':' in its config.yaml, and the line printed after the export said
    `-p ROMEO:`, which llama.cpp aborts on (a character outside a char vocabulary). It gives no
    prompt, as `trickster generate` without --prompt, and the run's own prompt where it encodes."""
    tokenizer = CharTokenizer.from_texts(["once upon a time\n"])
    shape = dict(hidden_dim=32, num_layers=2, num_heads=4, mlp_dim=64, max_seq_len=96)
    for prompt, flag in [("ROMEO:", ""), ("once", " -p once")]:
        cfg = config_from_dict(
            {
                "model_config": {**shape, "vocab_size": tokenizer.vocab_size},
                "training_config": {"sample_prompt": prompt},
            }
        )
        path = ckpt.save_checkpoint(tmp_path / prompt, Transformer(cfg.model), cfg, tokenizer, {"step": 0})
        out = tmp_path / f"{prompt}.gguf"
        assert cli.main(["export", str(path), "--format", "gguf", "--out", str(out)]) == 0
        assert capsys.readouterr().out.endswith(f"llama-completion -m {out}{flag} -n 100\n")
