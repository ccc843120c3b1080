"""Typed run configuration: four YAML sections from the tutorial plus `data_config`.

Every field is documented where it is declared; the docstring is also the `--help` text.
Loading gathers every problem at once and names the key to change, for example
`training_config.warmup_steps must be < training_config.max_steps (got 2000 >= 1000)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    StrictBool,
    ValidationError,
    field_validator,
)

from trickster import untrusted
from trickster.atomic import replace_file
from trickster.config_checks import check
from trickster.config_errors import (
    blamed,
    describe_all,
    elided,
    override_within_limits,
    section_at,
)
from trickster.config_fitted import fitted_line, recorded_fitted
from trickster.config_paths import nameable_path, typed_as_text, wandb_project_name
from trickster.config_section import Section
from trickster.config_yaml import SAVED_MARK, load_yaml, overridden_keys, parse_yaml, read_config_file
from trickster.errors import UserError, did_you_mean
from trickster.presets import preset_text
from trickster.units import whole_seconds


class ModelConfig(Section):
    vocab_size: int | Literal["auto"] = "auto"
    """Rows of the embedding table; `auto` takes the tokenizer's vocabulary size at training time."""
    hidden_dim: int = Field(256, gt=0)
    """Width of the residual stream."""
    num_layers: int = Field(6, gt=0)
    """Number of transformer blocks."""
    num_heads: int = Field(8, gt=0)
    """Attention heads; hidden_dim must be divisible by it."""
    num_kv_heads: int | None = Field(None, gt=0)
    """Key/value heads for grouped-query attention; empty means num_heads (plain multi-head)."""
    mlp_dim: int = Field(768, gt=0)
    """Inner width of the SwiGLU feed-forward network."""
    max_seq_len: int = Field(512, gt=0)
    """Longest context the model is built for (rotary tables are precomputed to this length)."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on attention weights and residual branches during training."""
    tie_embeddings: StrictBool = True
    """Share the output projection with the token embedding."""
    rope_theta: float = Field(10000.0, gt=0, le=1e12)
    """Base of the rotary position frequencies, at most 1e12 (the slowest pair turns once in about
    2π x rope_theta positions; Llama 3 uses 500,000, Mistral 3 1e9)."""
    norm_eps: float = Field(1e-5, gt=0, lt=1)
    """Epsilon inside RMSNorm, below 1 (at 1 and above it outweighs the activations it divides by,
    and the model's output no longer depends on its input)."""

    @property
    def kv_heads(self) -> int:
        """Key/value heads: num_kv_heads, or num_heads when it is empty."""
        return self.num_kv_heads or self.num_heads

    @property
    def head_dim(self) -> int:
        return self.hidden_dim // self.num_heads

    def shape(self) -> str:
        """The model's shape in one line, as `info`, `plan`, `import` and the report print it."""
        return (
            f"hidden {self.hidden_dim}, {self.num_layers} layers, {self.num_heads} heads "
            f"({self.kv_heads} kv), MLP {self.mlp_dim}, context {self.max_seq_len}, vocab {self.vocab_size}"
        )


class DataConfig(Section):
    path: str | None = None
    """Folder written by `trickster data prepare` (token shards, index.json, meta.json, tokenizer.json)."""

    _nameable = field_validator("path")(nameable_path)


class LoraConfig(Section):
    rank: int = Field(8, gt=0)
    """Rank r of each adapter: the update to a weight W is (alpha / r) * B @ A, A (r, in), B (out, r);
    at most the narrower side of every layer it adapts."""
    alpha: float = Field(16.0, gt=0)
    """Scale of the update (multiplied by alpha / rank)."""
    targets: list[str] = Field(default_factory=lambda: ["wq", "wv"])
    """Linear layers of every block to adapt: wq wk wv wo (attention), w1 w3 w2 (SwiGLU), or their
    Hugging Face names (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)."""


MAX_ACCUMULATION = 1_000_000  # gradient_accumulation_steps, as set or as batch_size: auto chooses it


