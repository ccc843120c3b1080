"""How much memory one training step needs, by formula (no model is built).

Memory for one training step on one process, in bytes (P parameters, micro-batch B x T tokens,
L layers, hidden d, MLP m, key/value width kv = num_kv_heads * head_dim, nh heads, vocabulary V,
N = the FSDP shard degree, 1 without FSDP):

- weights 4P/N, gradients 4P/N, AdamW state 8P/N (exp_avg and exp_avg_sq; with optimizer: muon,
  the block matrices Muon takes keep one momentum buffer, 4 bytes each): all float32,
  whatever device_config.dtype says (autocast computes in bf16/fp16; it keeps float32 weights).
  With LoRA (training_config.lora) only the A adapters' parameters train: weights 4(P + A),
  gradients 4A, AdamW state 8A (adapters always train with AdamW), and no gradient for the
  frozen output matrix.
  With bf16/fp16 autocast also caches a 2-byte copy of every matrix: + 2P (not under FSDP with
  bfloat16, whose gathered weights are already bfloat16).
- FSDP's gathered weights (2 bytes each with bfloat16, else 4): the root (embedding, final norm,
  output) and two blocks (the one computing, the next being gathered). With gradient
  accumulation (train/dist.py micro_batch) the gradients are kept whole in float32 until the
  last micro-batch: + 4P (4A with LoRA); and the weights stay gathered from the end of one
  micro-batch's backward pass to the next one's forward, which gathers them once more as it goes
  (reshard_after_forward) and frees each block after it: at that moment the activations are
  gone, so the step holds the larger of the activations and the weights outside the root and two
  blocks, (P - root - 2 blocks) x 2 (or 4). The sharded gradients 4P/N are then not held beside
  the whole ones: the last backward pass reduce-scatters them a block at a time and frees that
  block's whole ones, so they count two blocks' float32 gradients (the block's fresh gradient and
  its copy being reduce-scattered), if less than 4P/N. Measured on CPU with 2 gloo processes
  (tests/test_fsdp_memory.py, 2026-11-30, 2-core CPU machine, torch 2.13; nano, float32, 4 x 64
  tokens): the accumulated step's peak is 4P (19.8 MiB) above the single step's (19.9 MiB with 2
  shards, 17.7 with one); the formula with both gradients in full was 7.1 MiB (2 shards) and
  21.9 MiB (one) above the measured peak, and is now 3.9 and 8.7 MiB above it. Without the
  sharded term at all it would be 2.6 MiB below it with 2 shards (pytest
  tests/test_fsdp_memory.py -k holds_the_whole).
  A step of one micro-batch holds no gradient when its backward pass starts (zero_grad sets
  them to None); that pass makes the sharded gradients a block at a time as it frees the
  activations, so what it holds moves from all the activations to all the sharded gradients (and,
  with activation checkpointing, the first block's activations recomputed at the last): the step
  counts the larger of the two, kept in the activations' place, and the two blocks' gradients
  being sharded. Measured the same way (nano, 4 x 64 tokens, float32 and bfloat16, with and
  without checkpointing, 2 shards and one): 2.8 to 7.0 MiB above each peak; counting both in full
  was 0.2 MiB below (float32, checkpointing, 2 shards) to 20.0 MiB above (float32, one shard);
  without the sharded gradients it would be up to 17.4 MiB below.
- activations saved for the backward pass, per token:
  float32:    L * (6d + 2kv + 4m + nh + 2) * 4
  bf16/fp16:  L * ((2d + nh + 2) * 4 + (7d + 2kv + 4m) * 2)   (RMSNorm keeps float32; autocast
              casts the normalised input once per projection: for wq, wk, wv and for w1, w3)
  FSDP2 with bfloat16: L * ((2d + nh + 2) * 4 + (4d + 2kv + 4m) * 2): the weights are gathered in
              bfloat16, so the residual stream and the projections' inputs are bfloat16 already
  with activation checkpointing only each block's input is kept, L * d * s, plus one block's
  activations while it is recomputed (s, the residual stream's bytes: 2 under FSDP2 with
  bfloat16, else 4);
  plus d * 4 + d * s + 4 + 8 for the final norm, the loss's gradient for it and the token ids,
  and, once per step, the loss's float32 gradient for the output matrix, V * d * 4.
  Each line matches, within 1%, the tensors autograd saves for this model on CPU (tested in
  tests/test_plan.py with saved-tensor hooks; bfloat16 with and without FSDP2, with and without
  checkpointing). The half-precision lines assume fused attention (flash / memory-efficient SDPA)
  that keeps no T x T matrix, as torch's CPU attention in bfloat16 does too.
- without FSDP (plain or DDP), the backward pass's working memory: two float32 gradients of the residual
  stream per token (the one flowing back, the one being made: 2 * d * 4) and one block's fresh
  float32 weight gradients (4 bytes a parameter of a block). A step of one micro-batch holds no
  gradient when its backward pass starts (zero_grad sets them to None) and makes them as it frees
  the activations: it holds the larger of the activations and logits and all the gradients (with
  checkpointing, plus the first block recomputed at the last, with its input), never both
  (Memory.overlap takes the smaller off). A step of several micro-batches holds the earlier ones'
  gradients beside the activations. Measured on CPU in one process (tests/test_plain_memory.py,
  2026-11-30, torch 2.13; nano, 4 and 16 x 64 tokens, float32 and bfloat16, checkpointing on and
  off, AdamW and Muon, compile off: 32 steps): counting both in full, the single step was 3.4 to
  19.9 MiB above its peak and the accumulated one 2.4 MiB below to 9.4 above; now 0.7 to 4.6 MiB
  above (bfloat16 with checkpointing: 6.2 to 14.4 above, the autocast copy counted whole). CPU
  peaks (resident memory); not measured on a GPU.
  Under DDP the gradients live in its all-reduce buckets (gradient_as_bucket_view), which stay
  allocated whatever zero_grad sets to None: nothing is taken off for overlap; and the micro-batches
  before the last one (no_sync) make gradients of their own beside the buckets: + 4P (4A with
  LoRA) with accumulation. Measured with 2 gloo processes (tests/test_ddp_memory.py, 2026-11-30,
  torch 2.13; nano, 4 and 16 x 64 tokens, float32 and bfloat16, checkpointing on and off, AdamW
  and Muon): without these terms the formula was 0.7 to 2.1 MiB below the single step's peak and
  20.7 to 21.5 MiB below the accumulated one's; now 2.7 to 3.8 MiB above each (bfloat16 with
  checkpointing: 14.5 to 14.9 above, the autocast copy counted whole, as in one process).
- the loss's working memory: one chunk of float32 logits (model/transformer.py computes the loss
  a chunk of at most 2^25 logits at a time), about three tensors of that size.

Not counted: the allocator's cache and fragmentation, the CUDA context (about 0.5 GiB), the
temporary buffers of individual kernels and of the collectives; the plan asks for 10% headroom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trickster.config import MAX_ACCUMULATION, Config
from trickster.cpu_memory import machine_memory, process_share
from trickster.errors import UserError
from trickster.model import transformer
from trickster.model.flops import adapter_parameters, parameter_breakdown
from trickster.train import launch_env

HEADROOM = 0.9  # use at most this fraction of the device's memory

GiB = 1024**3


@dataclass
class Memory:
    weights: int
    gradients: int
    optimizer: int
    autocast_copy: int
    activations: int
    logits: int  # the loss's working memory: one chunk of float32 logits
    gathered: int = 0  # FSDP: weights gathered for computing, and whole gradients between micro-batches
    shards: int = 1  # the FSDP shard degree the state is divided by
    loss_gradient: int = 0  # the loss's float32 gradient for the output matrix, once per step
    # FSDP: what the step holds where its activations and logits were, once freed: with
    # accumulation the weights gathered between micro-batches (but the working ones), else the
    # sharded gradients, which the backward pass makes as it frees the activations
    kept: int = 0
    accumulated: bool = False  # FSDP over several micro-batches: whole gradients, `kept` weights
    # without FSDP: the backward pass's working memory (two float32 gradients of the residual
    # stream per token, one block's fresh weight gradients); without DDP too, what a step of one
    # micro-batch never holds at once: the gradients it makes as it frees the activations
    backward: int = 0
    overlap: int = 0

    @property
    def kept_beyond(self) -> int:
        """What `kept` adds to the step: only what exceeds the activations and logits, which are
        freed by then."""
        return max(0, self.kept - self.activations - self.logits)

    @property
    def least(self) -> int:
        """What a step needs whatever its micro-batch: the state, and what FSDP keeps where the
        activations were."""
        return self.state + self.kept

    @property
    def state(self) -> int:
        """What does not depend on the batch."""
        fixed = self.weights + self.gradients + self.optimizer + self.autocast_copy + self.gathered
        return fixed + self.loss_gradient

    @property
    def total(self) -> int:
        return self.state + self.activations + self.logits + self.kept_beyond + self.backward - self.overlap


def activation_bytes_per_token(cfg: Config) -> int:
    """Bytes of activations saved for the backward pass per token of the micro-batch (formula above)."""
    m = cfg.model
    d, L = m.hidden_dim, m.num_layers
    stream = _stream_bytes(cfg)
    per_layer = block_activation_bytes_per_token(cfg)
    blocks = L * d * stream + per_layer if cfg.device.activation_checkpointing else L * per_layer
    return blocks + d * 4 + d * stream + 4 + 8


def block_activation_bytes_per_token(cfg: Config) -> int:
    """One block's activations saved for the backward pass per token (with activation
    checkpointing: the block being recomputed)."""
    m = cfg.model
    d, nh = m.hidden_dim, m.num_heads
    kv = m.kv_heads * m.head_dim
    if cfg.device.dtype in ("float32", "auto"):
        return (6 * d + 2 * kv + 4 * m.mlp_dim + nh + 2) * 4
    per_layer = (2 * d + nh + 2) * 4 + (4 * d + 2 * kv + 4 * m.mlp_dim) * 2
    return per_layer + (3 * d * 2 if _stream_bytes(cfg) == 4 else 0)  # casts for wk, wv (beside wq's), w3


def _stream_bytes(cfg: Config) -> int:
    """The residual stream's bytes per value. FSDP2 with bfloat16 gathers bfloat16 weights: the
    stream is bfloat16, and each projection's input is already bfloat16 (autocast casts a float32
    one anew for every projection)."""
    return 2 if cfg.device.enable_fsdp and cfg.device.dtype == "bfloat16" else 4


def activation_bytes(cfg: Config, tokens: int) -> int:
    """Activations of a micro-batch of `tokens`, with the loss's gradient for the output matrix."""
    return tokens * activation_bytes_per_token(cfg) + cfg.model.vocab_size * cfg.model.hidden_dim * 4


