"""Hugging Face Llama <-> trickster: a literal name map, then export and import.

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
- `import_hf`: a Llama folder (config.json, safetensors weights, tokenizer.json), local or a Hub
  repo (`hf_hub`) -> a run whose `checkpoints/final` generate, export and init_from accept.

Neither needs `transformers` itself: the files are plain JSON and safetensors, and only the
tokenizer conversion uses the `tokenizers` package (`pip install 'nano-trickster[hf]'`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from trickster.atomic import new_folder, restore_replaced
from trickster.config import ModelConfig, config_from_dict, save_config
from trickster.data.hf_tokens import require_tokenizers, special_token_text
from trickster.data.tokenizers import EOT_TEXT, HFTokenizer, Tokenizer
from trickster.errors import UserError
from trickster.export import byte_level, hf_hub
from trickster.model.transformer import Transformer
from trickster.observe.manifest import run_manifest
from trickster.train import checkpoint as ckpt

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


def export_hf(target: str | Path, out: str | Path, dtype: str = "float32") -> Path:
    """Write a Hugging Face Llama folder from a run (its best checkpoint) or a checkpoint."""
    out = Path(out)
    _check_new_folder(out, "--out")
    loaded = ckpt.load_checkpoint(target)
    m, tokenizer = loaded.cfg.model, loaded.tokenizer
    files = hf_tokenizer_files(tokenizer, m.max_seq_len)
    state = {}
    for name, tensor in ckpt.weights_to_save(loaded.model).items():
        state[rename(name, TO_HF)] = tensor.to(DTYPES[dtype]).contiguous()
    json_files = {
        "config.json": hf_config(m, tokenizer, dtype),
        "generation_config.json": generation_config(m, tokenizer),
        **files,
    }
    with new_folder(out) as staging:
        save_file(state, staging / "model.safetensors", metadata={"format": "pt"})
        for name, content in json_files.items():
            text = json.dumps(content, indent=2, ensure_ascii=False) + "\n"
            (staging / name).write_text(text, encoding="utf-8")
    return out


def _check_new_folder(out: Path, flag: str) -> None:
    """`out` must be missing or an empty folder. One that an earlier version's kill left hidden
    (`.NAME.old-PID`, moved aside before the new one took its name) is put back first."""
    restore_replaced(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} is a file; pass a new folder path to {flag}")
    if out.is_dir() and any(out.iterdir()):
        raise UserError(
            f"{out} already exists and is not empty; choose a new folder with {flag} (nothing was changed)"
        )


# --------------------------------------------------------------------------- import


def model_config_from_hf(hf: dict, source: str) -> ModelConfig:
    """Our model_config for a Hugging Face Llama config.json, refusing what our decoder lacks."""
    arch = hf.get("architectures") or []
    if hf.get("model_type") != "llama" or (arch and "LlamaForCausalLM" not in arch):
        raise UserError(
            f"{source}: model_type {hf.get('model_type')!r} ({', '.join(arch) or 'no architectures'}) is not "
            "supported; only Llama checkpoints (LlamaForCausalLM) can be imported"
        )
    problems = []
    if hf.get("hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {hf['hidden_act']!r} (only silu)")
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            problems.append(f"{key} true (our layers have no biases)")
    if hf.get("quantization_config"):
        problems.append("quantization_config (only unquantized weights)")
    # transformers 5 writes rope_parameters, 4 rope_scaling; with both, 5 applies rope_scaling
    ropes = [r for r in (hf.get("rope_parameters"), hf.get("rope_scaling")) if r is not None]
    for rope in ropes:
        rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else rope
        if rope_type not in (None, "default"):
            problems.append(f"rope scaling {rope_type!r} (only plain rotary)")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    missing = [k for k in required if k not in hf]
    not_counts = [k for k in required if k in hf and (type(hf[k]) is not int or hf[k] <= 0)]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if not_counts:
        problems.append(", ".join(f"{k} {hf[k]!r}" for k in not_counts) + " (must be positive integers)")
    elif not missing and hf.get("head_dim") not in (None, hf["hidden_size"] // hf["num_attention_heads"]):
        problems.append(f"head_dim {hf['head_dim']} != hidden_size / num_attention_heads")
    if problems:
        raise UserError(f"{source}: unsupported Llama variant: {'; '.join(problems)}")
    rope_theta = hf.get("rope_theta")
    for rope in ropes:
        if rope_theta is None and isinstance(rope, dict):
            rope_theta = rope.get("rope_theta")
    raw = {
        "vocab_size": hf["vocab_size"],
        "hidden_dim": hf["hidden_size"],
        "num_layers": hf["num_hidden_layers"],
        "num_heads": hf["num_attention_heads"],
        "num_kv_heads": hf.get("num_key_value_heads") or hf["num_attention_heads"],
        "mlp_dim": hf["intermediate_size"],
        "max_seq_len": hf.get("max_position_embeddings", 2048),
        "tie_embeddings": bool(hf.get("tie_word_embeddings", False)),
        "rope_theta": 10000.0 if rope_theta is None else rope_theta,
        "norm_eps": hf.get("rms_norm_eps", 1e-6),
        "dropout": 0.0,
    }
    return config_from_dict({"model_config": raw}, source).model


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is missing or damaged; {what}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; {what}")
    return data


def weight_files(src: Path) -> list[Path]:
    """model.safetensors, or the shards that model.safetensors.index.json lists."""
    if (src / "model.safetensors").is_file():
        return [src / "model.safetensors"]
    index = src / "model.safetensors.index.json"
    if index.is_file():
        return _shards(index)
    if any(src.glob("*.bin")) or any(src.glob("*.pth")):
        raise UserError(
            f"{src} holds pickled weights (.bin/.pth), which are never loaded here; save them as "
            "safetensors: AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR)"
        )
    raise UserError(f"{src} has no model.safetensors; pass a folder written by save_pretrained()")


def _shards(index: Path) -> list[Path]:
    """The files that model.safetensors.index.json's weight_map names, each present."""
    weight_map = _read_json(index, "save the model again").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise UserError(f"{index} has no weight_map of tensor names to files; save the model again")
    if not all(isinstance(shard, str) for shard in weight_map.values()):
        raise UserError(f"{index}: weight_map values must be file names; save the model again")
    shards = [index.parent / shard for shard in sorted(set(weight_map.values()))]
    missing = [shard.name for shard in shards if not shard.is_file()]
    if missing:
        raise UserError(f"{index} lists {', '.join(missing[:3])}, which is missing; copy every shard")
    return shards


