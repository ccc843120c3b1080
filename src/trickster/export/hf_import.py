"""`trickster import hf`: a Hugging Face Llama (a local folder written by save_pretrained(), or a
Hub repo fetched by hf_hub) -> a run whose `checkpoints/final` generate, export and init_from
accept. The weights are renamed by hf.py's table, never permuted; the tokenizer is kept as it is
(an HFTokenizer), with its chat template and every end-of-text id the model lists.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from trickster.atomic import new_folder, restore_replaced
from trickster.config import ModelConfig, config_from_dict, save_config
from trickster.data.tokenizers import HFTokenizer
from trickster.errors import UserError, did_you_mean, write_fix
from trickster.export import hf_hub
from trickster.export.hf import FROM_HF, HF_IGNORED, TO_HF, check_new_folder, rename
from trickster.model.transformer import Transformer
from trickster.observe.manifest import run_manifest
from trickster.run_checkpoints import COMPLETE, WEIGHTS
from trickster.train import checkpoint as ckpt
from trickster.train.weights import weights_to_save


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
    if file.is_dir():
        raise UserError(f"{file} is a folder, not a file; put the model's tokenizer.json in its place")
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


def _no_config(src: Path) -> str:
    """Why a folder without config.json is not imported. A run of ours, one of its checkpoints or
    its checkpoints/ (config.yaml beside them) is a run already, and prepared data is for training:
    said so, with what to do instead, where "has no config.json" sent the user looking for a file."""
    run = src.parent if src.name == "checkpoints" and (src.parent / "config.yaml").is_file() else src
    if (src / "meta.json").is_file() and not (run / "config.yaml").is_file():
        return (
            f"{src} is a prepared data folder, not a model; train on it (trickster train --preset tiny "
            f"--data {shlex.quote(str(src))}), or pass a folder written by save_pretrained()"
        )
    if not (run / "config.yaml").is_file():
        return f"{src} has no config.json; pass a folder written by save_pretrained()"
    if run is not src:
        what = f"the checkpoints folder of the nano-trickster run {run}"
    elif (src / WEIGHTS).exists() or (src / COMPLETE).exists():
        what = "a nano-trickster checkpoint"
    else:
        what = "a nano-trickster run"
    name = shlex.quote(str(run))
    return (
        f"{src} is {what}, not a Hugging Face model, so there is nothing to import; use {name} as it "
        f"is (trickster generate {name}, or chat or serve), or write a Hugging Face folder from it with "
        f"`trickster export {name} --format hf --out DIR`"
    )


PASS_SOURCE = "pass a model folder or a Hub repo id ORG/NAME"


def _closest_folder(path: Path) -> str:
    """` (did you mean hf-model?)` for the folder beside a missing `path` whose name is closest to
    its own (`hf-modle`), written as the path was typed; "" when none is close."""
    try:
        beside = [p.name for p in path.parent.iterdir() if p.is_dir()] if path.parent.is_dir() else []
    except OSError:  # a folder this user may not list
        beside = []
    prefix = "" if path.parent == Path(path.name).parent else f"{path.parent}/"
    return did_you_mean(path.name, beside, prefix=prefix)


def import_hf(source: str | Path, run_dir: str | Path, revision: str | None = None) -> Path:
    """Turn a Hugging Face Llama into a run folder with one checkpoint, `final`: a local folder, or a
    Hub repo id ORG/NAME (text that is no existing path) downloaded at `revision` (`hf_hub`)."""
    run_dir, origin = Path(run_dir), {"imported_from": str(Path(source).resolve())}
    restore_replaced(Path(source))  # an export into an existing folder by an earlier version, killed half-way
    if hf_hub.is_repo_id(source):
        check_new_folder(run_dir, "--out")  # before a download of gigabytes
        hub_model, (model_cfg, tokenizer) = hf_hub.fetch_model(source, revision, _read_model)
        src, origin = hub_model.folder, hub_model.origin()
    else:
        src = Path(source)
        if src.is_file():  # model.safetensors or config.json itself: "is not a folder" said not which
            holder = (
                f"the folder that holds it ({src.parent})"
                if (src.parent / "config.json").is_file()
                else "a model folder"
            )
            raise UserError(f"{source} is a file; pass {holder}, or a Hub repo id ORG/NAME")
        if not src.exists():  # a path to nothing: "is not a folder" read as if something were there
            raise UserError(f"{source}: no such folder{_closest_folder(src)}; {PASS_SOURCE}")
        if not src.is_dir():
            raise UserError(f"{source} is not a folder; {PASS_SOURCE}")
        if revision is not None:
            raise UserError(f"--revision picks a version of a Hub repo, and {src} is a local folder; drop it")
        if not (src / "config.json").is_file():
            raise UserError(_no_config(src))
        check_new_folder(run_dir, "--out")
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
        "val_loss_step": None,
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
        again = write_fix(then="run the import again")
        ckpt.save_checkpoint(staging / "checkpoints" / "final", model, cfg, tokenizer, info, fix=again)
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
    expected = set(weights_to_save(model))
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
