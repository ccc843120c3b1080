"""How dist.py builds a job: its process group on GPUs (faked here), the DDP wrapper, FSDP2's
mixed precision and resharding, per-block compile. One process on gloo in this test, and 2
processes where the collectives themselves matter (test_two_processes_...)."""

from __future__ import annotations

import functools
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as td
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh

from trickster.config import config_from_dict
from trickster.errors import UserError
from trickster.model.generate import generate
from trickster.model.transformer import Transformer
from trickster.train import dist, peers

from .conftest import collective_threads

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo process groups on POSIX")
CPU = torch.device("cpu")
MODEL = {
    "vocab_size": 65,
    "hidden_dim": 32,
    "num_layers": 2,
    "num_heads": 4,
    "mlp_dim": 64,
    "max_seq_len": 16,
}


def config(**device):
    return config_from_dict({"model_config": MODEL, "device_config": {"device": "cpu", **device}})


@pytest.fixture
def job_of_one(request):
    """dist.setup for a one-process group (no torchrun), left again at the end of the test."""
    jobs = []

    def make(**device):
        jobs.append(dist.setup(config(**device).device, "cpu"))
        return jobs[-1]

    yield make
    dist.shutdown()


def batch(seed: int = 0):
    x = torch.randint(0, 65, (2, 9), generator=torch.Generator().manual_seed(seed))
    return x[:, :-1], x[:, 1:]


def as_gloo(backend: str) -> str:
    """The backend string with gloo in nccl's place, for the same device types (nccl: CUDA only)."""
    parts = [
        part if ":" in part else f"cuda:{part}" if part == "nccl" else part for part in backend.split(",")
    ]
    return ",".join(part.replace(":nccl", ":gloo") for part in parts)


def test_a_cuda_job_pairs_nccl_with_gloo_and_binds_its_gpu(monkeypatch):
    """nccl has no CPU tensors: a group of nccl alone fails the first CPU collective ("No backend
    type associated with device type cpu"). This CPU stands in for the GPU, with gloo registered
    exactly where the job asks for nccl."""
    seen = {}
    real_init, real_mesh = td.init_process_group, init_device_mesh

    def init(backend, **kwargs):
        seen.update(backend=backend, device_id=kwargs.pop("device_id", None))
        return real_init(as_gloo(backend), **kwargs)

    monkeypatch.setattr(td, "init_process_group", init)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: seen.update(set_device=index))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(dist, "init_device_mesh", lambda kind, *a, **k: real_mesh("cpu", *a, **k))
    try:
        job = dist.setup(config(enable_ddp=True).device, "cuda")
        assert seen == {
            "backend": "cpu:gloo,cuda:nccl",
            "device_id": torch.device("cuda", 0),
            "set_device": 0,
        }
        assert job.device == torch.device("cuda", 0)  # where sum_across and from_rank0 take their tensors
        cpu_tensor = torch.ones(2)
        td.all_reduce(cpu_tensor)  # "No backend type associated with device type cpu" with nccl alone
        assert cpu_tensor.tolist() == [1.0, 1.0]
        assert dist.broadcast({"step": 7}, job) == {"step": 7}  # object collectives go over gloo
    finally:
        dist.shutdown()
    assert as_gloo("nccl") == "cuda:gloo"  # the old string, as this test would have run it


def test_ddp_broadcasts_no_buffers_before_each_forward(job_of_one):
    job = job_of_one(enable_ddp=True)
    ddp = dist.parallelize(Transformer(config().model), job, CPU)
    assert ddp.will_sync_module_buffers() is False and ddp.gradient_as_bucket_view is True
    broadcasts = []
    real = ddp._distributed_broadcast_coalesced
    ddp._distributed_broadcast_coalesced = lambda *a, **k: broadcasts.append(a) or real(*a, **k)
    for seed in range(3):
        ddp(*batch(seed))[1].backward()
    assert broadcasts == []  # the rotary tables are the same everywhere: nothing to send


