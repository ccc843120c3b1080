"""What a process of a torchrun job says when the rest of the job is gone, in one line instead of
torch.distributed's traceback:

    lost_peer, PeerLost   a collective failed because another process of the job ended or went
                          silent (recovery.guard and rank0.on_main word the line)
    joining               while this process joins the job (dist.setup), the torchrun launcher,
                          which keeps the job's store, or another process is gone

A torchrun launcher killed with SIGKILL (by hand, or by a scheduler that spares its workers) takes
no worker with it. A worker still joining the job waits for the store for device_config.timeout_s,
then ends here. Workers that have joined go on training (a collective needs the other workers,
not the store; seen with gloo on CPU, DDP and FSDP2) and end as the run does; meanwhile they hold
the run folder's lock, so a new job started there is refused in one line naming the process.

Only the error types of torch.distributed are read here; dist.py and dist_checkpoint.py run it.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

import torch.distributed as dist

from trickster.errors import UserError

if TYPE_CHECKING:
    from trickster.train.dist import Dist


class PeerLost(UserError):
    """The one line of a process whose collective outside recovery.guard failed because another
    process of the job ended or went silent (rank0.on_main); a guard words it with its step, from
    `reason` (lost_peer's)."""

    def __init__(self, line: str, reason: str):
        super().__init__(line)
        self.reason = reason


# what torch 2.11's NCCL says of a peer gone or silent, the most telling first: its watchdog's
# timeout (also the "original reason" of an aborted communicator), a blocking wait's, NCCL's own
NCCL_LOST = ("Watchdog caught collective operation timeout", "timed out in blocking wait", "ncclRemoteError",
             "remote process exited", "NCCL communicator was aborted")  # fmt: skip


def lost_peer(err: BaseException, d: Dist) -> str | None:
    """What a failed collective says when another process of the job died or stopped answering
    for timeout_s, in a few words ("Connection reset by peer", "ncclRemoteError: ..."); None for
    any other error (an NCCL error naming none of NCCL_LOST: ncclUnhandledCudaError, a bug). gloo
    raises a RuntimeError naming its transport, NCCL a DistBackendError, a lost store's host a
    DistNetworkError."""
    if isinstance(err, PeerLost):
        return err.reason
    text = str(err).strip()
    if not d.active or not isinstance(err, RuntimeError) or not text:
        return None
    if "gloo/transport" in text or isinstance(err, dist.DistNetworkError):
        return _first_sentence(text)
    found = (text[text.index(marker) :] for marker in NCCL_LOST if marker in text)
    said = next(found, None) if isinstance(err, dist.DistBackendError) else None
    return None if said is None else said.splitlines()[0].split(". ")[0].rstrip(".")[:200]


def _first_sentence(text: str) -> str:
    """gloo's or the store's first sentence, without the source file it names ("This is
    typically caused by...", "Did the remote server shutdown or crash?" follow)."""
    return text.splitlines()[-1].split("] ", 1)[-1].split(". ")[0][:160]


@contextlib.contextmanager
def joining(timeout_s: float, launched: bool):
    """The block where a process `launched` by torchrun joins its job: the process group and the
    device mesh, which meet through the store torchrun's launcher keeps. That launcher (or a peer)
    gone makes it fail, after timeout_s or at once, with a DistNetworkError ("The client socket
    has timed out after 2000ms while trying to connect to (localhost, 29500)", "Connection reset
    by peer", "Failed to recv, got 0 bytes"), a DistStoreError (the others never came), or gloo's
    RuntimeError: one line instead, before the run folder is touched. A group of one that
    trickster makes for itself (not launched) keeps its traceback: nothing else is there to lose."""
    try:
        yield
    except RuntimeError as err:
        text = str(err).strip()
        store = isinstance(err, (dist.DistNetworkError, dist.DistStoreError))
        if not launched or not text or not (store or "gloo/transport" in text):
            raise
        if "EADDRINUSE" in text:  # this process keeps the store: RANK 0 set by hand, not torchrun
            raise UserError(
                f"the job's store cannot listen on MASTER_ADDR={os.environ.get('MASTER_ADDR')} "
                f"MASTER_PORT={os.environ.get('MASTER_PORT')}: another program, or a job still "
                "running, holds that port; set MASTER_PORT to a free one (or launch with torchrun "
                "--standalone, which chooses one); nothing was trained or written"
            ) from None
        raise UserError(
            f"the job's torchrun launcher or another of its processes ended or stopped answering "
            f"(within device_config.timeout_s={timeout_s:g} s) while this process joined the job: "
            f"{_first_sentence(text).rstrip('.')}; nothing was trained or written; start the job again "
            "with torchrun (with training_config.resume=auto it continues the run from its newest "
            "checkpoint, or starts it if it has none)"
        ) from None