class TrainingConfig(Section):
    batch_size: Annotated[int, Field(gt=0)] | Literal["auto"] = 16
    """Windows per micro-batch in each process, or auto: the largest micro-batch that fits (measured
    on the device by trial steps, within device_config.memory_gib) and the gradient accumulation that keeps
    global_batch (or global_batch_tokens). The numbers chosen are stored in the run's config.yaml."""
    global_batch: int | None = Field(None, gt=0)
    """With batch_size: auto, windows per optimizer step over all processes."""
    global_batch_tokens: int | None = Field(None, gt=0)
    """With batch_size: auto, tokens per optimizer step (in whole windows), instead of global_batch."""
    seq_len: int | None = Field(None, gt=0)
    """Tokens per training window; empty means model_config.max_seq_len."""
    max_steps: int = Field(10000, gt=0)
    """Optimizer steps to train for."""
    learning_rate: float = Field(3e-4, gt=0, le=1)
    """Peak learning rate, reached at the end of warmup (at most 1: AdamW moves each weight by
    about the learning rate per step, and weights start near 0.02)."""
    min_lr: float = Field(3e-5, ge=0)
    """Floor of the cosine decay."""
    warmup_steps: int = Field(1000, ge=0)
    """Steps of linear warmup, from learning_rate / warmup_steps at the first step to learning_rate."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW weight decay, applied to weight matrices only (not norms)."""
    betas: tuple[Annotated[float, Field(ge=0, lt=1)], Annotated[float, Field(ge=0, lt=1)]] = (0.9, 0.95)
    """AdamW betas, each in [0, 1)."""
    optimizer: Literal["adamw", "muon"] = "adamw"
    """adamw: AdamW on every weight. muon: Muon (momentum orthogonalised by Newton-Schulz) on the
    attention and MLP weight matrices, AdamW (learning_rate, betas, weight_decay) on the embedding,
    an untied output head and the norm weights."""
    muon_lr: float = Field(0.02, gt=0, le=1)
    """Muon's peak learning rate (optimizer: muon), at most 1; it follows the schedule of
    learning_rate, scaled."""
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    """Muon's (Nesterov) momentum."""
    muon_weight_decay: float = Field(0.0, ge=0)
    """Muon's decoupled weight decay: each step multiplies its matrices by 1 - lr * muon_weight_decay."""
    grad_clip: float = Field(1.0, ge=0)
    """Clip the global gradient norm to this value; 0 disables clipping."""
    gradient_accumulation_steps: int = Field(1, gt=0, le=MAX_ACCUMULATION)
    """Micro-batches whose gradients are averaged before each optimizer step, at most 1,000,000
    (each is a forward and backward pass: 1e18 made a first step that never ended)."""
    log_every: int = Field(50, gt=0)
    """Steps between train-loss log lines."""
    eval_every: int = Field(500, gt=0)
    """Steps between validation passes (also at step 0 and at the end)."""
    eval_batches: int = Field(20, gt=0)
    """Validation batches per evaluation, each of the global batch's windows (batch_size x
    gradient_accumulation_steps x processes) when the run began; the same windows every time,
    however the batch is split into micro-batches and processes, then or on a resume."""
    hellaswag_every: int | None = Field(None, gt=0)
    """Steps between HellaSwag scorings (also at step 0 and at the end); empty: none."""
    hellaswag_examples: int = Field(10_042, gt=0, le=10_042)
    """HellaSwag validation examples each scoring reads: the first N, the same ones every time (all
    10,042 are forward passes over about 3.6M GPT-2 tokens)."""
    hellaswag_file: str | None = None
    """A local copy of HellaSwag's hellaswag_val.jsonl; empty: `trickster eval`'s cached download."""
    save_every: int = Field(1000, gt=0)
    """Steps between numbered checkpoints."""
    keep_last: int | None = Field(None, gt=0)
    """Numbered checkpoints to keep, newest first; empty keeps all. best and final are never deleted."""
    async_save: StrictBool = False
    """Write numbered checkpoints in a background thread as training goes on, from a CPU copy of its state."""
    resume: StrictBool | Literal["auto"] = False
    """Continue from the run folder's newest complete checkpoint: true requires one (like --resume),
    auto resumes when there is one and starts afresh when there is none."""
    max_nonfinite_steps: int = Field(5, gt=0)
    """Updates skipped in a row for a non-finite loss or gradient norm before the run stops."""
    max_time: int | str | None = None
    """Wall-time budget of the run, summed over resumes: 48h, 90m, 1h30m, 3600s (a whole number
    is seconds; 90.5s for a fraction). At the budget the run evaluates, saves final and ends;
    --resume with a larger one continues. Empty: no budget."""
    spike_factor: float | None = Field(2.0, gt=1)
    """A loss spike is a train loss above spike_factor x the median of the last spike_window
    losses for spike_steps steps in a row: the run rolls back to the newest checkpoint before it
    and skips the spike's batches. Empty turns the check off."""
    spike_steps: int = Field(3, gt=0)
    """High losses in a row that make a spike."""
    spike_window: int = Field(100, gt=1)
    """Recent losses whose median a step's loss is compared with (no spike before there are as many)."""
    max_rollbacks: int = Field(3, ge=0)
    """Rollbacks for loss spikes before the run stops and names its last good checkpoint."""
    sample_every: int | None = Field(None, ge=0)
    """Steps between text samples; empty means at every evaluation, 0 never."""
    sample_prompt: str = "\n"
    """Prompt of the text samples written during training."""
    sample_tokens: int = Field(200, ge=0, le=100_000)
    """Tokens generated for each training sample, at most 100,000 (each evaluation waits for its
    sample, and metrics.jsonl holds it: 1e18 never got past the first one)."""
    seed: int = Field(1337, ge=-(2**63), lt=2**63)  # what torch.manual_seed takes
    """Seed of the weights, the batch order and the samples."""
    init_from: str | None = None
    """Fine-tuning: start from the weights of this run folder or checkpoint instead of random ones
    (its model_config and tokenizer must match this run's)."""
    lora: LoraConfig | None = None
    """Fine-tuning with LoRA: {rank, alpha, targets}; only the adapters train (needs init_from)."""

    @field_validator("max_time", mode="before")
    @classmethod
    def _whole_seconds(cls, value):
        return whole_seconds(value)

    _nameable = field_validator("init_from", "hellaswag_file")(nameable_path)