def forward_dtypes(model) -> list[torch.dtype]:
    seen = []
    model.layers[0].attention.wq.register_forward_hook(
        lambda module, a, out: seen.append(module.weight.dtype)
    )
    return seen


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_fsdp_gathers_bfloat16_weights_for_bfloat16_runs_and_reduces_in_float32(job_of_one, dtype):
    job = job_of_one(enable_fsdp=True, dtype=dtype)
    model = Transformer(config().model)
    dist.parallelize(model, job, CPU)
    seen = forward_dtypes(model)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bfloat16"):
        model(*batch())[1].backward()
    assert seen == [getattr(torch, dtype)]
    grads = {p.grad.dtype for p in model.parameters()}
    assert grads == {torch.float32}  # sharded gradients, reduced in float32, for float32 AdamW state


def test_fsdp_keeps_weights_gathered_between_the_micro_batches_of_a_step(job_of_one):
    job = job_of_one(enable_fsdp=True)
    model = Transformer(config().model)
    step_model = dist.parallelize(model, job, CPU)
    wq = model.layers[0].attention.wq
    kinds = []
    for micro_step in range(3):
        with dist.micro_batch(step_model, job, last=micro_step == 2):
            step_model(*batch(micro_step))[1].backward()
        kinds.append(type(wq.weight).__name__)
    # gathered (a plain tensor) after the first two backward passes, sharded again after the last
    assert kinds == ["Parameter", "Parameter", "DTensor"]


def test_compiled_blocks_under_fsdp_train_like_eager_and_sample_without_compiling(job_of_one, monkeypatch):
    # aot_eager traces and partitions like inductor, without generating C++ on this CPU
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    torch._dynamo.reset()
    job = job_of_one(enable_fsdp=True)
    torch.manual_seed(0)
    eager = Transformer(config().model)
    compiled = Transformer(config().model)
    compiled.load_state_dict(eager.state_dict())
    step_model = dist.parallelize(compiled, job, CPU, compile=True)
    assert all(hasattr(block.forward, "_torchdynamo_orig_callable") for block in compiled.layers)
    assert not any("_orig_mod" in name for name in compiled.state_dict())  # plain names
    for seed in range(2):
        torch.testing.assert_close(step_model(*batch(seed))[1], eager(*batch(seed))[1])
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    tokens = list(generate(compiled, [1, 2, 3], 6, temperature=0))  # FSDP-sharded, under no_grad
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == frames  # nothing compiled
    assert tokens == list(generate(eager, [1, 2, 3], 6, temperature=0))
    torch._dynamo.reset()


def test_fsdp_bfloat16_with_activation_checkpointing_keeps_float32_rotary_tables(job_of_one):
    """FSDP2's bfloat16 policy must not cast the blocks' inputs: the rotary tables stay float32, as
    without FSDP. With the cast, torch before 2.13 failed every backward pass here (its recompute
    skipped the cast: "Recomputed values ... have different metadata")."""
    job = job_of_one(enable_fsdp=True, dtype="bfloat16")
    torch.manual_seed(0)
    model = Transformer(config().model)
    reference = Transformer(config().model)
    reference.load_state_dict(model.state_dict())
    model.checkpoint_activations = True
    step_model = dist.parallelize(model, job, CPU)
    tables = []
    model.layers[1].register_forward_pre_hook(lambda block, args: tables.append(args[1].dtype))
    losses = []
    for net in (step_model, reference):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = net(*batch())[1]
        loss.backward()
        losses.append(loss.item())
    assert tables == [torch.float32, torch.float32]  # the forward pass, then its recompute
    assert losses[0] == pytest.approx(losses[1], rel=2e-2)  # bfloat16 weights against autocast's
    assert model.layers[0].attention.wq.weight.grad is not None