def load_hf_tokenizer(src: Path, hf: dict) -> HFTokenizer:
    file = src / "tokenizer.json"
    if not file.is_file():
        raise UserError(
            f"{src} has no tokenizer.json (only fast tokenizers can be imported); write one with "
            "AutoTokenizer.from_pretrained(DIR).save_pretrained(DIR)"
        )
    config = {}
    if (src / "tokenizer_config.json").is_file():
        config = _read_json(src / "tokenizer_config.json", "save the tokenizer again")
    if (src / "chat_template.jinja").is_file() and "chat_template" not in config:  # transformers >= 4.50
        config["chat_template"] = (src / "chat_template.jinja").read_text(encoding="utf-8")
    try:
        tokenizer = HFTokenizer(_read_json(file, "save the tokenizer again"), config)
    except ValueError as err:
        raise UserError(f"{file}: {err}; save the tokenizer again") from None
    eos = hf.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos
    if tokenizer.eot_id is None and isinstance(eos, int):  # name the end-of-text token from config.json
        text = tokenizer.backend.id_to_token(eos)
        if text is not None:
            tokenizer = HFTokenizer(tokenizer.tokenizer_json, {**config, "eos_token": text})
    ends = [i for i in _eos_ids(src, hf) if i != tokenizer.eot_id and 0 <= i < tokenizer.vocab_size]
    if ends:  # the others: generation stops on them too
        tokenizer = HFTokenizer(tokenizer.tokenizer_json, tokenizer.config, ends)
    return tokenizer


def _eos_ids(src: Path, hf: dict) -> list[int]:
    """The ids that end a generated text, as transformers' generate takes them: generation_config.json's
    eos_token_id, else config.json's; one id or a list (Llama 3.1 lists three)."""
    generation = src / "generation_config.json"
    if generation.is_file():
        given = _read_json(generation, "save the model again").get("eos_token_id")
        if given is not None:
            hf = {"eos_token_id": given}
    ids = hf.get("eos_token_id")
    ids = ids if isinstance(ids, list) else [ids]
    return [i for i in ids if type(i) is int]