class DeviceConfig(Section):
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    """Where to train: auto picks cuda, then mps, then cpu."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Autocast precision of the forward pass; weights and optimizer state stay float32. auto is
    bfloat16 on a CUDA GPU with bfloat16 tensor cores (Ampere and later) and float32 elsewhere.
    float16 adds a GradScaler. float32 matmuls on CUDA use TF32 (Ampere and later)."""
    compile: StrictBool | None = None
    """Compile each block with torch.compile; empty (or auto) compiles on CUDA GPUs of Ampere and
    later and nowhere else (checkpoints still hold the plain module)."""
    threads: int | None = Field(None, gt=0, le=4096)  # a million makes OpenMP abort the process
    """CPU threads for PyTorch (at most 4096); empty leaves PyTorch's default."""
    memory_gib: float | None = Field(None, gt=0, le=1e18)  # 1e300 GiB is inf bytes, which int() refuses
    """Memory the run may use on its device, in GiB (batch_size: auto, `trickster plan` and the
    out-of-memory advice plan within it); empty means all of it: GPU memory, or on a CPU the RAM or
    a cgroup's or ulimit's limit below it (a torchrun job's processes on one machine share it)."""
    peak_tflops: float | None = Field(None, gt=0)
    """Peak TFLOP/s per device that MFU divides by; empty measures this device's matmul ceiling."""
    enable_ddp: StrictBool = False
    """Data parallel (DistributedDataParallel) over all processes; on by itself under torchrun."""
    enable_fsdp: StrictBool = False
    """Shard parameters, gradients and optimizer state with FSDP2 (fully_shard)."""
    mesh_shape: tuple[int, int] | None = None
    """[replicate, shard] process grid whose product is the number of processes; with FSDP,
    hybrid sharding when both exceed 1. Empty: all processes replicate (DDP) or shard (FSDP)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """Collective backend: auto is nccl on CUDA and gloo on the CPU."""
    timeout_s: int = Field(600, gt=0, le=10**9)  # a timedelta past ~8.6e13 s overflows
    """Seconds a collective may wait for a silent process before the job fails (at most 1e9, about
    31 years)."""
    activation_checkpointing: StrictBool = False
    """Recompute each block's activations in the backward pass: less memory, about 30% more compute."""

    @field_validator("compile", mode="before")
    @classmethod
    def _compile_auto(cls, value):
        return None if value == "auto" else value  # `auto` reads like dtype's and device's