def test_sampling_a_bfloat16_sharded_model_keeps_its_kv_cache(job_of_one):
    """FSDP2's bfloat16 policy used to replace the KV cache handed to the model's forward by a
    cast copy, so the cache never grew and each token saw only itself; the tokens must be those of
    decoding without a cache."""
    job = job_of_one(enable_fsdp=True, dtype="bfloat16")
    torch.manual_seed(0)
    model = Transformer(config().model)
    for weight in model.parameters():
        weight.data.normal_(0, 0.5)  # an untrained model repeats one token whatever it sees
    dist.parallelize(model, job, CPU)
    prompt = [5, 9, 2, 7]
    cached = list(generate(model, prompt, 10, temperature=0, dtype=job.gathered_dtype))
    uncached = list(generate(model, prompt, 10, temperature=0, dtype=job.gathered_dtype, use_cache=False))
    assert cached == uncached and len(set(cached)) > 2


def _two_process_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    td.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        result = _gather_shards_and_sync_replicas(rank)  # what holds the groups ends with the call
        td.barrier()  # neither process leaves while the other still talks to it (gloo aborts then)
    finally:
        dist.shutdown()  # as `trickster train` leaves a job
    result["threads_left"] = collective_threads()
    Path(out, f"{rank}.json").write_text(json.dumps(result))


def _gather_shards_and_sync_replicas(rank: int) -> dict:
    mesh = init_device_mesh("cpu", (1, 2), mesh_dim_names=("replicate", "shard"))
    job = dist.Dist(rank, 2, rank, "fsdp", mesh, CPU, "bfloat16")
    torch.manual_seed(0)
    model = Transformer(config().model)
    step_model = dist.parallelize(model, job, CPU)
    seen = forward_dtypes(model)
    kinds = []
    for micro_step in range(2):
        with dist.micro_batch(step_model, job, micro_step == 1):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = step_model(*batch(2 * rank + micro_step))[1]
            loss.backward()
        kinds.append(type(model.layers[0].attention.wq.weight).__name__)
    ddp_job = replace(job, mode="ddp")
    ddp = dist.parallelize(Transformer(config().model), ddp_job, CPU)
    broadcasts = []
    real = ddp._distributed_broadcast_coalesced
    ddp._distributed_broadcast_coalesced = lambda *a, **k: broadcasts.append(1) or real(*a, **k)
    for seed in range(2):
        ddp(*batch(seed))[1].backward()
    return {
        "dtypes": [str(d) for d in seen],
        "kinds": kinds,
        "ranks": dist.gather(rank, job),
        "broadcasts": len(broadcasts),
    }


@pytest.mark.slow
def test_two_processes_gather_bfloat16_shards_and_keep_them_between_micro_batches(tmp_path):
    mp.start_processes(
        _two_process_worker, args=(dist._free_port(), str(tmp_path)), nprocs=2, start_method="spawn"
    )
    for rank in range(2):
        result = json.loads((tmp_path / f"{rank}.json").read_text())
        assert result["dtypes"] == ["torch.bfloat16"] * 2
        assert result["kinds"] == ["Parameter", "DTensor"]
        assert result["ranks"] == [0, 1]
        assert result["broadcasts"] == 0
        # left running into the interpreter's exit, one aborted the process now and then (SIGABRT,
        # "terminate called without an active exception"): FSDP2's DTensors keep the groups
        assert result["threads_left"] == []


@pytest.mark.parametrize(
    ("error", "told"),
    [
        (RuntimeError("planted"), "process 0 failed (RuntimeError: planted); see its traceback"),
        (KeyboardInterrupt(), "process 0 was stopped (KeyboardInterrupt)"),
    ],
)
def test_what_rank_0_tells_the_others_when_it_fails_outside_a_user_error(error, told, monkeypatch):
    """rank 0 raises its own error and hands the others one line: a traceback to look for only when
    it printed one (an interrupt prints none)."""
    from trickster.train import rank0

    sent = []
    monkeypatch.setattr(dist, "broadcast", lambda obj, job: sent.append(obj) or obj)

    def fails():
        raise error

    with pytest.raises(type(error)):
        rank0.on_main(dist.Dist(), fails)  # rank 0 of a single process; broadcast recorded
    assert [str(e) for e in sent] == [told]


# what gloo raises in a collective when the process at the other end of a connection is gone
GLOO_LOST = RuntimeError(
    "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:50907: Connection "
    "reset by peer. This is typically caused by a remote worker hanging or bugs in the application."
)


