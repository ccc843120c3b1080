"""Which names `--checkpoints` may give (models.Catalog): the run's saved checkpoints, `untrained`,
and, while the run trains (no `final` saved yet, or a finished run resumed to more steps: its
heartbeat says it runs), the names it will save: `best`, `final` and `step_NNNNNN`, offered once
saved. A name no training run writes is refused, as is one a finished run, not training, never
saved."""

from __future__ import annotations

from pathlib import Path

from trickster.errors import UserError, did_you_mean
from trickster.observe.status import trains_now
from trickster.run_checkpoints import STEP_DIR
from trickster.serve.offered import UNTRAINED
from trickster.train import checkpoint as ckpt

LATER = "best, final or step_NNNNNN (the step in six digits or more, as training names it)"


def saved_later(name: str) -> bool:
    """Whether training writes a checkpoint by this name: best, final, or a step as step_name spells
    it (a run stopped early saves the step it stopped at, so any step may come)."""
    numbered = STEP_DIR.match(name)
    return name in ("best", "final") or (numbered is not None and ckpt.step_name(int(numbered[1])) == name)


def yet_to_save(names: list[str], found: dict[str, Path], target: Path, whole_run: bool) -> list[str]:
    """The names given that the run has yet to save; raises for one it will never offer, and for
    none at all (an empty variable in a script would otherwise have offered every checkpoint)."""
    if not names:
        have = ", ".join([*found, UNTRAINED])
        raise UserError(
            f"--checkpoints names no checkpoint; give some of {have} (comma-separated), "
            "or leave --checkpoints out to offer them all"
        )
    # a finished run resumed to more steps keeps its old `final` until it saves a new one
    training = whole_run and ("final" not in found or trains_now(target))
    unknown = [n for n in names if n not in found and n != UNTRAINED]
    for name in unknown:
        if not (training and saved_later(name)):
            have = ", ".join([*found, UNTRAINED])
            later = f"; or one the run saves later: {LATER}" if training else ""
            # 0.75: step_000999 is no typo of step_000006 (0.73); bset is one of best
            mean = did_you_mean(
                name, [*found, UNTRAINED, *(("best", "final") if training else ())], cutoff=0.75
            )
            raise UserError(
                f"no checkpoint {name} in {target}{mean}; --checkpoints takes names from: {have}{later}"
            )
    if unknown and not any(n in found or n == UNTRAINED for n in names):
        given = ",".join(names)
        raise UserError(
            f"--checkpoints {given}: {target} has saved none of these yet, so the server would offer "
            f"nothing until it does; add {UNTRAINED} to answer with it meanwhile "
            f"(--checkpoints {given},{UNTRAINED})"
        )
    return unknown
