"""Export to GGUF, the single-file format of llama.cpp, through the `gguf` package.

llama.cpp's Llama applies rotary embeddings to interleaved pairs (0, 1), (2, 3), ... of each head,
as Meta's original code did; ours (like transformers) rotates the two halves (i, i + head_dim/2).
So, unlike the Hugging Face export, wq and wk are permuted: within each head, row i + h*head_dim/2
moves to row 2i + h (`permute_for_interleaved`, the same permutation as llama.cpp's
convert_hf_to_gguf.py). Every other tensor is renamed only:

    tok_embeddings.weight            token_embd.weight
    layers.{}.attention_norm.weight  blk.{}.attn_norm.weight
    layers.{}.attention.wq.weight    blk.{}.attn_q.weight        (permuted; wk -> attn_k likewise)
    layers.{}.attention.wv.weight    blk.{}.attn_v.weight
    layers.{}.attention.wo.weight    blk.{}.attn_output.weight
    layers.{}.ffn_norm.weight        blk.{}.ffn_norm.weight
    layers.{}.feed_forward.w1.weight blk.{}.ffn_gate.weight      (w3 ffn_up, w2 ffn_down)
    norm.weight                      output_norm.weight
    output.weight                    output.weight (absent when tied: llama.cpp then reuses token_embd)

Char and byte tokenizers go in as a SentencePiece-style ("llama") vocabulary, which llama.cpp
matches character by character: a char tokenizer lists its characters (a space written "▁", as
SentencePiece does), a byte tokenizer lists the 256 byte tokens <0x00>..<0xFF> (the space byte as
"▁"). bpe and gpt2 go in as llama.cpp's byte-level BPE ("gpt2"): GPT-2's byte alphabet, the merges
by rank (`byte_level`) and GPT-2's split of the text ("gpt-2", the pre-tokenizer of both).
Imported Hugging Face tokenizers are not converted: export those with --format hf and use
llama.cpp's own convert_hf_to_gguf.py.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trickster.atomic import place_file, remove_leftovers
from trickster.config import ModelConfig
from trickster.data.tokenizers import EOT_TEXT, Tokenizer
from trickster.errors import UserError, disk_errors, write_error, write_fix
from trickster.export import byte_level
from trickster.export.chat_template import read_checked
from trickster.export.hf import rename
from trickster.out_path import names_a_folder, refuse_path_through_a_file
from trickster.train import checkpoint_load
from trickster.train.weights import weights_to_save

TO_GGUF = {
    "tok_embeddings.weight": "token_embd.weight",
    "layers.{}.attention_norm.weight": "blk.{}.attn_norm.weight",
    "layers.{}.attention.wq.weight": "blk.{}.attn_q.weight",
    "layers.{}.attention.wk.weight": "blk.{}.attn_k.weight",
    "layers.{}.attention.wv.weight": "blk.{}.attn_v.weight",
    "layers.{}.attention.wo.weight": "blk.{}.attn_output.weight",
    "layers.{}.ffn_norm.weight": "blk.{}.ffn_norm.weight",
    "layers.{}.feed_forward.w1.weight": "blk.{}.ffn_gate.weight",
    "layers.{}.feed_forward.w3.weight": "blk.{}.ffn_up.weight",
    "layers.{}.feed_forward.w2.weight": "blk.{}.ffn_down.weight",
    "norm.weight": "output_norm.weight",
    "output.weight": "output.weight",
}
SPACE = "\u2581"  # SentencePiece's visible space
WRITE_FIX = write_fix("choose another --out")  # why the file could not be written, and what to do


def permute_for_interleaved(weight: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Rows of a q or k projection from rotate-half order to interleaved-pair order, per head."""
    out_features = weight.shape[0]
    head_dim = out_features // n_heads
    return (
        weight.reshape(n_heads, 2, head_dim // 2, -1)  # (heads, half, i, in)
        .transpose(1, 2)  # (heads, i, half, in): row 2i + half
        .reshape(weight.shape)
    )


def end_token_id(tokenizer: Tokenizer, rows: int) -> int | None:
    """The id llama.cpp stops at: our end-of-text, else the first unused embedding row (which
    `trickster generate` never samples). Without either, llama.cpp falls back to id 2 (its
    SentencePiece default), one of the characters."""
    if tokenizer.eot_id is not None:
        return tokenizer.eot_id
    return tokenizer.vocab_size if tokenizer.vocab_size < rows else None


@dataclass(frozen=True)
class Vocabulary:
    """The tokenizer as llama.cpp reads it: one token text and type per embedding row."""

    model: str  # tokenizer.ggml.model: "llama" (SentencePiece-style) or "gpt2" (byte-level BPE)
    tokens: list[str]
    types: list[int]  # gguf.TokenType values
    merges: list[str]  # "a b", first applied first; "gpt2" only


def gguf_vocabulary(tokenizer: Tokenizer, rows: int) -> Vocabulary:
    """Token texts and llama.cpp token types for every embedding row (unused rows padded; the
    one that stands in as the end token is a control token)."""
    import gguf

    normal, control, unused, byte = (
        gguf.TokenType.NORMAL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.UNUSED,
        gguf.TokenType.BYTE,
    )
    model, merges = "llama", []
    if tokenizer.kind == "char":
        if SPACE in tokenizer.chars:
            raise UserError(
                f"this char vocabulary contains {SPACE!r}, which GGUF uses for the space; use --format hf"
            )
        tokens = [SPACE if c == " " else c for c in tokenizer.chars]
        types = [normal] * len(tokens)
    elif tokenizer.kind == "byte":
        tokens = [SPACE if b == 0x20 else f"<0x{b:02X}>" for b in range(256)]
        types = [normal if b == 0x20 else byte for b in range(256)]
    elif tokenizer.kind in ("bpe", "gpt2"):  # end-of-text (and bpe's pad) are in the vocabulary
        bpe = byte_level.byte_level_bpe(tokenizer)
        model, tokens, merges = "gpt2", list(bpe.tokens), [f"{a} {b}" for a, b in bpe.merges]
        types = [control if token in bpe.special_ids else normal for token in range(len(tokens))]
    else:
        what = "an imported Hugging Face" if tokenizer.kind == "hf" else f"a {tokenizer.kind!r}"
        raise UserError(
            f"GGUF export of {what} tokenizer is not supported; export with --format hf "
            "and convert that folder with llama.cpp's convert_hf_to_gguf.py"
        )
    if model == "llama" and tokenizer.eot_id is not None:
        tokens.append(EOT_TEXT)
        types.append(control)
    for row in range(len(tokens), rows):
        tokens.append(f"[PAD{row}]")
        types.append(control if row == end_token_id(tokenizer, rows) else unused)
    return Vocabulary(model, tokens, [int(t) for t in types], merges)


def export_gguf(
    target: str | Path, out: str | Path, dtype: str = "float32", chat_template: str | None = None
) -> tuple[Path, checkpoint_load.LoadedCheckpoint]:
    """Write one .gguf file: hyperparameters, vocabulary, (permuted, renamed) weights, and the
    template in `chat_template` (--chat-template's file) if given, else that of the records the model
    was fine-tuned on (record_layouts.py), if any. The file, and the checkpoint it holds (its
    sample prompt, and whether the tokenizer encodes it, for the line printed after; which one a
    run folder gave)."""
    try:
        import gguf
    except ImportError:
        raise UserError("GGUF export needs the `gguf` package: pip install 'nano-trickster[gguf]'") from None
    if dtype not in ("float32", "float16"):
        raise UserError(f"GGUF export writes float32 or float16 weights (got --dtype {dtype})")
    out = gguf_file(out, target)
    refuse_path_through_a_file(out)
    if out.exists() or out.is_symlink():  # a link to nothing too: the file would not replace it
        raise UserError(f"{out} already exists; choose a new file with --out (nothing was changed)")
    loaded = checkpoint_load.load_checkpoint(target)  # LoRA adapters arrive merged
    vocab = gguf_vocabulary(loaded.tokenizer, loaded.cfg.model.vocab_size)
    # else the layout of the records it was fine-tuned on, if any
    template = read_checked(chat_template, loaded.tokenizer) or loaded.tokenizer.chat_template

    with disk_errors(str(out), WRITE_FIX):  # a file where a folder of the path should be, a read-only one
        out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out.parent, of=out.name)  # what killed exports of this file left
    staging = out.parent / f".{out.name}.tmp-{os.getpid()}"  # a second export at once writes its own
    writer = gguf.GGUFWriter(staging, "llama")
    name = loaded.path.parent.parent.name if loaded.path.parent.name == "checkpoints" else out.stem
    _add_metadata(writer, name, loaded, vocab, dtype)
    if template:
        writer.add_chat_template(template)  # tokenizer.chat_template, which llama.cpp's chat reads
    _add_tensors(writer, loaded, dtype)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        placed = place_file(staging, out)  # the file appears whole or not at all
    except BaseException as err:
        with contextlib.suppress(OSError):  # a read-only folder refuses the clean-up too
            writer.close()
        with contextlib.suppress(OSError):
            staging.unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise write_error(str(out), err, WRITE_FIX) from None
        raise
    if not placed:  # another export (or anything else) wrote `out` meanwhile: it stays
        staging.unlink(missing_ok=True)
        raise UserError(
            f"{out} was written by another process while this export ran; choose a new file with --out "
            "(that file was kept)"
        )
    return out, loaded