def _lost(obj, job):
    raise GLOO_LOST


@pytest.mark.parametrize(
    ("rank", "who"),
    [
        (
            0,
            "another process of the job ended without a word (killed?) or stopped answering while process 0 "
            "gave it its answer",
        ),
        (
            1,
            "process 0 of the job ended without a word (killed?) or stopped answering while the others "
            "waited for its answer",
        ),
    ],
)
def test_a_process_that_ends_without_a_word_while_rank_0_answers_leaves_one_line(rank, who, monkeypatch):
    """A process killed (SIGKILL) while rank 0 hands out what it did for the job (rank0.on_main):
    gloo's error becomes one line, on rank 0 (whose answer no longer reaches it) and on the
    others (tests/test_dist.py kills rank 0 for real)."""
    from trickster.train import rank0

    monkeypatch.setattr(dist, "broadcast", _lost)
    with pytest.raises(peers.PeerLost) as ended:
        rank0.on_main(dist.Dist(rank=rank, world_size=2, mode="ddp"), lambda: "the answer")
    reason = "Read error [127.0.0.1]:50907: Connection reset by peer"
    assert str(ended.value) == f"{who}: {reason}; see torchrun's summary for which process and why"


def test_inside_a_step_s_guard_that_line_names_the_step_and_the_checkpoint(tmp_path, monkeypatch):
    """Inside recovery.guard (a checkpoint rank 0 writes) the guard words the lost process as for
    any failed collective: with its step and the checkpoint to continue from."""
    from types import SimpleNamespace

    from trickster.observe.events import NoMetrics
    from trickster.train import rank0, recovery
    from trickster.train.async_save import Writer
    from trickster.train.state import TrainState

    monkeypatch.setattr(dist, "broadcast", _lost)
    job = dist.Dist(rank=1, world_size=2, mode="ddp")
    trainer = SimpleNamespace(
        job=job,
        run_dir=tmp_path,
        cfg=config(timeout_s=30),
        metrics=NoMetrics(),
        state=TrainState(),
        writer=Writer(False, job, None, print),  # saves on the training thread: none in flight
    )
    with pytest.raises(UserError) as ended, recovery.guard(trainer, "a checkpoint", 10):
        rank0.on_main(job, lambda: "saved")
    assert str(ended.value) == (
        "another process of the job ended or stopped answering (within device_config.timeout_s=30 s) during "
        "a checkpoint at step 10: Read error [127.0.0.1]:50907: Connection reset by peer; see torchrun's "
        "summary for which one and why; no checkpoint was saved yet"
    )


# what torch 2.11's ProcessGroupNCCL raises (DistBackendError, texts from its NCCLUtils and
# ProcessGroupNCCL; a GPU of its own per process, so never seen on this machine) and the few words kept
NCCL_TEXTS = [
    (
        "NCCL error in: /pytorch/torch/csrc/distributed/c10d/NCCLUtils.cpp:77, remote process exited or "
        "there was a network error, NCCL version 2.27.7\nncclRemoteError: A call failed possibly due to a "
        "network error or a remote process exiting prematurely.\nLast error:\nsocketProgress: Connection "
        "closed by remote peer gpu-2<56278>",
        "ncclRemoteError: A call failed possibly due to a network error or a remote process exiting "
        "prematurely",
    ),
    (
        "NCCL communicator was aborted on rank 1.  Original reason for failure was: [PG ID 0 PG GUID "
        "0(default_pg) Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=12, "
        "OpType=ALLREDUCE, NumelIn=3, NumelOut=3, Timeout(ms)=30000) ran for 30004 milliseconds before "
        "timing out.",
        "Watchdog caught collective operation timeout: WorkNCCL(SeqNum=12, OpType=ALLREDUCE, NumelIn=3, "
        "NumelOut=3, Timeout(ms)=30000) ran for 30004 milliseconds before timing out",
    ),
    ("NCCL communicator was aborted on rank 3. ", "NCCL communicator was aborted on rank 3"),
]