class LoggingConfig(Section):
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """How much to print."""
    output_dir: str = "runs/nano"
    """Run directory: config, tokenizer, metrics.jsonl, checkpoints/."""
    progress_bar: StrictBool = True
    """Show a progress bar with loss, learning rate and tokens/s."""
    loss_plot: StrictBool = True
    """Redraw RUN_DIR/loss.png (train and validation loss) after each evaluation."""
    tensorboard: StrictBool = False
    """Also write TensorBoard event files to RUN_DIR/tensorboard (needs nano-trickster[tracking])."""
    use_wandb: StrictBool = False
    """Also log to Weights & Biases (needs nano-trickster[tracking]); WANDB_MODE=offline keeps it local."""
    profile_steps: tuple[Annotated[int, Field(gt=0)], Annotated[int, Field(gt=0)]] | None = None
    """[first, last]: record these training steps with torch.profiler into RUN_DIR/profile, a trace
    per process and a table of the operators that took the time; empty: none."""
    wandb_project: str = "nano-trickster"
    """Weights & Biases project of the run (used with use_wandb): at most 128 characters, none of
    / \\ # ? % : (W&B's rules, checked before the run starts instead of after the model is built)."""

    _nameable = field_validator("output_dir")(nameable_path)
    _wandb_name = field_validator("wandb_project")(wandb_project_name)


class Config(BaseModel):
    """A whole run. Section names are the tutorial's (`model_config`, `training_config`, ...)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, validate_assignment=True)

    model: ModelConfig = Field(default_factory=ModelConfig, alias="model_config")
    data: DataConfig = Field(default_factory=DataConfig, alias="data_config")
    training: TrainingConfig = Field(default_factory=TrainingConfig, alias="training_config")
    device: DeviceConfig = Field(default_factory=DeviceConfig, alias="device_config")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, alias="logging_config")
    # what a saved config.yaml held of the wrong kind, set aside for the default (config_saved):
    # {"training_config.log_every": "often"}; a resume reports a change from these
    _set_aside: dict[str, Any] = PrivateAttr(default_factory=dict)
    # the keys the user gave ("training_config.warmup_steps"): on the command line, or in a config
    # file of their own, not a preset's or a saved run's; a run fits the others to itself (train/fitted.py)
    _given: frozenset[str] = PrivateAttr(default_factory=frozenset)
    # the settings a run fitted to itself (train/fitted.py), each with its value before, as the
    # config.yaml it saves records them (config_fitted): {"training_config.eval_every": 250}
    _fitted_from: dict[str, Any] = PrivateAttr(default_factory=dict)

    @property
    def set_aside(self) -> dict[str, Any]:
        return self._set_aside

    @property
    def fitted_from(self) -> dict[str, Any]:
        return self._fitted_from

    def gave(self, key: str) -> bool:
        """Whether the user gave the dotted `key` (see _given)."""
        return key in self._given

    def __eq__(self, other: object) -> bool:
        """The same settings: which of them the user gave or a run fitted is not one (pydantic
        compares it too)."""
        if not isinstance(other, Config):
            return NotImplemented
        return self.__dict__ == other.__dict__ and self._set_aside == other._set_aside

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")

    def to_yaml(self) -> str:
        """The config as config.yaml holds it: its sections and keys in their order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @property
    def seq_len(self) -> int:
        return self.training.seq_len or self.model.max_seq_len


SECTIONS = {name: field.annotation for name, field in Config.model_fields.items()}
SECTION_ALIASES = {field.alias: name for name, field in Config.model_fields.items()}


def load_config(
    path: str | Path | None = None, preset: str | None = None, overrides: list[str] = ()
) -> Config:
    """Build a Config from a preset or YAML file, then apply `section.key=value` overrides."""
    raw, source, saved, fitted = raw_config(path, preset, overrides)
    cfg = validated(raw, source, saved, overrides, own=bool(path) and not saved)
    cfg.fitted_from.update(recorded_fitted(fitted, cfg))  # which a run from the file fits afresh
    return cfg


def validated(raw: dict, source: str, saved: bool, overrides: Sequence[str], own: bool) -> Config:
    """raw_config's answer validated as load_config validates it; `own`: a config file of the
    user's, whose keys they gave (given_keys), not a preset or a config.yaml a run saved."""
    overridden = overridden_keys(overrides)
    return config_from_dict(raw, source, overridden, saved, given_keys(raw if own else {}, overridden))


