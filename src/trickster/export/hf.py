"""Hugging Face Llama <-> trickster: a literal name map, and the export (the import: hf_import.py).

Our decoder is Llama with the rotate-half rotary layout that transformers uses, so converting the
weights is a rename, never a permutation (the idea of torchtitan's `state_dict_adapter`). `{}` is
the layer index:

    ours                                  Hugging Face LlamaForCausalLM
    tok_embeddings.weight                 model.embed_tokens.weight
    layers.{}.attention_norm.weight       model.layers.{}.input_layernorm.weight
    layers.{}.attention.wq.weight         model.layers.{}.self_attn.q_proj.weight   (and k, v, o)
    layers.{}.ffn_norm.weight             model.layers.{}.post_attention_layernorm.weight
    layers.{}.feed_forward.w1.weight      model.layers.{}.mlp.gate_proj.weight      (w3 up, w2 down)
    norm.weight                           model.norm.weight
    output.weight                         lm_head.weight (absent when the embedding is tied)

- `export_hf`: a run or checkpoint -> config.json, model.safetensors, generation_config.json and
  tokenizer files (tokenizer.json, tokenizer_config.json, special_tokens_map.json) that
  `transformers` and vLLM load. Char and byte tokenizers become a `tokenizers` BPE model without
  merges whose ids are exactly ours; gpt2 becomes GPT-2's vocabulary and merges, recovered from
  tiktoken's ranks (`byte_level`). LoRA adapters are already merged by `load_checkpoint`.
- `hf_import.import_hf`: a Llama folder (config.json, safetensors weights, tokenizer.json), local
  or a Hub repo (`hf_hub`) -> a run whose `checkpoints/final` generate, export and init_from accept.

Neither needs `transformers` itself: the files are plain JSON and safetensors, and only the
tokenizer conversion uses the `tokenizers` package (`pip install 'nano-trickster[hf]'`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from trickster.atomic import new_folder, restore_replaced
from trickster.config import ModelConfig
from trickster.data.hf_tokens import require_tokenizers, special_token_text
from trickster.data.tokenizers import EOT_TEXT, HFTokenizer, Tokenizer
from trickster.errors import UserError
from trickster.export import byte_level
from trickster.export.chat_template import read_checked
from trickster.out_path import refuse_path_through_a_file
from trickster.train import checkpoint_load
from trickster.train.tensor_files import save_tensors
from trickster.train.weights import weights_to_save

TO_HF = {
    "tok_embeddings.weight": "model.embed_tokens.weight",
    "layers.{}.attention_norm.weight": "model.layers.{}.input_layernorm.weight",
    "layers.{}.attention.wq.weight": "model.layers.{}.self_attn.q_proj.weight",
    "layers.{}.attention.wk.weight": "model.layers.{}.self_attn.k_proj.weight",
    "layers.{}.attention.wv.weight": "model.layers.{}.self_attn.v_proj.weight",
    "layers.{}.attention.wo.weight": "model.layers.{}.self_attn.o_proj.weight",
    "layers.{}.ffn_norm.weight": "model.layers.{}.post_attention_layernorm.weight",
    "layers.{}.feed_forward.w1.weight": "model.layers.{}.mlp.gate_proj.weight",
    "layers.{}.feed_forward.w3.weight": "model.layers.{}.mlp.up_proj.weight",
    "layers.{}.feed_forward.w2.weight": "model.layers.{}.mlp.down_proj.weight",
    "norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
FROM_HF = {hf: ours for ours, hf in TO_HF.items()}
# buffers some older Hugging Face checkpoints carry; recomputed from the config on both sides
HF_IGNORED = re.compile(r"\.rotary_emb\.inv_freq$")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def rename(name: str, table: dict[str, str]) -> str | None:
    """Translate one parameter name with TO_HF or FROM_HF; None if the table has no such name."""
    layer = re.search(r"\.(\d+)\.", name)
    if layer is None:
        return table.get(name)
    target = table.get(name.replace(layer.group(0), ".{}.", 1))
    return target.format(layer.group(1)) if target is not None else None


# --------------------------------------------------------------------------- export


def hf_config(m: ModelConfig, tokenizer: Tokenizer, dtype: str = "float32") -> dict:
    """config.json for LlamaForCausalLM. rope_theta is written both the transformers-4 way (top
    level, also read by vLLM) and the transformers-5 way (rope_parameters)."""
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": m.vocab_size,
        "hidden_size": m.hidden_dim,
        "intermediate_size": m.mlp_dim,
        "num_hidden_layers": m.num_layers,
        "num_attention_heads": m.num_heads,
        "num_key_value_heads": m.kv_heads,
        "head_dim": m.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": m.max_seq_len,
        "rms_norm_eps": m.norm_eps,
        "rope_theta": m.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_theta},
        "tie_word_embeddings": m.tie_embeddings,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.02,
        "use_cache": True,
        "bos_token_id": tokenizer.bos_id,
        "eos_token_id": eos_token_id(tokenizer),
        "pad_token_id": None,
        "torch_dtype": dtype,
    }


def generation_config(m: ModelConfig, tokenizer: Tokenizer) -> dict:
    """Special ids, and the embedding rows the tokenizer never produces (a 256-row model trained
    on 65 characters) suppressed, as `trickster generate` masks them."""
    config = {"bos_token_id": tokenizer.bos_id, "eos_token_id": eos_token_id(tokenizer)}
    if m.vocab_size > tokenizer.vocab_size:
        config["suppress_tokens"] = list(range(tokenizer.vocab_size, m.vocab_size))
    return config


def eos_token_id(tokenizer: Tokenizer) -> int | list[int] | None:
    """The end-of-text id, or, for a model that several ids end (an imported Llama 3.1), the list of
    them, end-of-text first (as import reads it back)."""
    others = sorted(tokenizer.stop_ids - {tokenizer.eot_id})
    if not others:
        return tokenizer.eot_id
    return [tokenizer.eot_id, *others] if tokenizer.eot_id is not None else others


def hf_tokenizer_files(tokenizer: Tokenizer, max_len: int) -> dict[str, dict]:
    """tokenizer.json, tokenizer_config.json and special_tokens_map.json for AutoTokenizer.

    char: a BPE model with one vocabulary entry per character and no merges, joined back by the
    Fuse decoder; byte: the ByteLevel step maps each byte to its GPT-2 stand-in character, whose
    vocabulary id is the byte value; gpt2: GPT-2's vocabulary and merges (`byte_level`). Each adds
    `<|endoftext|>` as a special token at our end-of-text id. As ours, char, byte, bpe and gpt2
    read a literal "<|endoftext|>" in the text as text, not as the special token
    (`split_special_tokens`); an imported tokenizer keeps its own rule. (Unlike ours, the char
    version drops an unknown character instead of failing.)
    """
    tokenizers = require_tokenizers()
    if isinstance(tokenizer, HFTokenizer):
        config = {**tokenizer.config, "model_max_length": tokenizer.config.get("model_max_length", max_len)}
        if tokenizer.kind == "bpe":  # BPETokenizer encodes special-token text as text
            config["split_special_tokens"] = True
        config.pop("added_tokens_decoder", None)  # tokenizer.json already lists them
        if config.get("tokenizer_class") == "TokenizersBackend":  # transformers 5's name for it
            config["tokenizer_class"] = "PreTrainedTokenizerFast"  # which transformers 4 loads too
        return {
            "tokenizer.json": tokenizer.tokenizer_json,
            "tokenizer_config.json": config,
            "special_tokens_map.json": _special_tokens(config),
        }
    if tokenizer.kind == "char":
        vocab = {c: i for i, c in enumerate(tokenizer.chars)}
        backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
        backend.decoder = tokenizers.decoders.Fuse()
    elif tokenizer.kind == "byte":
        vocab = {char: b for b, char in byte_level.bytes_to_unicode().items()}
        backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=[]))
        backend.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        backend.decoder = tokenizers.decoders.ByteLevel()
    elif tokenizer.kind == "gpt2":
        backend = byte_level.hf_backend(byte_level.byte_level_bpe(tokenizer))
    else:
        raise UserError(f"cannot export a {tokenizer.kind!r} tokenizer to Hugging Face")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,  # " ." must stay " ." for a character model
        "model_max_length": max_len,
        "add_bos_token": False,
        "add_eos_token": False,
        "split_special_tokens": True,  # "<|endoftext|>" typed in a prompt is text, as in ours
    }
    if tokenizer.eot_id is not None:
        backend.add_special_tokens([tokenizers.AddedToken(EOT_TEXT, special=True, normalized=False)])
        assert backend.token_to_id(EOT_TEXT) == tokenizer.eot_id
        config["eos_token"] = EOT_TEXT
    return {
        "tokenizer.json": json.loads(backend.to_str()),
        "tokenizer_config.json": config,
        "special_tokens_map.json": _special_tokens(config),
    }


def _special_tokens(config: dict) -> dict:
    names = ("bos_token", "eos_token", "unk_token", "pad_token")
    return {name: config[name] for name in names if special_token_text(config.get(name))}


def export_hf(
    target: str | Path, out: str | Path, dtype: str = "float32", chat_template: str | None = None
) -> tuple[Path, str | None, checkpoint_load.LoadedCheckpoint]:
    """Write a Hugging Face Llama folder from a run (its best checkpoint) or a checkpoint;
    `chat_template`, --chat-template's file: its template in place of the tokenizer's own (if any:
    the layout of the records the model was fine-tuned on, or an imported tokenizer's). The folder,
    the file's template where it was written (None for no file or an empty one, which leaves the
    tokenizer's own template in place), and the checkpoint exported (its tokenizer; which one a run
    folder gave)."""
    out = Path(out)
    check_new_folder(out, "--out")
    loaded = checkpoint_load.load_checkpoint(target)
    m, tokenizer = loaded.cfg.model, loaded.tokenizer
    files = hf_tokenizer_files(tokenizer, m.max_seq_len)
    template = read_checked(chat_template, tokenizer)
    if shipped := template or tokenizer.chat_template:
        files["tokenizer_config.json"]["chat_template"] = shipped  # where transformers 4 and 5 read it
    state = {}
    for name, tensor in weights_to_save(loaded.model).items():
        state[rename(name, TO_HF)] = tensor.to(DTYPES[dtype]).contiguous()
    json_files = {
        "config.json": hf_config(m, tokenizer, dtype),
        "generation_config.json": generation_config(m, tokenizer),
        **files,
    }
    with new_folder(out) as staging:
        save_tensors(state, staging / "model.safetensors", metadata={"format": "pt"})
        for name, content in json_files.items():
            text = json.dumps(content, indent=2, ensure_ascii=False) + "\n"
            (staging / name).write_text(text, encoding="utf-8")
    return out, template, loaded


def check_new_folder(out: Path, flag: str) -> None:
    """`out` must be missing or an empty folder. One that an earlier version's kill left hidden
    (`.NAME.old-PID`, moved aside before the new one took its name) is put back first."""
    refuse_path_through_a_file(out, flag)
    restore_replaced(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; pass a new folder path to {flag}")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(
            f"{out} already exists and is not empty; choose a new folder with {flag} (nothing was changed)"
        )