@pytest.mark.parametrize(("text", "reason"), NCCL_TEXTS)
def test_nccl_s_words_for_a_lost_process_are_a_lost_peer(text, reason):
    """On GPUs the collectives run on NCCL, whose errors are DistBackendErrors worded otherwise than
    gloo's: each that says a peer is gone or silent is a lost peer, in its own few words."""
    job = dist.Dist(rank=0, world_size=2, mode="fsdp")
    assert peers.lost_peer(td.DistBackendError(text), job) == reason
    assert peers.lost_peer(td.DistBackendError(text), dist.Dist()) is None  # not in a job: never


def test_other_nccl_errors_and_a_lost_store_are_told_apart():
    """An NCCL error that names no lost peer is a fault here (a traceback, not 'another process
    ended'); the store's host gone (rank 0's machine: a DistNetworkError) is a lost peer."""
    job = dist.Dist(rank=1, world_size=2, mode="ddp")
    here = (
        "NCCL error in: /pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:3356, unhandled cuda "
        "error (run with NCCL_DEBUG=INFO for details), NCCL version 2.27.7\nncclUnhandledCudaError: Call "
        "to CUDA function failed.\nLast error:\nCuda failure 2 'out of memory'"
    )
    assert peers.lost_peer(td.DistBackendError(here), job) is None
    assert peers.lost_peer(RuntimeError("CUDA error: an illegal memory access was encountered"), job) is None
    store = (
        "[/pytorch/torch/csrc/distributed/c10d/TCPStore.cpp:125] recvValue failed on SocketImpl(fd=5, "
        "addr=[localhost]:49424, remote=[localhost]:29500): failed to recv, got 0 bytes"
    )
    assert peers.lost_peer(td.DistNetworkError(store), job) == store.split("] ", 1)[1]


LOST_LAUNCHER = (
    "the job's torchrun launcher or another of its processes ended or stopped answering (within "
    "device_config.timeout_s=7 s) while this process joined the job: "
)


def test_a_store_lost_while_the_device_mesh_is_made_is_one_line(monkeypatch):
    """torchrun's launcher killed after this process reached its store, as the mesh's groups are
    made through it: the DistNetworkError seen then for real (2 CPU workers, torchrun killed
    once they held their store connections; tests/test_dist.py kills it earlier, for good) becomes
    one line, and the process group joined so far is left by the caller (commands.train_command)."""
    env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}
    for name, value in {**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(dist._free_port())}.items():
        monkeypatch.setenv(name, value)

    def store_gone(*args, **kwargs):
        raise td.DistNetworkError("Connection reset by peer")

    monkeypatch.setattr(dist, "init_device_mesh", store_gone)
    try:
        with pytest.raises(UserError) as ended:
            dist.setup(config(enable_ddp=True, timeout_s=7).device, "cpu")
    finally:
        dist.shutdown()
    assert str(ended.value).startswith(f"{LOST_LAUNCHER}Connection reset by peer; nothing was trained")


@pytest.mark.parametrize(
    ("error", "launched", "said"),
    [
        (td.DistNetworkError("Failed to recv, got 0 bytes. Connection was likely closed."), True, True),
        (td.DistStoreError("Timed out after 8 seconds waiting for clients. 1/2 clients joined."), True, True),
        (RuntimeError("[../gloo/transport/tcp/pair.cc:144] Connection refused"), True, True),
        (td.DistNetworkError("Connection reset by peer"), False, False),  # a group of one: a bug
        (td.DistBackendError("ncclUnhandledCudaError: Call to CUDA function failed."), True, False),
        (RuntimeError("CUDA error: out of memory"), True, False),
    ],
)
def test_joining_tells_a_lost_launcher_from_other_faults(error, launched, said):
    """What the store or gloo say of a launcher or peer gone, while a process launched by torchrun
    joins its job, is one line; anything else (a GPU's fault, a group trickster made for itself)
    keeps its traceback."""
    with pytest.raises(type(error) if not said else UserError) as ended, peers.joining(7, launched):
        raise error
    assert str(ended.value).startswith(LOST_LAUNCHER) == said