def given_keys(own: dict[str, Any], overridden: Sequence[str]) -> frozenset[str]:
    """The dotted keys the user gave: those of `own`, a config of their own (not a preset, or a
    config.yaml a run saved: their keys are defaults), and every override's."""
    names = {name: alias for alias, name in SECTION_ALIASES.items()}  # `training:` is training_config
    written = [f"{names.get(s, s)}.{k}" for s, keys in own.items() if isinstance(keys, dict) for k in keys]
    return frozenset([*written, *overridden])


def raw_config(
    path: str | Path | None = None, preset: str | None = None, overrides: Sequence[str] = ()
) -> tuple[dict[str, Any], str, bool, dict[str, Any]]:
    """The sections of a preset or YAML file with the overrides applied, what they came from,
    whether a run saved them (its config.yaml may hold a value saved before a limit), and its
    record of the settings it fitted ({} unless it saved them: config_fitted)."""
    if path is not None and preset is not None:
        raise UserError("give either --preset or --config, not both")
    raw: dict[str, Any] = {}
    source, saved, fitted = "defaults", False, {}
    if preset is not None:
        raw, source = parse_yaml(preset_text(preset), f"preset {preset}"), f"preset {preset}"
    elif path is not None:
        (raw, saved, fitted), source = read_config_file(Path(path)), str(path)
    for override in overrides:
        _apply_override(raw, override)
    return raw, source, saved, fitted


def config_from_dict(
    raw: dict[str, Any],
    source: str = "config",
    overridden: Sequence[str] = (),
    saved: bool = False,
    given: frozenset[str] | None = None,
) -> Config:
    """A validated Config; every problem in one line, said to come from `source`, or from the
    command line when it names an `overridden` key (a user looks for a bad value where we say).
    `saved`: `source` is a config.yaml a run saved, whose training settings beyond a limit added
    since are named with the overrides that set them within it. `given`: the keys the user gave
    (given_keys); None: every key, a config written in code being its author's own."""
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        problems = describe_all(Config, err.errors())
        problems += override_within_limits(Config, err.errors(), overridden) if saved else []
    else:
        cfg._given = given_keys(raw, overridden) if given is None else given
        problems = check(cfg)
    if not problems:
        return cfg
    raise UserError(f"{blamed(source, problems, overridden)}: " + "; ".join(problems)) from None


def save_config(cfg: Config, path: str | Path, by_run: bool = False) -> None:
    """config.yaml, replaced in one rename: a resume killed while it writes leaves the old one.
    `by_run`: a run's own (or its checkpoint's), marked as such (config_yaml.SAVED_MARK), with the
    record of the settings it fitted (config_fitted.fitted_line)."""
    replace_file(Path(path), (SAVED_MARK + fitted_line(cfg) if by_run else "") + cfg.to_yaml())


def _apply_override(raw: dict[str, Any], override: str) -> None:
    """`section.key=value`, or deeper (`training_config.lora.rank=4`); validation checks the keys."""
    key, sep, value = override.partition("=")
    parts = key.strip().split(".")
    if not sep or len(parts) < 2 or not all(parts):
        raise UserError(
            f"override '{elided(override)}' must look like section.key=value "
            "(for example training_config.max_steps=200)"
        )
    if parts[0] not in SECTION_ALIASES:
        hint = did_you_mean(parts[0], list(SECTION_ALIASES))
        raise UserError(f"override '{elided(override)}': unknown section '{elided(parts[0])}'{hint}")
    parent = section_at(Config, parts[:-1])
    field = parent.model_fields.get(parts[-1]) if parent else None
    if field is not None and typed_as_text(field.annotation, value):
        parsed = value  # text fields keep the text as typed ("ROMEO:" is not a YAML mapping here)
    else:
        try:
            parsed = load_yaml(value)  # an empty value is null, as in a file: `keep_last=` keeps all
        except (yaml.YAMLError, untrusted.Unreadable):
            parsed = value
    target = raw
    for depth, name in enumerate(parts[:-1], 1):
        if target.get(name) is None:  # absent, or `lora: null` as a saved config writes it
            target[name] = {}
        target = target[name]
        if not isinstance(target, dict):
            where = ".".join(parts[:depth])
            if depth == 1:
                raise UserError(f"{where} must be a mapping of keys to values")
            raise UserError(f"override '{elided(override)}': {where} is a value, not a group of keys")
    target[parts[-1]] = parsed