def gguf_file(out: str | Path, target: str | Path) -> Path:
    """The file an export writes: `out`, or where `out` is a folder (one that exists, or any path
    ending in a slash, `--out export/`, made if missing) NAME.gguf in it: NAME the run's, or
    RUN-CHECKPOINT for one checkpoint of a run, or the checkpoint folder's own name."""
    path = Path(out)
    if not (names_a_folder(out) or path.is_dir()):
        return path
    source = Path(target).resolve()
    in_run = source.parent.name == "checkpoints"
    return (
        path / f"{source.parent.parent.name}-{source.name}.gguf" if in_run else path / f"{source.name}.gguf"
    )


def _add_metadata(
    writer, name: str, loaded: checkpoint_load.LoadedCheckpoint, vocab: Vocabulary, dtype: str
) -> None:
    """The hyperparameters llama.cpp's Llama reads, and the vocabulary with its end token."""
    import gguf

    m: ModelConfig = loaded.cfg.model
    writer.add_name(name)
    writer.add_context_length(m.max_seq_len)
    writer.add_embedding_length(m.hidden_dim)
    writer.add_block_count(m.num_layers)
    writer.add_feed_forward_length(m.mlp_dim)
    writer.add_head_count(m.num_heads)
    writer.add_head_count_kv(m.kv_heads)
    writer.add_rope_dimension_count(m.head_dim)
    writer.add_rope_freq_base(m.rope_theta)
    writer.add_layer_norm_rms_eps(m.norm_eps)
    writer.add_vocab_size(m.vocab_size)
    file_type = gguf.LlamaFileType.ALL_F32 if dtype == "float32" else gguf.LlamaFileType.MOSTLY_F16
    writer.add_file_type(int(file_type))
    writer.add_tokenizer_model(vocab.model)
    if vocab.model == "gpt2":
        writer.add_tokenizer_pre("gpt-2")  # GPT-2's split, as llama.cpp names it (both bpe and gpt2 use it)
        writer.add_token_merges(vocab.merges)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.model == "llama":
        writer.add_token_scores([0.0] * len(vocab.tokens))
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    end = end_token_id(loaded.tokenizer, m.vocab_size)
    if end is not None:
        writer.add_eos_token_id(end)
    if vocab.model == "gpt2":  # llama.cpp's default for a BPE would be id 11 (","); never added
        writer.add_bos_token_id(end)
    pad = getattr(loaded.tokenizer, "pad_id", None)  # bpe's <|pad|>
    if pad is not None:
        writer.add_pad_token_id(pad)


def _add_tensors(writer, loaded: checkpoint_load.LoadedCheckpoint, dtype: str) -> None:
    """Every weight under its GGUF name, wq and wk permuted to interleaved pairs (module docstring)."""
    m: ModelConfig = loaded.cfg.model
    for name, tensor in weights_to_save(loaded.model).items():
        if name.endswith(("wq.weight", "wk.weight")):
            heads = m.num_heads if name.endswith("wq.weight") else m.kv_heads
            tensor = permute_for_interleaved(tensor, heads)
        array = tensor.float().numpy()
        if dtype == "float16" and array.ndim > 1:  # norms stay float32, as llama.cpp expects
            array = array.astype(np.float16)
        writer.add_tensor(rename(name, TO_GGUF), np.ascontiguousarray(array).view(_Tensor))


class _Tensor(np.ndarray):
    """An array the GGUF writer writes through the file's own write: numpy's tofile, which it
    calls, reports a short write without its errno ("16384 requested and 14568 written"), so a
    full disk was told no cause and no fix; file.write raises the OSError the kernel gave."""

    def tofile(self, fid, *args, **kwargs) -> None:
        fid.write(memoryview(np.ascontiguousarray(self).view(np.uint8).reshape(-1)))
