"""`trickster data|train|generate|chat|compare|eval|info|export|import|plan|report|runs|serve|quickstart`.

The command line's options are declared in cli_parser.py; here they are checked (`_check`, every
value before anything is read or written) and handed to commands.py, whose functions' parameters
are filled by name from the parsed options (a dataclass parameter from the options named like its
fields). `section.key=value` overrides may stand anywhere after the command. A UserError is one
line on stderr and exit status 2. commands.py (and torch) loads only when a command runs: --help
is fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import io
import math
import sys
from collections.abc import Callable
from pathlib import Path

from trickster import starting
from trickster.cli_parser import build_parser
from trickster.errors import Interrupted, UserError, did_you_mean, single_line

# Bounds on numeric options: (argparse dest, test, message); each applies to every command that has it.
_BOUNDS: list[tuple[str, Callable[[float], bool], str]] = [
    ("val_fraction", lambda v: 0 < v < 1, "--val-fraction must be between 0 and 1 (got {})"),
    ("workers", lambda v: v >= 1, "--workers must be at least 1 (got {})"),
    ("max_new_tokens", lambda v: v >= 0, "--max-new-tokens must be >= 0 (got {})"),
    ("temperature", lambda v: 0 <= v < math.inf, "--temperature must be >= 0 and finite (got {})"),
    ("top_k", lambda v: v >= 1, "--top-k must be >= 1 (got {})"),
    ("top_p", lambda v: 0 < v <= 1, "--top-p must be in (0, 1] (got {})"),
    ("max_tokens", lambda v: v >= 1, "--max-tokens must be >= 1 (got {})"),
    ("max_examples", lambda v: v >= 1, "--max-examples must be >= 1 (got {})"),
    ("batch_size", lambda v: v >= 1, "--batch-size must be >= 1 (got {})"),
    ("steps", lambda v: v >= 1, "--steps must be at least 1 (got {})"),
    ("processes", lambda v: v >= 1, "--processes must be >= 1 (got {})"),
    ("mfu", lambda v: 0 < v <= 1, "--mfu must be a fraction above 0 and at most 1, such as 0.4 (got {})"),
]
# What to say when a command that needs a config gets neither --preset nor --config.
_NEEDS_CONFIG = {
    "train": "choose a model: --preset tiny|nano|... or --config FILE.yaml",
    "plan": "choose what to plan: --preset NAME or --config FILE",
}


def main(argv: list[str] | None = None) -> int:
    # a line at a time into a pipe or a log file too, as on a terminal: block-buffered, `tail -f
    # train.log` showed nothing for ~100 step lines, and a process ended by a signal lost its last ones
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)
    try:  # a Ctrl-C while the command loads (its parser, then torch: seconds) ends it at once in one line
        with starting.while_loading():
            args = parse(build_parser(), argv)
            _check(args)
            function = _command(args.run)
        return _call(function, args)
    except UserError as err:
        print(f"error: {single_line(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        said = f"interrupted: {single_line(str(err))}" if isinstance(err, Interrupted) else "interrupted"
        print(said, file=sys.stderr)
        return getattr(err, "exit_status", starting.INTERRUPTED_EXIT)
    except BrokenPipeError:
        return 0


def parse(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse argv; overrides (`KEY=VALUE`) are taken wherever they stand among the options."""
    args, rest = parser.parse_known_args(argv)
    # argparse gives a positional list only its first run of values: the runs after an option come back here
    if rest and (not hasattr(args, "overrides") or any(a.startswith("-") for a in rest)):
        # the command's own parser, whose --help lists its options (the top one's lists commands)
        while (sub := _subcommand(parser, args)) is not None:
            parser = sub
        parser.error(f"unrecognized arguments: {' '.join(rest)}{_hint(parser, args, rest, argv)}")
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *rest, *args.flag_overrides]  # --data, --fp16, ... win
    return args


