"""One process of a job whose memory is measured (used by tests/test_fsdp_memory.py):

    python -m tests.peak_child OUT train --config run.yaml    # `trickster train ...`
    python -m tests.peak_child OUT steps DTYPE CHECKPOINTING MESH  # nano's steps under FSDP2
                                                                   # (MESH: "2", or "2x1": one shard)
    python -m tests.peak_child OUT resume --config run.yaml --resume   # what the load brings in
    python -m tests.peak_child OUT plain DTYPE CHECKPOINTING OPTIMIZER WINDOWS  # one process, no
                                                                   # FSDP or DDP: nano's steps
    python -m tests.peak_child OUT load MODEL_CONFIG_JSON WEIGHTS     # weight_loading.load_weights alone

`resume` (tests/test_dist.py) writes, instead, how many bytes the process brought into memory from
its files while Trainer.load ran: what it read through read() and the like (/proc/self/io rchar),
and the file pages it has resident more than before (RssFile), the loaded trainer.pt kept alive
until then (its mapped pages stay counted).

`load` (tests/test_checkpoint.py) writes what weight_loading.load_weights of the safetensors file WEIGHTS
into a model of MODEL_CONFIG_JSON (a ModelConfig's fields, in JSON) adds to the process's resident
memory at its peak ("added", file pages of a mapped file included), and to its anonymous memory,
its own, as read before each copy into a tensor ("anon_added"), the model's own memory already
resident before the load; and the SHA-256 of each loaded parameter's bytes.

Each process writes OUT.RANK, a JSON object of the most bytes a part held at once: every training
step (`train`: {"step": bytes}, the largest), or (`steps`) a step of one micro-batch of 4 windows
of 64 tokens ("single") and one of two ("accumulated"), after a first step that makes the AdamW
state. A part's bytes are the tensors the process keeps from step to step (its weights, counted
from the model's own parameters, and its optimizer state) and what the part adds to the process's
resident memory at its peak: the kernel's high-water mark (VmHWM, reset before the part through
/proc/self/clear_refs) less the resident memory just before it. Every allocation of 64 KiB or more
is its own mapping (mallopt M_MMAP_THRESHOLD), returned to the system when freed, so the resident
memory follows the tensors alive, whichever thread frees them (gloo's threads free some of the
collectives' buffers). Nothing the product computes is read.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import os
import sys
from pathlib import Path

import torch

from trickster import cli
from trickster.config import ModelConfig, load_config
from trickster.model.transformer import Transformer
from trickster.train import checkpoint_load, dist, loop, weight_loading
from trickster.train.device import autocast_for
from trickster.train.optim import build_optimizer

CPU = torch.device("cpu")
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter


def kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def kept_bytes(model, optimizer) -> int:
    """This process's weights (its shards under FSDP2), gradients and optimizer state."""
    local = [getattr(p, "_local_tensor", p) for p in model.parameters()]
    local += [getattr(p.grad, "_local_tensor", p.grad) for p in model.parameters() if p.grad is not None]
    for state in optimizer.state.values():
        local += [getattr(v, "_local_tensor", v) for v in state.values() if isinstance(v, torch.Tensor)]
    return sum(t.numel() * t.element_size() for t in local)


def measured(part, model, optimizer) -> int:
    """The bytes `part()` holds at its peak with the tensors kept from step to step."""
    gc.collect()
    kept, before = kept_bytes(model, optimizer), kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM starts again from the resident memory
    part()
    return kept + kib("VmHWM") - before


def train(argv: list[str]) -> tuple[int, dict[str, int]]:
    step, most = loop.Trainer.step, {"step": 0}

    def measured_step(self):
        result = []
        held = measured(lambda: result.append(step(self)), self.model, self.optimizer)
        most["step"] = max(most["step"], held)
        return result[0]

    loop.Trainer.step = measured_step
    return cli.main(argv), most


def resume(argv: list[str]) -> tuple[int, dict[str, int]]:
    load, load_trainer_state, found, kept = loop.Trainer.load, checkpoint_load.load_trainer_state, {}, []

    def kept_alive(path, **options):
        kept.append(load_trainer_state(path, **options))
        return kept[-1]

    def measured_load(self, path):
        before = read_bytes() + kib("RssFile")
        load(self, path)
        found["brought_in"] = read_bytes() + kib("RssFile") - before

    loop.Trainer.load, checkpoint_load.load_trainer_state = measured_load, kept_alive
    return cli.main(["train", *argv]), found


def load(model_config: str, weights: str) -> tuple[int, dict]:
    model = checkpoint_load.empty_model(ModelConfig(**json.loads(model_config)))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # its pages resident before the load: what the load adds is its own
    gc.collect()
    before, anon = kib("VmRSS"), [kib("RssAnon")]
    copy = torch.Tensor.copy_

    def sampled_copy(tensor, *args, **kwargs):  # what the process holds of its own as each lands
        anon.append(kib("RssAnon"))
        return copy(tensor, *args, **kwargs)

    Path("/proc/self/clear_refs").write_text("5")
    torch.Tensor.copy_ = sampled_copy
    try:
        weight_loading.load_weights(model, Path(weights))
    finally:
        torch.Tensor.copy_ = copy
    found = {"added": kib("VmHWM") - before, "anon_added": max(anon) - anon[0]}
    return 0, {**found, "sha256": digests(model)}