def shard_degree(cfg: Config, processes: int) -> int:
    """Over how many processes FSDP shards the model state (1 without FSDP)."""
    if not cfg.device.enable_fsdp:
        return 1
    return cfg.device.mesh_shape[1] if cfg.device.mesh_shape else processes


def memory_estimate(
    cfg: Config,
    batch_size: int | None = None,
    seq_len: int | None = None,
    processes: int = 1,
    accumulating: bool | None = None,
) -> Memory:
    """Bytes for one training step on one process at cfg's micro-batch (or the one given), of
    several micro-batches if `accumulating` (None: as cfg's gradient_accumulation_steps says), in
    a job of `processes` trained as launch_env.parallel_mode says (several without FSDP: DDP, asked
    or not)."""
    b = parameter_breakdown(cfg.model)
    ddp = launch_env.parallel_mode(cfg.device, processes) == "ddp"
    P, shards = b.total, shard_degree(cfg, processes)
    lora = cfg.training.lora
    adapters = 0 if lora is None else adapter_parameters(cfg.model, lora)
    trained = P if lora is None else adapters  # LoRA freezes every weight of the model
    muon = 0  # the block matrices: everything in the blocks but their two norm weights
    if cfg.training.optimizer == "muon" and lora is None:
        muon = b.blocks - 2 * cfg.model.hidden_dim * cfg.model.num_layers
    tokens = (batch_size or cfg.training.batch_size) * (seq_len or cfg.seq_len)
    if accumulating is None:
        accumulating = cfg.training.gradient_accumulation_steps > 1
    half = cfg.device.dtype in ("bfloat16", "float16")
    gathered, kept, autocast_copy = 0, 0, 2 * P if half else 0
    # activation checkpointing ends the backward pass recomputing the first block's activations
    # (without FSDP, from its float32 input), when (nearly) every gradient is made: a step of one
    # micro-batch holds those beside them
    recomputed = tokens * block_activation_bytes_per_token(cfg) if cfg.device.activation_checkpointing else 0
    gradients = 4 * trained // shards
    if cfg.device.enable_fsdp:
        width = 2 if cfg.device.dtype == "bfloat16" else 4  # the MixedPrecisionPolicy's weights
        working = min(b.embedding + b.output + b.final_norm + 2 * b.per_block, P)
        gathered = working * width
        if accumulating:  # whole float32 gradients; the other weights gathered between micro-batches
            gathered, kept = gathered + 4 * trained, (P - working) * width
            if lora is None:  # the sharded ones are made as the whole ones go, a block at a time
                gradients = min(gradients, 2 * 4 * b.per_block)
        elif lora is None:  # the sharded ones are made a block at a time as the activations go
            gradients, kept = min(gradients, 2 * 4 * b.per_block), gradients + recomputed
        autocast_copy = 2 * working if half and width == 4 else 0
    chunk = min(tokens, max(1, transformer.LOSS_CHUNK_ELEMENTS // cfg.model.vocab_size))
    activations, logits = tokens * activation_bytes_per_token(cfg), 3 * chunk * cfg.model.vocab_size * 4
    backward = overlap = 0
    if ddp and accumulating:  # no_sync's gradients beside the all-reduce buckets
        gradients *= 2
    if not cfg.device.enable_fsdp:
        backward = 2 * tokens * cfg.model.hidden_dim * 4 + min(4 * b.per_block, 4 * trained)
        # DDP's buckets hold the gradients from step to step: nothing is made as the activations go
        if not (accumulating or ddp):  # zero_grad left none: made as they go
            block_input = tokens * cfg.model.hidden_dim * 4 if cfg.device.activation_checkpointing else 0
            overlap = max(0, min(gradients, activations + logits - recomputed - block_input))
    return Memory(
        weights=4 * (P + adapters) // shards,
        gradients=gradients,
        optimizer=(8 * (trained - muon) + 4 * muon) // shards,
        autocast_copy=autocast_copy,
        activations=activations,  # no T x T term (fused attention)
        logits=logits,
        gathered=gathered,
        shards=shards,
        loss_gradient=activation_bytes(cfg, 0) if lora is None else 0,  # LoRA: the output is frozen
        kept=kept,
        accumulated=cfg.device.enable_fsdp and accumulating,
        backward=backward,
        overlap=overlap,
    )


def fitting_batch(
    cfg: Config, budget: float, processes: int = 1, most: int | None = None, alone: bool = False
) -> int:
    """The largest micro-batch (at most `most`) whose step fits in `budget` bytes by the formula
    (0: not even one), on each of `processes` (FSDP shards the state over them). A micro-batch
    smaller than a process's share of the step (windows_per_process) accumulates, and under FSDP2
    an accumulated step holds more than one micro-batch's (memory_estimate): such a micro-batch is
    fitted with the accumulated step's memory; `alone`: the largest whose step of that one
    micro-batch fits, with no accumulation (the step's windows lowered to it). The loss's working
    memory stops growing once a chunk of logits is full (LOSS_CHUNK_ELEMENTS: mega's 32000-word
    vocabulary fills it at 1,048 tokens, less than one window), so a window more adds its
    activations alone: found by search over memory_estimate, not by dividing by a window's
    activations and logits."""
    share = windows_per_process(cfg, processes)

    def fits(accumulating: bool):
        return lambda batch: memory_estimate(cfg, batch, None, processes, accumulating).total <= budget

    if alone or most is None or most >= share:
        single = _largest(fits(accumulating=False))
        if alone or single >= share:
            return single if most is None else min(single, most)
    accumulated = _largest(fits(accumulating=True))  # no more than `single`: below the share
    return accumulated if most is None else min(accumulated, most)


def _largest(fits) -> int:
    """The largest batch >= 1 that `fits` (0: none), for a `fits` true up to some batch only."""
    fitting, failing = 0, 1
    while fits(failing):  # every window adds activations: ends
        fitting, failing = failing, 2 * failing
    while failing - fitting > 1:
        middle = (fitting + failing) // 2
        fitting, failing = (middle, failing) if fits(middle) else (fitting, middle)
    return fitting


# what a job's step of several micro-batches holds beyond one micro-batch's (accumulation_cost), by
# how it trains (launch_env.parallel_mode), and what else makes room for it ("": nothing but
# giving the accumulation up)
ACCUMULATION_HOLDS = {
    "fsdp": (
        "FSDP2 keeps whole float32 gradients and the gathered weights between micro-batches",
        "shard over more processes",
    ),
    "ddp": (
        "DDP keeps a second float32 copy of the gradients beside its all-reduce buckets",
        "shard the model over several processes instead (device_config.enable_fsdp=true)",
    ),
    "single": ("the earlier micro-batches' gradients are kept beside the activations", ""),
}


def accumulation_cost(cfg: Config, processes: int = 1) -> tuple[int, int]:
    """(more, kept): what a step of several micro-batches of one window holds beyond a step of that
    one micro-batch, by the formula: under FSDP2 `more` bytes all along (whole float32 gradients)
    and, between micro-batches, `kept` bytes of gathered weights where the activations were; under
    DDP the gradients no_sync makes beside the all-reduce buckets (`more`); in one process the
    gradients that a step of one micro-batch makes only as it frees the activations (`more`)."""
    single = memory_estimate(cfg, 1, None, processes, accumulating=False)
    accumulated = memory_estimate(cfg, 1, None, processes, accumulating=True)
    if cfg.device.enable_fsdp:
        return accumulated.state - single.state, accumulated.kept
    return accumulated.total - single.total, 0


def beyond_one_process(cfg: Config, processes: int, accumulating: bool) -> tuple[int, int]:
    """(more, kept): what a process of the job holds beyond one process training the whole model
    alone, as batch_size: auto's trial copy does, by the formula: under FSDP2 the weights it
    gathers and, `accumulating`, whole float32 gradients all along (`more`, never below 0: the
    sharded state's savings are not counted) and the gathered weights between micro-batches
    (`kept`, where the activations were). Without accumulation the sharded gradients, which the
    formula keeps where the activations were, count in `more`: the trial copy's measured step is
    its state, its whole gradients included, and its activations, whichever it holds at once."""
    plain = memory_estimate(one_process(cfg), 1, None, 1, accumulating=False)
    step = memory_estimate(cfg, 1, None, processes, accumulating)
    if not accumulating:
        return max(0, step.least - plain.state), 0
    return max(0, step.state - plain.state), step.kept


def one_process(cfg: Config) -> Config:
    """cfg for the whole model trained alone in one process, as batch_size: auto's trial copy is."""
    alone = cfg.model_copy(deep=True)
    alone.device.enable_fsdp = alone.device.enable_ddp = False
    alone.device.mesh_shape = None
    return alone


def windows_per_process(cfg: Config, processes: int = 1) -> int:
    """The windows each of `processes` computes per optimizer step: its micro-batches together."""
    t = cfg.training
    if t.batch_size == "auto":
        return global_windows(cfg, processes) // processes
    return t.batch_size * t.gradient_accumulation_steps


def global_windows(cfg: Config, world_size: int = 1) -> int:
    """batch_size: auto's target, windows per optimizer step over all processes (a multiple of them)."""
    t = cfg.training
    if t.global_batch is None:
        return max(1, round(t.global_batch_tokens / cfg.seq_len / world_size)) * world_size
    if t.global_batch % world_size:
        raise UserError(
            f"training_config.global_batch ({t.global_batch}) must be a multiple of the "
            f"{world_size} processes; choose another global_batch"
        )
    return t.global_batch


def split_global_batch(windows: int, world_size: int, fit: int) -> tuple[int, int]:
    """(micro-batch <= fit, accumulation) whose product with world_size is `windows`: the fewest
    accumulation steps that divide each process's share exactly, up to twice the fewest that
    could do (and MAX_ACCUMULATION); otherwise the fewest, and the global batch rounds up by less
    than one micro-batch per step. More than MAX_ACCUMULATION is refused in one line."""
    share = windows // world_size
    fewest = math.ceil(share / max(fit, 1))
    if fewest > MAX_ACCUMULATION:  # and the search below would try as many divisors
        raise UserError(
            f"batch_size auto: a global batch of {windows:,} windows takes {fewest:,} micro-batches of "
            f"{max(fit, 1):,} per step on each of {world_size} process(es), more than the "
            f"{MAX_ACCUMULATION:,} gradient_accumulation_steps allows; lower training_config.global_batch "
            "(or global_batch_tokens)"
        )
    exact = next((a for a in range(fewest, min(2 * fewest, MAX_ACCUMULATION) + 1) if share % a == 0), None)
    accumulation = exact or fewest
    return math.ceil(share / accumulation), accumulation


def memory_limit(
    cfg: Config, device: torch.device, local_processes: int = 1, named: tuple[int, str] | None = None
) -> tuple[int, str]:
    """device_config.memory_gib in bytes if set, else process_memory's; and what it is."""
    if cfg.device.memory_gib is not None:
        return int(cfg.device.memory_gib * GiB), "device_config.memory_gib"
    return process_memory(device, local_processes, named)


def process_memory(
    device: torch.device, local_processes: int = 1, named: tuple[int, str] | None = None
) -> tuple[int, str]:
    """The memory one of a job's `local_processes` on this machine has, and what it is: a CUDA
    process has its GPU to itself; the others share the RAM (a CPU's, or an Apple GPU's unified
    memory) and a cgroup's limit, and each has its share, or its own ulimit if less. `named`: the
    memory of a GPU that is not here (`trickster plan --gpu`), and what it is, instead of the
    device's."""
    capacity, what = named or device_memory(device)
    return (capacity, what) if device.type == "cuda" else process_share(capacity, what, local_processes)


def device_memory(device: torch.device) -> tuple[int, str]:
    """Total memory of the device in bytes, and what it is (on a CPU, what all of its processes
    share: no ulimit, which process_memory applies to each)."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return props.total_memory, f"GPU memory ({props.name})"
    if device.type == "mps":
        return torch.mps.recommended_max_memory(), "Metal recommended working set"
    return machine_memory()  # RAM, or the cgroup's limit below it


def size_text(n: float) -> str:
    """Bytes in MiB below a GiB, else in GiB; in powers of ten once too many to read digit by digit."""
    gib = n / GiB
    if gib < 1:
        return f"{n / 2**20:,.1f} MiB"
    return f"{gib:,.1f} GiB" if gib < 1e6 else f"{gib:.1e} GiB"
