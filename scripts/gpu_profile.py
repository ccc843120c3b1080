"""Where a speed step's time goes, brought back by the same GPU attempt as its figure (issue 14: a
figure that misses its target is to be profiled, and a second attempt costs minutes of a lent GPU).

A step's training run records a few steps with `logging_config.profile_steps`
(trickster/train/profiling.py); `bring_back` copies the table of operators it wrote into --out as
STEP_top_ops.txt and returns a note quoting its top rows for the summary table. The trace stays in
the work folder, where logs.tgz takes it when it is small (a lent GPU returns at most 8 files).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from gpu_runs import Context, StepFailed, trickster

TABLE = "rank0_top_ops.txt"
TRACE = "rank0.pt.trace.json.gz"
QUOTED_ROWS = 3
EXTRA_RUN_S = 120  # the most an extra profiled run may take, on a GPU (compilation included)
EXTRA_RUN_SPARE_S = 15  # left to the step after it, so that its cap does not lose the figure


def bring_back(ctx: Context, step: str, profile: Path) -> str:
    """The table of `profile` (a run's profile folder) copied to --out (or the work folder) as
    STEP_top_ops.txt, and a note with its top rows; a note saying so when there is none."""
    table = profile / TABLE
    if not table.is_file():
        return f"profile: no {TABLE} in {profile}"
    copy = (ctx.out or ctx.work) / f"{step}_top_ops.txt"
    shutil.copyfile(table, copy)
    text = table.read_text()
    rows = top_rows(text, QUOTED_ROWS)
    where = "GPU" if "Self CUDA" in text or "Self Device" in text else "CPU"
    quoted = ", ".join(f"{name} {share}" for name, share in rows) or "no operator rows"
    return f"profile ({copy.name}, self {where} time): {quoted}"


def top_rows(table: str, count: int) -> list[tuple[str, str]]:
    """(name, share of self time) of the first `count` operators of a key_averages table (the
    rows between its second and third dashed lines), in the column it is sorted by. Its columns
    are fixed-width, as its dashed lines show: a name with spaces or an empty cell cannot shift them."""
    lines = table.splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("---")]
    if len(rules) < 3:
        return []
    spans = [match.span() for match in re.finditer(r"-+", lines[rules[0]])]

    def cells(line: str) -> list[str]:
        return [line[begin:end].strip() for begin, end in spans]

    header = cells(lines[rules[0] + 1])
    # a GPU's table has Self CPU % then Self CUDA %, and is sorted by the latter
    share = max(
        (i for i, title in enumerate(header) if title.startswith("Self") and title.endswith("%")), default=1
    )
    return [(row[0], row[share]) for row in map(cells, lines[rules[1] + 1 : rules[2]][:count])]


def extra_run(ctx: Context, step: str, argv: list[str], window: tuple[int, int]) -> str:
    """A short run of `argv` (`trickster train ...` with its own --out) that records steps
    `window`, when the step's figure missed its target: a profile in the timed run would slow the
    figure down. It gets at most EXTRA_RUN_S, and what the step has left; a run that fails or
    overruns is a note, never the loss of the step's figure."""
    left = ctx.seconds_left()
    budget = EXTRA_RUN_S if left is None else min(EXTRA_RUN_S, left - EXTRA_RUN_SPARE_S)
    if budget < 20:
        return f"profile: not run, {budget + EXTRA_RUN_SPARE_S:.0f} s left to the step"
    run = Path(argv[argv.index("--out") + 1])
    overrides = [*argv, f"logging_config.profile_steps=[{window[0]}, {window[1]}]"]
    try:
        trickster(ctx, f"{step}-profile", *overrides, timeout=int(budget))
    except subprocess.TimeoutExpired:
        return f"profile: the extra run took over {budget:.0f} s and was stopped"
    except StepFailed as failed:
        return f"profile: the extra run failed: {failed}"
    return bring_back(ctx, step, run / "profile")
