"""The settings a run fits to itself when the user left them to a preset, a config.yaml a run saved
or the defaults (Config.gave: not on the command line, not in a config file of their own):

- training_config.sample_prompt: on prompt/response records, a prompt of their validation records
  (PreparedData.record_prompt). A fine-tune's config is its base model's, whose prompt (ROMEO:) is
  not in the records' format, so its samples would say nothing of what the run learns.
- training_config.sample_prompt, on other text: one the data's tokenizer cannot encode (tiny's
  "ROMEO:" in a char vocabulary of stories without 'R' or ':'), or whose tokens the training text
  never holds (in its first SEARCHED tokens), becomes "", a new document, said in one line. The
  samples dropped the first silently, and `next:` printed a generate line that was refused; a model
  of stories answered the second with '.' and the end of the text, at every evaluation.
- training_config.warmup_steps: one of max_steps or more (a preset's 100 in a 20-step try) becomes
  a tenth of max_steps, said in one line. torchtitan clamps such a warmup to the run's steps with
  a warning, litgpt warns and clamps it, nanochat sizes it as a fraction of the run; a warmup the
  user gave that does not fit is still refused (config_checks).
- training_config.eval_every and save_every: one of max_steps or more (tiny's 250 and 500 in a
  60-step fine-tune) becomes a fifth of max_steps, said in one line: the run is evaluated and
  saved a handful of times, not only at its start and end. A run too short for an interval of
  MIN_FITTED_INTERVAL steps (a try of a few steps) keeps them.

What a run trains with is what it records: config.yaml, W&B's run config and TensorBoard's
(setup.write_run_files) hold the fitted values, and config.yaml a comment with what each was
fitted from (Config.fitted_from, config_fitted). A new run started from that config.yaml fits
these settings afresh from those values, the preset's or the defaults: the 12 that tiny's
eval_every became in a 60-step run fits 300 steps too, and was taken as a setting (a 300-step
fine-tune from the file was evaluated and saved 25 times; a 20-step try's warmup of 2 held for
10,000). A resumed run keeps the values its checkpoint was trained with, and their record,
whatever the config passed now says (the preset again, or a base model's config.yaml): its
schedule and samples go on as they began. A value the user gives wins, then as at the start, and
the resume reports the change. The exceptions come with a changed max_steps: eval_every and
save_every are fitted again as a new run of that many steps fits them, from their values before any
fitting (tiny's 250 and 500 kept in a resume from 2,000 steps to 100 evaluated and saved nothing
until the last step; the 12 a 60-step run fitted, kept over 2,000 steps, evaluated 160 times); and
a warmup kept that a lowered max_steps leaves no room after (the run would end warming up, never
decayed) is fitted again as a new run's is. schedule_on_resume says what became of the schedule,
and of an interval given now that no step left reaches before the last. A config.yaml cannot tell
a preset's warmup or interval from one the user typed when the run began: one given now is theirs
(a warmup refused if it does not fit: config_checks), any other is fitted, as torchtitan and litgpt
clamp theirs; an interval the record does not hold as fitted stays while it fits.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trickster.config import Config, TrainingConfig
from trickster.data.loader import PreparedData
from trickster.data.tokenizers import CharTokenizer
from trickster.plural import counted

# training_config keys a run may fit to itself
FITTED = ("sample_prompt", "warmup_steps", "eval_every", "save_every")
INTERVAL_KEYS = ("eval_every", "save_every")
INTERVALS = 5  # evaluations (and saves) a run fits its intervals to, its end's among them
MIN_FITTED_INTERVAL = 10  # steps; a shorter run (a try) is evaluated at its start and end only
SEARCHED = 1 << 24  # tokens of the train split looked through for a preset's sample prompt


def fitted_config(cfg: Config, data: PreparedData, saved: Config | None) -> tuple[Config, list[str]]:
    """The config to train with and a line for each setting fitted; `saved`: the config of the
    checkpoint a run resumes from (None: a new run)."""
    left = [key for key in FITTED if not cfg.gave(f"training_config.{key}")]
    if saved is not None:  # the values its checkpoint trained with, and the record of their fitting
        kept, recorded = {key: getattr(saved.training, key) for key in left}, _recorded(saved, left)
        if "warmup_steps" in kept and not _fits(kept["warmup_steps"], cfg.training.max_steps):
            # max_steps lowered to the warmup or below: kept, the run would end warming up, never
            # decayed (a warmup given now that does not fit is refused: config_checks)
            recorded.setdefault("warmup_steps", kept["warmup_steps"])
            kept["warmup_steps"] = cfg.training.max_steps // 10
        if cfg.training.max_steps != saved.training.max_steps:
            _refit_intervals(kept, recorded, cfg.training.max_steps)
        return _with(cfg, kept, recorded), []
    # a setting a saved config.yaml holds as its run fitted it is fitted afresh, from its value
    # before (config_fitted), not taken as a preset's: 12 steps fitted to 60 fit 300 too
    restored, as_saved = _recorded(cfg, left), cfg.training
    cfg = _with(cfg, restored, {})
    t = cfg.training
    values: dict[str, Any] = {}
    notes = []
    if "sample_prompt" in left and data.record_prompt is not None:
        values["sample_prompt"] = data.record_prompt
    elif "sample_prompt" in left and t.sample_prompt and (why := _not_in_text(data, t.sample_prompt)):
        values["sample_prompt"] = ""
        notes.append(
            f"sample_prompt {t.sample_prompt!r} {why}: samples start a new document instead "
            "(set training_config.sample_prompt to choose)"
        )
    if "warmup_steps" in left and not _fits(t.warmup_steps, t.max_steps):
        values["warmup_steps"] = t.max_steps // 10
        notes.append(
            f"{_warmup_refitted(t.warmup_steps, t.max_steps)} (set training_config.warmup_steps to choose)"
        )
    intervals = _intervals({key: getattr(t, key) for key in INTERVAL_KEYS if key in left}, t.max_steps)
    if intervals:
        values.update(intervals)
        said = ", ".join(f"{key} {getattr(t, key):,}" for key in intervals)
        notes.append(
            f"{said} past {counted(t.max_steps, 'step')}: every {counted(t.max_steps // INTERVALS, 'step')} "
            f"instead, a fifth of them (set training_config.{' or '.join(intervals)} to choose)"
        )
    # one kept at its value before changes the run as much as one fitted anew, and the file says otherwise
    if kept := {k: v for k, v in restored.items() if k not in values and v != getattr(as_saved, k)}:
        notes.insert(0, _restored_line(kept, as_saved))
    values = {key: value for key, value in values.items() if getattr(t, key) != value}
    return _with(cfg, values, {key: getattr(t, key) for key in values}), notes


def _fits(warmup: int, max_steps: int) -> bool:
    """Whether a warmup of `warmup` steps leaves a run of `max_steps` steps any cosine to decay."""
    return warmup < max_steps or warmup == 0


def _warmup_refitted(warmup: int, max_steps: int) -> str:
    tenth = max_steps // 10
    fitted = f"warming up for {counted(tenth, 'step')}, a tenth of them" if tenth else "no warmup"
    return f"warmup_steps {warmup:,} does not fit in {counted(max_steps, 'step')}: {fitted}"


def schedule_on_resume(changed: dict[str, list], cfg: Config, step: int) -> list[str]:
    """What became of the schedule on a resume from `step` that changed max_steps (`changed`:
    check_resumable's {key: [old, new]}). Lowered: where the cosine now ends, whether the warmup was
    kept, fitted again (it no longer fit) or given anew, and the intervals fitted again. Raised: the
    intervals fitted again, if any (a larger max_steps stretches the cosine, docs/training.md, as
    "changed on resume" says). Then a line for an interval given now that no step reaches before
    the last. Nothing for a resume that kept max_steps."""
    before, after = changed.get("training_config.max_steps", (None, None))
    if not (isinstance(before, int) and isinstance(after, int) and after != before):
        return []
    clauses = []
    if after < before:
        clauses.append(f"the cosine decay now ends at step {after:,}; {_warmup_kept(changed, cfg)}")
    given = [key for key in INTERVAL_KEYS if cfg.gave(f"training_config.{key}")]
    if refitted := [key for key in INTERVAL_KEYS if f"training_config.{key}" in changed and key not in given]:
        said = " and ".join(
            f"{key} {changed[f'training_config.{key}'][0]:,} -> {getattr(cfg.training, key):,}"
            for key in refitted
        )
        them = "it" if len(refitted) == 1 else "them"
        clauses.append(
            f"{said} fitted again, as a new run of {counted(after, 'step')} fits {them} (set "
            f"training_config.{' or '.join(refitted)} to choose)"
        )
    lines = [f"max_steps {before:,} -> {after:,}: {'; '.join(clauses)}"] if clauses else []
    return lines + [line for line in [_unreached(cfg, given, step)] if line]


def _warmup_kept(changed: dict[str, list], cfg: Config) -> str:
    """What became of the warmup on a resume that lowered max_steps: kept, given anew, or fitted
    again (it no longer fit)."""
    warmup = cfg.training.warmup_steps
    if "training_config.warmup_steps" not in changed:
        return f"warmup {warmup:,} kept"
    if cfg.gave("training_config.warmup_steps"):
        return f"warmup {changed['training_config.warmup_steps'][0]:,} -> {warmup:,} as given"
    refitted = _warmup_refitted(changed["training_config.warmup_steps"][0], cfg.training.max_steps)
    return f"{refitted} (set training_config.warmup_steps to choose)"


def _unreached(cfg: Config, given: list[str], step: int) -> str | None:
    """The line for the intervals among `given` (on this command line, kept as given) that no step
    after `step` reaches before the last: evaluations and checkpoints come at multiples of them."""
    t = cfg.training
    unreached = [key for key in given if (step // getattr(t, key) + 1) * getattr(t, key) >= t.max_steps]
    if not unreached:
        return None
    said = " and ".join(f"{key} {getattr(t, key):,}" for key in unreached)
    does = {"eval_every": "evaluates", "save_every": "saves a checkpoint"}
    what = does[unreached[0]] if len(unreached) == 1 else "evaluates or saves"
    return (
        f"{said} as given: none of the {counted(t.max_steps - step, 'step')} left (to step "
        f"{t.max_steps:,}) {what} before the last"
    )


def _restored_line(kept: dict[str, Any], as_saved: TrainingConfig) -> str:
    """The line for the settings a saved config.yaml records its run fitted that this run takes at
    their values before and does not fit again (tiny's eval_every 250 in a 300-step run from the
    config.yaml of a 60-step one, which holds 12): nothing else says the run differs from the file."""
    said = ", ".join(f"{key} {_shown(getattr(as_saved, key))}" for key in kept)
    before = ", ".join(_shown(value) for value in kept.values())
    return (
        f"{said} {'was' if len(kept) == 1 else 'were'} fitted to the run that saved the config file: "
        f"{before} instead, {'its value' if len(kept) == 1 else 'their values'} before (set "
        f"training_config.{' or '.join(kept)} to choose)"
    )


def _shown(value: Any) -> str:
    """A setting's value as the fitting lines show it: 1,000 steps, 'ROMEO:'."""
    return f"{value:,}" if isinstance(value, int) else repr(value)


def _intervals(values: dict[str, int], max_steps: int) -> dict[str, int]:
    """The intervals among `values` that no step of a run of `max_steps` reaches before its last,
    fitted to a fifth of it; none for a run too short to fit them to MIN_FITTED_INTERVAL steps."""
    fifth = max_steps // INTERVALS
    if fifth < MIN_FITTED_INTERVAL:
        return {}
    return {key: fifth for key, value in values.items() if value >= max_steps}


def _refit_intervals(kept: dict[str, Any], recorded: dict[str, Any], max_steps: int) -> None:
    """On a resume that changed max_steps, the intervals among `kept` (the checkpoint's, the user
    gave none now) fitted again as a new run of `max_steps` fits them, from their values before
    any fitting (`recorded`): tiny's 250 kept in a resume from 2,000 steps to 100 evaluated nothing
    until the last step, the save_every of 60 a 300-step run fitted saved once where a new run
    of 100 steps saves four times, and the 12 a 60-step run fitted, kept over 2,000 steps, meant 160
    evaluations (a new run of 2,000 takes the preset's 250). One the run was given (not recorded as
    fitted) stays, unless it no longer fits. A run too short to fit them (a try) keeps the
    checkpoint's, as a new one keeps the preset's."""
    if max_steps // INTERVALS < MIN_FITTED_INTERVAL:
        return
    before = {key: recorded.get(key, kept[key]) for key in INTERVAL_KEYS if key in kept}
    for key, value in {**before, **_intervals(before, max_steps)}.items():
        kept[key] = value
        if value == before[key]:
            recorded.pop(key, None)
        else:
            recorded[key] = before[key]


def _not_in_text(data: PreparedData, prompt: str) -> str | None:
    """Why the training text cannot have taught a model to continue `prompt`: characters its
    vocabulary lacks (a char one's: the only kind whose encode refuses text), or its tokens found
    nowhere in the first SEARCHED tokens; None when found."""
    tokenizer = data.tokenizer
    if isinstance(tokenizer, CharTokenizer):  # its lacking characters as `data report` finds them
        if lacking := [c for c in dict.fromkeys(prompt) if c not in tokenizer.char_to_id]:
            return f"holds characters the char vocabulary lacks ({', '.join(map(repr, lacking))})"
    ids = np.asarray(tokenizer.encode(prompt))
    tokens = np.asarray(data.train[:SEARCHED])
    starts = np.flatnonzero(tokens[: max(len(tokens) - len(ids) + 1, 0)] == ids[0])
    for offset, token in enumerate(ids[1:], start=1):  # the starts the next token also matches
        starts = starts[tokens[starts + offset] == token]
    return None if starts.size else "occurs nowhere in the training text"


def _recorded(cfg: Config, left: list[str]) -> dict[str, Any]:
    """The settings among `left` that cfg's config.yaml records its run fitted, with their values before."""
    recorded = {key: f"training_config.{key}" for key in left}
    return {key: cfg.fitted_from[dotted] for key, dotted in recorded.items() if dotted in cfg.fitted_from}


def _with(cfg: Config, values: dict[str, Any], fitted: dict[str, Any]) -> Config:
    """A copy of cfg with these training settings, whose config.yaml records the settings `fitted`
    with their values before (Config.fitted_from)."""
    cfg = cfg.model_copy(deep=True)
    for key, value in values.items():
        setattr(cfg.training, key, value)
    cfg.fitted_from.clear()
    cfg.fitted_from.update({f"training_config.{key}": before for key, before in fitted.items()})
    return cfg
