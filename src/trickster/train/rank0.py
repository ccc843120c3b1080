"""A step only rank 0 takes for the whole job (reading or writing the run folder, a checkpoint),
its answer or its error handed to every process: `on_main`."""

from __future__ import annotations

from trickster.errors import UserError
from trickster.train import dist, peers


def on_main(job: dist.Dist, fn, *args):
    """Run `fn` on rank 0 only and hand its result, or its UserError, to every process. Any other
    error reaches the others as a UserError naming it (rank 0 raises its own, with its traceback):
    whatever happens, rank 0 meets them, so none waits for it until device_config.timeout_s (on
    another node, whose torchrun does not end its processes when one here fails). Only a process
    that ends without a word (SIGKILL, the out-of-memory killer) misses the meeting: the others
    then end with peers.PeerLost's one line, not gloo's traceback."""
    outcome = None
    if job.is_main:
        try:
            outcome = fn(*args)
        except UserError as err:
            outcome = err
        except BaseException as err:
            what = f"{type(err).__name__}: {err}".splitlines()[0] if str(err) else type(err).__name__
            if isinstance(err, Exception):
                said = f"failed ({what}); see its traceback"
            else:  # an interrupt (Ctrl-C, SystemExit): rank 0 prints no traceback to point to
                said = f"was stopped ({what})"
            dist.broadcast(UserError(f"process 0 {said}"), job)
            raise
    try:
        outcome = dist.broadcast(outcome, job)
    except RuntimeError as err:
        reason = peers.lost_peer(err, job)
        if reason is None:
            raise
        raise _main_lost(job, reason) from None
    if isinstance(outcome, UserError):
        raise outcome
    return outcome


def _main_lost(job: dist.Dist, reason: str) -> peers.PeerLost:
    """on_main's line for a process that ended (or went silent) while rank 0 handed out its answer."""
    who, waiting = (
        ("another process", "process 0 gave it") if job.is_main else ("process 0", "the others waited for")
    )
    lost = f"{who} of the job ended without a word (killed?) or stopped answering while {waiting} its answer"
    return peers.PeerLost(f"{lost}: {reason}; see torchrun's summary for which process and why", reason)