def digests(model) -> dict[str, str]:
    """The SHA-256 of each parameter's bytes, by name."""
    named = model.named_parameters()
    return {name: hashlib.sha256(p.detach().numpy().tobytes()).hexdigest() for name, p in named}


def read_bytes() -> int:
    fields = dict(line.split(": ") for line in Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"])


def steps(dtype: str, checkpointing: str, mesh: str) -> tuple[int, dict[str, int]]:
    overrides = [
        "device_config.enable_fsdp=true",
        "device_config.device=cpu",
        f"device_config.dtype={dtype}",
        f"device_config.activation_checkpointing={checkpointing}",
        "training_config.seq_len=64",
    ]
    if mesh == "2x1":  # replicated over the 2 processes, each holding the whole state
        overrides.append("device_config.mesh_shape=[2,1]")
    cfg, job, model, step_model, optimizer = nano_job(overrides)

    def step(micro_batches: int) -> None:
        for micro in range(micro_batches):
            tokens = torch.randint(0, cfg.model.vocab_size, (4, 65))
            with dist.micro_batch(step_model, job, last=micro == micro_batches - 1):
                with autocast_for(CPU, dtype):
                    _, loss = step_model(tokens[:, :-1], tokens[:, 1:])
                (loss / micro_batches).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step(1)  # AdamW's moments are made by the first step
    found = {
        name: measured(lambda n=n: step(n), model, optimizer)
        for name, n in (("single", 1), ("accumulated", 2))
    }
    dist.shutdown()
    return 0, found


def nano_job(overrides: list[str]):
    """nano with `overrides` in this process's job: (config, job, model, the model steps are taken
    through, optimizer), the model's weights the same in each process."""
    cfg = load_config(preset="nano", overrides=overrides)
    job = dist.setup(cfg.device, "cpu")
    torch.manual_seed(0)
    model = Transformer(cfg.model)
    model.checkpoint_activations = cfg.device.activation_checkpointing
    return cfg, job, model, dist.parallelize(model, job, CPU), build_optimizer(model, cfg.training, CPU)


def plain_overrides(dtype: str, checkpointing: str, optimizer_name: str, ddp: bool = False) -> list[str]:
    """nano's settings in plain's steps: the tests plan the same steps with these."""
    return [
        "device_config.device=cpu",
        f"device_config.dtype={dtype}",
        f"device_config.activation_checkpointing={checkpointing}",
        f"training_config.optimizer={optimizer_name}",
        "training_config.seq_len=64",
        f"device_config.enable_ddp={str(ddp).lower()}",
    ]


def plain(
    dtype: str, checkpointing: str, optimizer_name: str, windows: str, ddp: bool = False
) -> tuple[int, dict[str, int]]:
    """nano's steps in this one process, as the training loop takes them (gradients clipped),
    micro-batches of WINDOWS windows of 64 tokens: one ("single") and two ("accumulated").
    `ddp`: each process of the job takes them through DistributedDataParallel, whose all-reduce
    buckets hold the gradients (gradient_as_bucket_view) from the first backward pass on, whatever
    zero_grad sets to None: their storages, found from the gradients, count as kept."""
    overrides = plain_overrides(dtype, checkpointing, optimizer_name, ddp)
    cfg, job, model, step_model, optimizer = nano_job(overrides)
    buckets: dict[int, int] = {}

    def step(micro_batches: int) -> None:
        for micro in range(micro_batches):
            tokens = torch.randint(0, cfg.model.vocab_size, (int(windows), 65))
            with dist.micro_batch(step_model, job, last=micro == micro_batches - 1):
                with autocast_for(CPU, dtype):
                    _, loss = step_model(tokens[:, :-1], tokens[:, 1:])
                (loss / micro_batches).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if ddp:  # after a rebuild, only the buckets the last backward pass filled are alive
            buckets.clear()
            buckets.update(
                (p.grad.untyped_storage().data_ptr(), p.grad.untyped_storage().nbytes())
                for p in model.parameters()
            )
        optimizer.zero_grad(set_to_none=True)

    step(1)  # the optimizer's state is made by the first step
    if ddp:  # DDP rebuilds its buckets in the order the first backward pass made the gradients
        step(1)
    found = {
        name: sum(buckets.values()) + measured(lambda n=n: step(n), model, optimizer)
        for name, n in (("single", 1), ("accumulated", 2))
    }
    if ddp:
        dist.shutdown()
    return 0, found


if __name__ == "__main__":
    ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, 64 * 1024)
    out, command, *args = sys.argv[1:]
    run = {
        "train": lambda: train([command, *args]),
        "resume": lambda: resume(args),
        "plain": lambda: plain(*args),
        "ddp": lambda: plain(*args, ddp=True),
        "load": lambda: load(*args),
    }
    status, found = run.get(command, lambda: steps(*args))()
    Path(f"{out}.{os.environ.get('RANK', '0')}").write_text(json.dumps(found))
    sys.exit(status)