def _hint(parser: argparse.ArgumentParser, args, rest: list[str], argv: list[str] | None) -> str:
    """For the first unknown `--option`: `parser`'s own option it is close to (`--max_new_tokens`
    for --max-new-tokens), else the config override it stands for (nanoGPT's `--max_iters=100`,
    a guessed `--max-steps 100`: training_config.max_steps=100)."""
    option = next((a for a in rest if a.startswith("--")), None)
    if option is None:
        return ""
    name, _, value = option[2:].partition("=")
    own = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    if close := did_you_mean(f"--{name.replace('_', '-')}", own, cutoff=0.75):
        return close
    if not hasattr(args, "overrides"):
        return ""
    from trickster.config import SECTION_ALIASES, SECTIONS  # pydantic: loaded for this line only

    keys = {
        k: f"{alias}.{k}"
        for alias, section in SECTION_ALIASES.items()
        for k in SECTIONS[section].model_fields
    }
    close = difflib.get_close_matches(name.replace("-", "_"), keys, n=1, cutoff=0.6)
    if not close:
        return "; a setting is changed with SECTION.KEY=VALUE, e.g. training_config.max_steps=100"
    words = list(sys.argv[1:] if argv is None else argv)
    after = words[words.index(option) + 1 :][:1] if option in words else []
    value = value or (after[0] if after and not after[0].startswith("-") else "VALUE")
    return f"; a setting is changed with SECTION.KEY=VALUE: did you mean {keys[close[0]]}={value}?"