def import_hf(source: str | Path, run_dir: str | Path, revision: str | None = None) -> Path:
    """Turn a Hugging Face Llama into a run folder with one checkpoint, `final`: a local folder, or a
    Hub repo id ORG/NAME (text that is no existing path) downloaded at `revision` (`hf_hub`)."""
    run_dir, origin = Path(run_dir), {"imported_from": str(Path(source).resolve())}
    restore_replaced(Path(source))  # an export into an existing folder by an earlier version, killed half-way
    if hf_hub.is_repo_id(source):
        _check_new_folder(run_dir, "--out")  # before a download of gigabytes
        hub_model, (model_cfg, tokenizer) = hf_hub.fetch_model(source, revision, _read_model)
        src, origin = hub_model.folder, hub_model.origin()
    else:
        src = Path(source)
        if not src.is_dir():
            raise UserError(f"{source} is not a folder; pass a model folder or a Hub repo id ORG/NAME")
        if revision is not None:
            raise UserError(f"--revision picks a version of a Hub repo, and {src} is a local folder; drop it")
        if not (src / "config.json").is_file():
            raise UserError(f"{src} has no config.json; pass a folder written by save_pretrained()")
        _check_new_folder(run_dir, "--out")
        model_cfg, tokenizer = _read_model(src, str(src))
    model = Transformer(model_cfg)
    _load_hf_weights(model, weight_files(src))
    cfg = config_from_dict(
        {"model_config": model_cfg.model_dump(), "logging_config": {"output_dir": str(run_dir)}}, "import"
    )
    info = {
        "step": 0,
        **origin,
        "val_loss": None,
        "best_val_loss": None,
        "tokenizer_fingerprint": tokenizer.fingerprint(),
        "data_fingerprint": None,
        "data_path": None,
        "manifest": run_manifest(torch.device("cpu")),
    }
    with new_folder(run_dir) as staging:  # a kill leaves no half run folder that blocks the next import
        (staging / "checkpoints").mkdir()
        save_config(cfg, staging / "config.yaml", by_run=True)
        tokenizer.save(staging / "tokenizer.json")
        (staging / "manifest.json").write_text(json.dumps(info["manifest"], indent=2))
        ckpt.save_checkpoint(staging / "checkpoints" / "final", model, cfg, tokenizer, info)
    return run_dir


def _read_model(src: Path, label: str) -> tuple[ModelConfig, HFTokenizer]:
    """config.json and the tokenizer, checked (a Llama, a fast tokenizer, rows for every id)."""
    hf = _read_json(src / "config.json", "pass a folder written by save_pretrained()")
    model_cfg = model_config_from_hf(hf, f"{label}/config.json")
    tokenizer = load_hf_tokenizer(src, hf)
    if model_cfg.vocab_size < tokenizer.vocab_size:
        raise UserError(
            f"{label}: the tokenizer has {tokenizer.vocab_size} ids but the model only "
            f"{model_cfg.vocab_size} embedding rows; they do not belong together"
        )
    return model_cfg, tokenizer


def _load_hf_weights(model: Transformer, files: list[Path]) -> None:
    """Copy every Hugging Face tensor into its renamed parameter (as float32), one at a time."""
    expected = set(ckpt.weights_to_save(model))
    seen = set()
    tied = model.cfg.tie_embeddings
    for file in files:
        try:
            with safe_open(str(file), framework="pt", device="cpu") as f:
                for hf_name in f.keys():
                    if HF_IGNORED.search(hf_name) or (tied and hf_name == "lm_head.weight"):
                        continue
                    name = rename(hf_name, FROM_HF)
                    if name not in expected:
                        raise UserError(
                            f"{file}: unexpected tensor {hf_name}; is this a plain Llama checkpoint?"
                        )
                    param = model.get_parameter(name)
                    tensor = f.get_tensor(hf_name)
                    if tensor.shape != param.shape:
                        raise UserError(
                            f"{file}: {hf_name} is {tuple(tensor.shape)}, config.json needs "
                            f"{tuple(param.shape)}; the weights and config.json disagree"
                        )
                    with torch.no_grad():
                        param.copy_(tensor.float())
                    seen.add(name)
        except (SafetensorError, OSError) as err:
            raise UserError(f"{file} is damaged or not a safetensors file ({err})") from None
    missing = sorted(expected - seen)
    if missing:
        shown = ", ".join(rename(n, TO_HF) for n in missing[:3])
        raise UserError(f"{files[0].parent}: weights missing for {shown}{' ...' if len(missing) > 3 else ''}")
