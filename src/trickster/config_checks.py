"""Config rules that span several keys (the types check each key alone): each problem names the
key to change."""

from __future__ import annotations

from typing import TYPE_CHECKING

from trickster.config_errors import shown
from trickster.units import DURATION_HINT, parse_duration

if TYPE_CHECKING:
    from trickster.config import Config, DeviceConfig, ModelConfig, TrainingConfig


def check(cfg: Config) -> list[str]:
    """Problems that span several keys, each naming the key to change, said section by section."""
    m, t = cfg.model, cfg.training
    problems = _check_model(m) + _check_schedule(cfg) + _check_device(cfg.device) + _check_lora(t)
    problems += _check_lora_rank(cfg)
    return problems + _check_batch_and_time(t) + _check_seq_len(cfg) + _check_profile(cfg)


def check_model(cfg: Config) -> list[str]:
    """The problems of `check` in what builds the model and what its windows are (model_config,
    training_config.lora and seq_len): a saved config is read for inference with these alone."""
    return _check_model(cfg.model) + _check_lora(cfg.training) + _check_seq_len(cfg)


def _check_seq_len(cfg: Config) -> list[str]:
    seq_len, most = cfg.training.seq_len, cfg.model.max_seq_len
    if seq_len is not None and seq_len > most:
        return [f"training_config.seq_len ({seq_len}) must be <= model_config.max_seq_len ({most})"]
    return []


def _check_profile(cfg: Config) -> list[str]:
    if cfg.logging.profile_steps is None:
        return []
    (first, last), most = cfg.logging.profile_steps, cfg.training.max_steps
    if first > last:
        return [f"logging_config.profile_steps must be [first, last], first <= last (got [{first}, {last}])"]
    if last > most:
        return [
            f"logging_config.profile_steps ends at step {last}, after training_config.max_steps "
            f"({most}); profile steps up to {most}"
        ]
    return []


def _check_model(m: ModelConfig) -> list[str]:
    problems = []
    if m.hidden_dim % m.num_heads:
        problems.append(
            f"model_config.hidden_dim ({m.hidden_dim}) must be divisible by "
            f"model_config.num_heads ({m.num_heads})"
        )
    elif m.head_dim % 2:
        problems.append(
            f"model_config.hidden_dim / num_heads must be even for rotary embeddings "
            f"(got {m.hidden_dim} / {m.num_heads} = {m.head_dim})"
        )
    if m.num_heads % m.kv_heads:
        problems.append(
            f"model_config.num_heads ({m.num_heads}) must be divisible by "
            f"model_config.num_kv_heads ({m.kv_heads})"
        )
    if isinstance(m.vocab_size, int) and m.vocab_size < 2:
        problems.append(f"model_config.vocab_size must be >= 2 or auto (got {m.vocab_size})")
    return problems


def _check_schedule(cfg: Config) -> list[str]:
    problems, t = [], cfg.training
    # a warmup the user left to a preset or a default is fitted to the run instead (train/fitted.py)
    if t.warmup_steps >= t.max_steps and t.warmup_steps > 0 and cfg.gave("training_config.warmup_steps"):
        problems.append(
            "training_config.warmup_steps must be < training_config.max_steps "
            f"(got {t.warmup_steps} >= {t.max_steps}); "
            f"set training_config.warmup_steps={t.max_steps // 10}, a tenth of the steps"
        )
    if t.min_lr > t.learning_rate:
        problems.append(
            f"training_config.min_lr must be <= learning_rate (got {t.min_lr} > {t.learning_rate})"
        )
    # decoupled weight decay multiplies the weights by 1 - lr x decay each step: at 1 or more it
    # zeroes them or flips their sign, and the run trains nothing without a non-finite loss to say so
    pairs = [("weight_decay", "learning_rate")] + [("muon_weight_decay", "muon_lr")] * (t.optimizer == "muon")
    for decay, lr in pairs:
        if getattr(t, decay) * getattr(t, lr) >= 1:
            problems.append(
                f"training_config.{decay} x {lr} must be < 1 (got {getattr(t, decay):g} x "
                f"{getattr(t, lr):g}): each step multiplies the weights by 1 - {lr} x {decay}; "
                f"lower training_config.{decay} (0 to 0.1 is usual)"
            )
    return problems


def _check_device(d: DeviceConfig) -> list[str]:
    problems = []
    if d.enable_ddp and d.enable_fsdp:
        problems.append(
            "set device_config.enable_ddp or enable_fsdp, not both (FSDP2 replicates via mesh_shape)"
        )
    if d.mesh_shape is not None and min(d.mesh_shape) < 1:
        problems.append(f"device_config.mesh_shape entries must be >= 1 (got {list(d.mesh_shape)})")
    return problems


def _check_lora(t: TrainingConfig) -> list[str]:
    if t.lora is None:
        return []
    problems = []
    if t.init_from is None:
        problems.append(
            "training_config.lora adapts existing weights: set training_config.init_from=RUN_DIR too"
        )
    # the layer names live with the adapters; imported here so a config without LoRA needs no torch
    from trickster.model.lora import HF_NAMES, TARGETS

    unknown = [name for name in t.lora.targets if name not in TARGETS and name not in HF_NAMES]
    if unknown or not t.lora.targets:
        named = ", ".join(map(repr, unknown)) or "(none given)"
        problems.append(
            f"training_config.lora.targets: unknown layer {named}; "
            f"choose from {', '.join(TARGETS)} (or {', '.join(HF_NAMES)})"
        )
    return problems


def _check_lora_rank(cfg: Config) -> list[str]:
    """A rank past the narrower side of a layer it adapts adds parameters, not capacity (B @ A has
    at most that rank). Checked for training only: a checkpoint saved with one still loads."""
    t, m = cfg.training, cfg.model
    if t.lora is None or m.hidden_dim % m.num_heads:
        return []
    from trickster.model.lora import linear_shapes, target_names

    shapes = linear_shapes(m)  # a target not among them (_check_lora names it) counts hidden_dim wide
    widths = {name: min(shapes.get(name, (m.hidden_dim,))) for name in target_names(t.lora)}
    most = min(widths.values(), default=t.lora.rank)
    if t.lora.rank <= most:
        return []
    narrowest = ", ".join(sorted(name for name, width in widths.items() if width == most))
    return [
        f"training_config.lora.rank must be <= {most}, the narrower side of {narrowest} "
        f"(got {t.lora.rank}); a larger rank adds parameters, not capacity"
    ]


def _check_batch_and_time(t: TrainingConfig) -> list[str]:
    problems = []
    if t.batch_size == "auto":
        if t.global_batch is None and t.global_batch_tokens is None:
            problems.append(
                "training_config.batch_size: auto needs the batch to keep: set "
                "training_config.global_batch (windows per step, e.g. 64) or global_batch_tokens"
            )
        if t.global_batch is not None and t.global_batch_tokens is not None:
            problems.append("set training_config.global_batch or global_batch_tokens, not both")
        if t.gradient_accumulation_steps != 1:
            problems.append(
                "training_config.gradient_accumulation_steps is chosen by batch_size: auto; remove "
                f"it (got {t.gradient_accumulation_steps})"
            )
    elif t.global_batch is not None or t.global_batch_tokens is not None:
        problems.append(
            "training_config.global_batch and global_batch_tokens only apply to batch_size: auto "
            f"(got batch_size {t.batch_size}; the batch is batch_size x processes x accumulation)"
        )
    if t.max_time is not None and parse_duration(t.max_time) is None:
        problems.append(f"training_config.max_time must be {DURATION_HINT} (got {shown(t.max_time)})")
    return problems