def _subcommand(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser | None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices.get(getattr(args, action.dest, None) or "")
    return None


def _check(args: argparse.Namespace) -> None:
    """Every check of the command line's values, before anything is read or written."""
    for dest, ok, message in _BOUNDS:
        value = getattr(args, dest, None)
        if value is not None and not ok(value):
            raise UserError(message.format(value))
    _check_path_for_override(args)
    if args.command in _NEEDS_CONFIG and not args.preset and not args.config:
        raise UserError(_NEEDS_CONFIG[args.command])
    if args.command == "info" and not (args.checkpoint or args.preset or args.config):
        raise UserError("choose what to describe: --preset NAME, --config FILE or --checkpoint RUN")
    if args.command == "info" and args.checkpoint and (args.preset or args.config or args.overrides):
        raise UserError(
            "--checkpoint describes the saved model as it is: drop --preset, --config and KEY=VALUE "
            "overrides, or drop --checkpoint"
        )
    if args.command == "plan" and args.mfu is not None and not args.gpu:
        raise UserError(
            "--mfu is the MFU assumed for a GPU planned by name: add --gpu NAME, or drop --mfu "
            "(on a device of this machine the time is measured)"
        )
    if args.command == "data" and args.data_command == "prepare":
        _check_prepare(args)
    if args.command == "eval":
        _check_eval(args)


def _check_path_for_override(args: argparse.Namespace) -> None:
    """A config file or a run folder where KEY=VALUE overrides stand (`trickster train big.yaml`,
    `trickster plan runs/a`), as generate, eval and serve take a run: name the option for it.
    `trickster info RUN` alone is taken as `--checkpoint RUN`, as generate takes a RUN: so is any
    one word that is no setting and no config file, for a misspelt or missing run to be told as
    generate tells it (`runs/tny not found (did you mean runs/tiny?)`), not as no target at all."""
    words = getattr(args, "overrides", None) or []
    if args.command == "info" and len(words) == 1 and not (args.checkpoint or args.preset or args.config):
        path = Path(words[0])
        if "=" not in words[0] and not (path.is_file() and path.suffix in (".yaml", ".yml")):
            args.checkpoint, args.overrides = words[0], []
            return
    for word in words:
        path = Path(word)
        if "=" in word or not path.exists():
            continue
        if path.is_file() and path.suffix in (".yaml", ".yml") and args.command != "quickstart":
            raise UserError(f"{word} is a config file: pass it with --config {word}")
        if path.is_file() and args.command == "train":
            raise UserError(
                f"{word} is a file, not a KEY=VALUE setting: to train on it, pass --data DIR with the folder "
                f"that trickster data prepare text {word} --out DIR writes"
            )
        checkpoint = (path / "info.json").is_file()
        if not checkpoint and not (path / "config.yaml").is_file():
            continue
        config = path / "config.yaml"
        fix = {
            "info": f"describe it as saved with trickster info {word}, without settings",
            "plan": f"plan with its settings: trickster plan --config {config}",
            "train": (
                f"fine-tune from it with training_config.init_from={word} and --preset or --config"
                if checkpoint
                else f"continue it with trickster train --config {config} --resume, or train anew "
                f"from its settings with --config {config} --out NEW_FOLDER"
            ),
        }.get(args.command)
        if fix is not None:
            kind = "a checkpoint" if checkpoint else "a run folder"
            raise UserError(f"{word} is {kind}, not a KEY=VALUE setting: {fix}")


def _check_prepare(args: argparse.Namespace) -> None:
    if args.source == "tinystories" and getattr(args, "val_fraction_given", False):  # read, then not used
        raise UserError(
            "--val-fraction does not apply to tinystories: its validation split is the dataset's own, "
            "whole; drop --val-fraction (trickster data prepare hf DATASET holds out a share of the train "
            "split instead)"
        )
    if args.mode == "exact" and getattr(args, "threshold_given", False):  # read, then not used
        raise UserError(
            "--near-dup-threshold applies to near-copies, which --dedup exact does not look for; drop "
            "--near-dup-threshold, or pass --dedup group (the default) or --dedup near"
        )
    if args.tokenizer and args.tokenizer_from:
        raise UserError("give either --tokenizer (a new one) or --tokenizer-from (a model's), not both")
    if args.vocab_size is not None and args.tokenizer != "bpe":
        raise UserError(
            f"--vocab-size applies to --tokenizer bpe only (got --tokenizer {args.tokenizer or 'char'})"
        )
    if args.vocab_size is not None:
        from trickster.data.tokenizers import check_bpe_vocab  # numpy: for this command only

        check_bpe_vocab(args.vocab_size)
    records = getattr(args, "record_format", None)
    if args.source == "jsonl" and args.text_field is None and args.template is None:
        if len(args.paths) != 1:
            raise UserError(
                f"--format {records or 'prompt-response'} reads one file; pass one FILE (or use --text-field)"
            )
    elif records is not None and (args.text_field is not None or args.template is not None):
        flags = "--text-field or --template" if args.source == "jsonl" else "--text-field"
        raise UserError(f"--format {records} cannot be combined with {flags}")


def _check_eval(args: argparse.Namespace) -> None:
    if args.task is None:
        for dest, flag in (("hellaswag_file", "--hellaswag-file FILE"), ("max_examples", "--max-examples N")):
            if getattr(args, dest) is not None:
                raise UserError(f"{flag} applies to --task hellaswag; add --task hellaswag or drop {flag}")
    elif args.max_tokens is not None:
        raise UserError(
            "--max-tokens applies to --data and --text; with --task hellaswag use --max-examples N"
        )


def _command(name: str) -> Callable[..., object]:
    """commands.<name>; commands.py loads torch and the library, a few seconds on a busy machine."""
    from trickster import commands

    return getattr(commands, name)


def _call(function: Callable[..., object], args: argparse.Namespace) -> int:
    """Run `function` with each parameter taken from the parsed option of the same name."""
    kwargs = {}
    for name, parameter in inspect.signature(function, eval_str=True).parameters.items():
        kind = parameter.annotation
        if dataclasses.is_dataclass(kind):
            fields = dataclasses.fields(kind)
            kwargs[name] = kind(**{f.name: getattr(args, f.name) for f in fields if hasattr(args, f.name)})
        elif hasattr(args, name):
            kwargs[name] = getattr(args, name)
    code = function(**kwargs)  # an exit status, or what the library returns (a path) for success
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    raise SystemExit(main())
