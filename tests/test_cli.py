"""The commands a person types, run in-process on small data."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

from trickster import run_checkpoints
from trickster.cli import main
from trickster.train.run_lock import fresh_run_dir

from .conftest import EXCERPT, events, stopped_at


def test_quickstart_prepares_trains_and_compares(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs/qs").mkdir(parents=True)
    (tmp_path / "runs/qs/notes.txt").write_text("mine")  # a taken folder: the run goes to runs/qs-2
    fast = [  # fewer and smaller evaluations, no samples or plot while training
        "training_config.batch_size=8",
        "training_config.seq_len=64",
        "training_config.eval_batches=2",
        "training_config.eval_every=15",
        "training_config.sample_every=0",
        "logging_config.loss_plot=false",
    ]
    args = [
        "quickstart",
        "--path",
        str(EXCERPT),
        "--steps",
        "30",
        "--out",
        "runs/qs",
        "--max-new-tokens",
        "20",
    ]
    assert main([*args, *fast]) == 0
    out = capsys.readouterr().out
    assert "1/3 preparing data" in out and "2/3 training" in out and "3/3" in out
    assert "holds a stopped run" not in out  # runs/qs holds no run
    untrained, trained = re.findall(r"--- (untrained|trained).*?val loss (\d+\.\d+) ---", out)
    assert float(trained[1]) < float(untrained[1])
    assert (tmp_path / "runs/qs-2/checkpoints/final/COMPLETE").is_file()
    assert [p.name for p in (tmp_path / "runs/qs").iterdir()] == ["notes.txt"]
    saved = (tmp_path / "runs/qs-2/config.yaml").read_text()
    assert "batch_size: 8" in saved and "max_steps: 30" in saved  # the overrides reached the preset


def test_quickstart_takes_its_length_from_a_max_steps_setting(tmp_path, monkeypatch, capsys):
    """`training_config.max_steps=6` given as a KEY=VALUE setting instead of --steps: the run is 6
    steps long with a schedule fitted to them, not refused for a warmup of 100 that the quick start
    had set itself for its 1,500 steps."""
    monkeypatch.chdir(tmp_path)
    fast = ["training_config.batch_size=4", "training_config.seq_len=32", "training_config.eval_batches=1"]
    fast += ["training_config.sample_every=0", "logging_config.loss_plot=false"]
    argv = ["quickstart", "--path", str(EXCERPT), "--max-new-tokens", "5", "training_config.max_steps=6"]
    assert main([*argv, *fast]) == 0
    out = capsys.readouterr().out
    assert "2/3 training the tiny preset for 6 steps" in out
    evaluated = [r["step"] for r in events(tmp_path / "runs/quickstart", "eval")]
    assert evaluated == [0, 1, 2, 3, 4, 5, 6]  # every step of 6, as --steps 6 evaluates
    saved = (tmp_path / "runs/quickstart/config.yaml").read_text()
    assert "max_steps: 6\n" in saved and "warmup_steps: 0\n" in saved


def test_quickstart_again_names_the_stopped_run_it_does_not_continue(tmp_path, monkeypatch, capsys):
    """Running the quick start again starts a new run (runs/qs-2), as the README says; when the
    folder it passes over holds a stopped run, one line before training says so, with the command
    that continues it: the one Ctrl-C printed."""
    monkeypatch.chdir(tmp_path)
    fast = ["training_config.batch_size=4", "training_config.seq_len=32", "training_config.eval_batches=1"]
    fast += [
        "training_config.eval_every=100",
        "training_config.sample_every=0",
        "logging_config.loss_plot=false",
    ]
    argv = ["quickstart", "--path", str(EXCERPT), "--steps", "6", "--out", "runs/qs", *fast]
    stopped_at(2, monkeypatch)
    assert main(argv) == 130
    out = capsys.readouterr().out
    ctrl_c = re.search(
        r"stopped by SIGINT at step 2; saved checkpoints/step_000002; continue with: (.+)$", out, re.M
    )
    assert ctrl_c and ctrl_c.group(1) == "trickster train --config runs/qs/config.yaml --resume", out
    # the README's next step, compare, is named too (it was left unsaid), and works on what was saved
    compare = "trickster compare runs/qs --prompt ROMEO:"
    last = out.splitlines()[-2:]
    assert last[0].endswith(f"continue with: {ctrl_c.group(1)}"), out
    assert last[1] == f"or see what it has learned so far (the quick start's third part): {compare}"
    assert main([*compare.split()[1:], "--max-new-tokens", "3"]) == 0
    headers = [line for line in capsys.readouterr().out.splitlines() if line.startswith("--- ")]
    assert headers[1].startswith("--- trained (step_000002, step 2): "), headers

    stopped_at(1, monkeypatch)
    assert main(argv) == 130
    out = capsys.readouterr().out
    before_training = out[: out.index("Training from scratch -> runs/qs-2")]
    assert (
        "  runs/qs holds a stopped run (checkpoints/step_000002, step 2 of 6); this starts a new run in "
        f"runs/qs-2. To continue that one instead: {ctrl_c.group(1)}\n"
    ) in before_training
    assert run_checkpoints.checkpoint_step(tmp_path / "runs/qs/checkpoints/step_000002") == 2  # untouched
    assert not (tmp_path / "runs/qs/checkpoints/final").exists()

    # a finished run is never named (runs/qs-2, continued to its end: the line names runs/qs); of
    # several stopped ones, the newest is (runs/qs-3 then)
    assert main(["train", "--config", "runs/qs-2/config.yaml", "--resume", "--no-progress"]) == 0
    assert (tmp_path / "runs/qs-2/checkpoints/final").is_dir()
    capsys.readouterr()
    for named, starts in (("runs/qs", "runs/qs-3"), ("runs/qs-3", "runs/qs-4")):
        stopped_at(1, monkeypatch)
        assert main(argv) == 130
        notes = [line for line in capsys.readouterr().out.splitlines() if "holds a stopped run" in line]
        step = 2 if named == "runs/qs" else 1
        assert notes == [
            f"  {named} holds a stopped run (checkpoints/step_00000{step}, step {step} of 6); this starts a "
            f"new run in {starts}. To continue that one instead: trickster train --config "
            f"{named}/config.yaml --resume"
        ]


def test_a_taken_run_folder_gets_the_next_free_suffix(tmp_path):
    out = tmp_path / "qs"
    assert fresh_run_dir(out) == out
    out.mkdir()
    assert fresh_run_dir(out) == out  # an empty folder is free
    (out / "metrics.jsonl").write_text("")
    assert fresh_run_dir(out) == tmp_path / "qs-2"
    (tmp_path / "qs-2").mkdir()
    (tmp_path / "qs-2" / "config.yaml").write_text("")
    (tmp_path / "qs-3").write_text("a file, not a folder")
    assert fresh_run_dir(out) == tmp_path / "qs-4"


def test_quickstart_falls_back_to_the_stdlib_when_offline(tmp_path, monkeypatch, capsys):
    import urllib.error
    import urllib.request

    from trickster import commands

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setattr(commands, "train_command", lambda *a, **k: 1)  # stop after the data step
    assert main(["quickstart", "--steps", "5"]) == 1
    out = capsys.readouterr().out
    assert "not reachable (could not download https://" in out
    assert "falling back to the Python standard library" in out
    assert (tmp_path / "data/python-stdlib-char/meta.json").is_file()


def test_quickstart_falls_back_only_when_the_download_fails(tmp_path, monkeypatch, capsys):
    """Another quick start preparing the same folder (or a full disk) is said as it is; it was
    called 'Tiny Shakespeare is not reachable' and the stdlib was prepared instead."""
    import hashlib

    from trickster import commands
    from trickster.atomic import held
    from trickster.data import sources

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "SHAKESPEARE_SHA256", hashlib.sha256(EXCERPT.read_bytes()).hexdigest())
    monkeypatch.setattr(sources, "download", lambda url, timeout=30: EXCERPT.read_bytes())
    monkeypatch.setattr(commands, "train_command", lambda *a, **k: 1)  # stop after the data step
    with held(tmp_path / "data/shakespeare-char.partial", "busy", "fix"):  # the other quick start
        assert main(["quickstart", "--steps", "5"]) == 2
    captured = capsys.readouterr()
    assert "falling back" not in captured.out and captured.err.count("\n") == 1
    assert "data/shakespeare-char.partial" in captured.err and "in use" in captured.err, captured.err
    assert not (tmp_path / "data/python-stdlib-char").exists()


def _quickstart_data_step(tmp_path: Path, monkeypatch) -> Path:
    """Run a quick start in tmp_path up to its data step, the excerpt standing for Tiny Shakespeare
    (its checksum and its download); returns the folder it prepared."""
    import hashlib

    from trickster import commands
    from trickster.data import sources

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "SHAKESPEARE_SHA256", hashlib.sha256(EXCERPT.read_bytes()).hexdigest())
    monkeypatch.setattr(sources, "download", lambda url, timeout=30: EXCERPT.read_bytes())
    monkeypatch.setattr(commands, "train_command", lambda *a, **k: 1)  # stop after the data step
    assert main(["quickstart", "--steps", "5"]) == 1
    return tmp_path / "data/shakespeare-char"


def test_quickstart_again_keeps_its_prepared_data_even_offline(tmp_path, monkeypatch, capsys):
    """A second quickstart finds Tiny Shakespeare prepared by the first: it neither downloads nor
    rewrites it, and does not fall back to the stdlib when the network is gone meanwhile."""
    from trickster.data import sources
    from trickster.errors import UserError

    def offline(*args, **kwargs):
        raise UserError("could not download it (offline)")

    data = _quickstart_data_step(tmp_path, monkeypatch)
    assert f"wrote {data.relative_to(tmp_path)}" in capsys.readouterr().out
    stamps = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in [data, *data.rglob("*")]}
    monkeypatch.setattr(sources, "download", offline)
    assert main(["quickstart", "--steps", "5"]) == 1
    out = capsys.readouterr().out
    assert "already prepared: data/shakespeare-char holds shakespeare" in out and "falling back" not in out
    assert stamps == {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in [data, *data.rglob("*")]}
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["shakespeare-char"]


def test_quickstart_offline_keeps_data_an_older_version_prepared(tmp_path, monkeypatch, capsys):
    """A folder an older version of trickster prepared is prepared again (its tokens may differ),
    but offline Tiny Shakespeare cannot be read again: the folder is kept, said in one line, instead
    of a quick start that trained on the Python standard library (or a `data prepare` that failed
    where it had said 'already prepared' before the upgrade)."""
    from trickster.data import sources

    def offline(*args, **kwargs):
        raise sources.DownloadFailed("could not download it (offline)")

    data = _quickstart_data_step(tmp_path, monkeypatch)
    meta = json.loads((data / "meta.json").read_text())
    del meta["settings"]["version"]  # as versions before 2ff70a5 wrote it
    (data / "meta.json").write_text(json.dumps(meta))
    capsys.readouterr()
    monkeypatch.setattr(sources, "download", offline)
    assert main(["quickstart", "--steps", "5"]) == 1
    out = capsys.readouterr().out
    assert "falling back" not in out, out
    assert "data/shakespeare-char was prepared by an older version of trickster (no version recorded" in out
    assert (
        "could not read its source again (could not download it (offline)): keeping "
        "data/shakespeare-char as it was prepared" in out
    )
    assert "data/shakespeare-char holds shakespeare as that version prepared it (train" in out
    assert "with the same settings" not in out  # another version's settings, kept offline
    assert json.loads((data / "meta.json").read_text()) == meta
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["shakespeare-char"]
    assert main(["data", "prepare", "shakespeare", "--out", "data/shakespeare-char"]) == 0
    assert "keeping data/shakespeare-char as it was prepared" in capsys.readouterr().out


def test_quickstart_offline_finds_the_copy_a_path_run_prepared(tmp_path, monkeypatch, capsys):
    """README: 'If you already have Tiny Shakespeare, pass your copy: --path input.txt'. A second
    quickstart without --path, offline, took the folder prepared from that copy for another corpus,
    failed to download, and trained on the Python standard library instead."""
    import hashlib

    from trickster import commands
    from trickster.data import sources

    def offline(*args, **kwargs):
        raise sources.DownloadFailed("could not download it (offline)")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sources, "SHAKESPEARE_SHA256", hashlib.sha256(EXCERPT.read_bytes()).hexdigest())
    monkeypatch.setattr(sources, "download", offline)
    monkeypatch.setattr(commands, "train_command", lambda *a, **k: 1)  # stop after the data step
    assert main(["quickstart", "--steps", "5", "--path", str(EXCERPT)]) == 1
    assert "wrote data/shakespeare-char" in capsys.readouterr().out
    assert main(["quickstart", "--steps", "5"]) == 1
    out = capsys.readouterr().out
    assert "already prepared: data/shakespeare-char holds shakespeare" in out and "falling back" not in out
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["shakespeare-char"]
    edited = tmp_path / "edited.txt"  # another text given as Tiny Shakespeare is prepared anew
    edited.write_text(EXCERPT.read_text(encoding="utf-8") + "Exeunt.\n", encoding="utf-8")
    assert main(["data", "prepare", "shakespeare", "--path", str(edited)]) == 0
    assert "wrote data/shakespeare-char" in capsys.readouterr().out


def test_generate_streams_a_continuation_of_the_prompt(tmp_path, shakespeare_dir, capsys):
    run = tmp_path / "run"
    # overrides on both sides of the options; no samples or plot while training (they cost seconds)
    train = (
        f"train model_config.num_layers=1 --preset tiny --data {shakespeare_dir} training_config.max_steps=4"
    )
    train += f" --out {run} training_config.warmup_steps=1 training_config.eval_every=2 --no-progress"
    train += " training_config.eval_batches=2 training_config.sample_every=0 logging_config.loss_plot=false"
    assert main(train.split()) == 0
    capsys.readouterr()

    def generate(*flags: str) -> str:
        assert main(["generate", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "25", *flags]) == 0
        return capsys.readouterr().out

    first = generate("--seed", "1")
    assert first.startswith("ROMEO:") and len(first) == len("ROMEO:") + 25 + 1  # one char per token
    assert generate("--seed", "1", "--no-cache") == first
    untrained = generate("--seed", "1", "--untrained")
    assert untrained != first and generate("--seed", "1", "--untrained") == untrained
    main(["info", "--checkpoint", str(run)])
    shown = capsys.readouterr().out
    assert "tied to the embedding" in shown
    info = json.loads((run / "checkpoints" / "best" / "info.json").read_text())
    # the losses rounded as the training log prints them
    assert f"val loss {info['val_loss']:.4f}, best {info['best_val_loss']:.4f})" in shown
    assert f"tokenizer fingerprint {info['tokenizer_fingerprint']} (" in shown
    assert f"data sha256 {info['data_fingerprint']}" in shown
    assert f"torch {torch.__version__}" in shown and f"git: {info['manifest']['git_sha']}" in shown
    assert "  training_config:" in shown and "    max_steps: 4" in shown
    # a run folder alone is described as generate reads it, without --checkpoint
    assert main(["info", str(run)]) == 0
    assert capsys.readouterr().out == shown


def test_overrides_stand_anywhere_on_the_line_and_flags_win():
    from trickster.cli import parse
    from trickster.cli_parser import build_parser

    line = "train --preset tiny --data d training_config.max_steps=3 --out o training_config.batch_size=8"
    args = parse(build_parser(), line.split())
    assert args.overrides == [
        "training_config.max_steps=3",
        "training_config.batch_size=8",
        "data_config.path=d",
        "logging_config.output_dir=o",
    ]
    line = "train data_config.path=x --config c.yaml training_config.lora.rank=4 --fp16 --compile --data d"
    assert parse(build_parser(), line.split()).overrides == [
        "data_config.path=x",
        "training_config.lora.rank=4",
        "device_config.dtype=float16",
        "device_config.compile=true",
        "data_config.path=d",  # the flag wins: it comes last
    ]


def test_integer_options_take_big_numbers_as_people_write_them(capsys):
    """As integer config settings do (units.whole_number): 1e4 on the command line is 10000."""
    from trickster.cli import parse
    from trickster.cli_parser import build_parser

    line = "serve run --port 8e3 --max-batch 3.2e1 --max-loaded-models 4.0"
    args = parse(build_parser(), line.split())
    assert (args.port, args.max_batch, args.max_loaded_models) == (8000, 32, 4)
    assert parse(build_parser(), "eval run --max-tokens 1e6 --batch-size 16".split()).max_tokens == 1_000_000
    with pytest.raises(SystemExit) as exit_info:
        parse(build_parser(), "quickstart --steps 1.5e0".split())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--steps" in err and "'1.5e0'" in err and "whole number" in err and len(err.splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:  # an exponent past what Decimal holds
        parse(build_parser(), "quickstart --steps 1e99999999999999999999".split())
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--steps" in err and "less than 9223372036854775808 = 2**63" in err and len(err.splitlines()) == 1


def test_negative_numbers_in_every_form_are_values_not_options():
    """argparse alone takes only -123 and -1.5 for numbers: -1e3 was an unknown option."""
    from trickster.cli import parse
    from trickster.cli_parser import build_parser

    args = parse(build_parser(), "generate run --seed -1_000 --top-p -.5E0 --temperature -inf".split())
    assert (args.seed, args.top_p, args.temperature) == (-1000, -0.5, float("-inf"))
    assert parse(build_parser(), ["generate", "run", "--prompt", "-1e3"]).prompt == "-1e3"
    with pytest.raises(SystemExit):  # not a number: still an unknown option
        parse(build_parser(), "generate run --prompt -1e3x".split())


def test_an_option_with_a_line_break_is_refused_in_one_line(capsys):
    """argparse writes an unknown argument as typed ('unrecognized arguments: --x<newline>y'):
    its line was cut in two, as the errors' lines were before a9d20e4."""
    with pytest.raises(SystemExit) as exit_info:
        main(["runs", "a", "--x\ny"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: unrecognized arguments: --x\\ny (see `trickster runs --help`)\n"


def test_info_reads_overrides_on_both_sides_of_an_option(capsys):
    assert main(["info", "model_config.hidden_dim=64", "--preset", "tiny", "model_config.num_layers=3"]) == 0
    assert "model: hidden 64, 3 layers" in capsys.readouterr().out


def test_a_stray_word_for_a_command_without_overrides_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["runs", "a", "b"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: unrecognized arguments: b (see `trickster runs --help`)\n"


def test_help_imports_neither_torch_nor_the_commands():
    """`trickster --help` (and each command's) stays fast: torch loads only when a command runs.
    `train --help` lists the config keys from their pydantic fields, and so loads pydantic alone."""
    import subprocess
    import sys

    check = (
        "import sys, contextlib, io\n"
        "from trickster.cli import main\n"
        "for argv in (['--help'], ['data', 'prepare', 'text', '--help'], ['train', '--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        main(argv)\n"
        "    print(sorted(m for m in ('torch', 'trickster.commands', 'pydantic') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == ["[]", "[]", "['pydantic']"]


def test_train_help_lists_every_config_key_with_its_default_and_docstring(capsys):
    """litgpt's `--help` shows every setting; ours lists each key after the options, its default
    and the first sentence of the docstring under its field in config.py."""
    from trickster.config import SECTION_ALIASES, SECTIONS, LoraConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    keys = [
        f"{alias}.{name}"
        for alias, section in SECTION_ALIASES.items()
        for name in SECTIONS[section].model_fields
    ]
    keys += [f"training_config.lora.{name}" for name in LoraConfig.model_fields]
    assert [k for k in keys if f"\n  {k} [" not in out] == []
    assert "\n  training_config.max_steps [10000]: Optimizer steps to train for.\n" in out
    assert "\n  training_config.sample_prompt ['\\n']: " in out  # a default of blanks shown quoted


def words_bash_reads(line: str) -> list[str]:
    """The arguments bash passes to `trickster` when `line` is pasted into it."""
    shell = 'trickster() { printf "%s\\0" "$@"; }; ' + line
    out = subprocess.run(["bash", "-c", shell], capture_output=True, check=True).stdout
    return ["trickster", *out.decode("utf-8").split("\0")[:-1]]


@pytest.mark.parametrize(
    "prompt", ["ROMEO:", "def ", 'it\'s "here"', "\n", "Why?\nWho speaks?", "a\tb\\n'c\x01\x7f é"]
)
def test_the_next_command_after_training_gives_generate_the_sample_prompt(prompt, tmp_path):
    """Pasted into a shell, the line gives generate the prompt exactly, on one line even when the
    prompt holds line breaks (bash's $'...')."""
    from trickster.cli_parser import build_parser
    from trickster.prompts import next_hint

    line = next_hint(tmp_path / "my run", prompt)
    assert "\n" not in line
    words = words_bash_reads(line)
    assert words[:2] == ["trickster", "generate"]
    args = build_parser().parse_args(words[1:])
    assert args.target == str(tmp_path / "my run")
    if prompt.strip():
        assert args.prompt == prompt
    else:  # whitespace only: generate's own default prompt (a newline) is left to it
        assert not hasattr(args, "prompt")


def test_generate_without_sampling_options_gets_the_sampling_defaults(monkeypatch):
    """The defaults live once, in options.Sampling: an option not given comes from there, one given
    replaces only itself."""
    from trickster import commands
    from trickster.cli import main
    from trickster.options import Sampling

    seen = []

    def generate_command(target: str, sampling: Sampling) -> None:  # cli reads the annotation
        seen.append(sampling)

    monkeypatch.setattr(commands, "generate_command", generate_command)
    assert main(["generate", "some-run"]) == 0
    assert main(["generate", "some-run", "--temperature", "0", "--top-k", "5"]) == 0
    assert seen[0] == Sampling(prompt=None, max_new_tokens=300, temperature=0.8)  # None: prompts.py chooses
    assert seen[1] == Sampling(prompt=None, max_new_tokens=300, temperature=0.0, top_k=5)


def test_every_option_says_in_its_help_what_it_does():
    """`trickster generate --help` listed `--top-k TOP_K`, `--top-p TOP_P` and `--seed SEED` with nothing
    after them: a reader could not tell what they do or what they default to."""
    assert options_where(lambda parser, a: not a.help) == []


def test_every_option_with_a_default_shows_it_in_its_help():
    """`trickster serve --help` showed --max-batch MAX_BATCH without its 16 (and quickstart's --out
    without runs/quickstart), while --port, --max-loaded-models and the others show theirs."""
    import argparse

    def unshown(parser, a):
        if a.default in (None, argparse.SUPPRESS, True, False, []):
            return False
        return str(a.default) not in parser._get_formatter()._expand_help(a)  # %(default)s as shown

    assert options_where(unshown) == []


def options_where(wanted, parser=None, path=("trickster",)) -> list[str]:
    """'trickster COMMAND --option' for each option of every command (subcommands included) for
    which wanted(its parser, its action) holds."""
    import argparse

    from trickster.cli_parser import build_parser

    parser = parser or build_parser()
    found = [
        f"{' '.join(path)} {a.option_strings[-1]}"
        for a in parser._actions
        if a.option_strings and wanted(parser, a)
    ]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += options_where(wanted, child, (*path, name))
    return found


def test_jsonl_help_gives_text_field_no_default(capsys):
    """jsonl reads prompt/response records when neither --text-field nor --template is given, yet its
    --help said `--text-field ... (default text)`, as hf's and parquet's do."""
    with pytest.raises(SystemExit):
        main(["data", "prepare", "jsonl", "--help"])
    jsonl = " ".join(capsys.readouterr().out.split())
    assert "--text-field TEXT_FIELD the field holding each record's text" in jsonl
    assert "(default text)" not in jsonl
    with pytest.raises(SystemExit):
        main(["data", "prepare", "parquet", "--help"])
    assert "(default text)" in " ".join(capsys.readouterr().out.split())


def test_ctrl_c_while_the_command_line_is_parsed_is_one_line(monkeypatch, capsys):
    """Ctrl-C while argparse builds the parser (gettext's lookups, a tenth of a second on a busy
    machine) ended in a KeyboardInterrupt traceback (seen in a random-SIGINT loop): one line and
    status 130, as later."""
    from trickster import cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "build_parser", interrupted)
    try:
        status = main(["train", "--preset", "nano"])
    except KeyboardInterrupt:  # not left to end the test session
        pytest.fail("the Ctrl-C escaped main(): a traceback")
    assert status == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_quickstart_refuses_a_bad_setting_before_it_prepares_data(tmp_path, monkeypatch, capsys):
    """A KEY=VALUE setting the tiny preset refuses is refused first: the quick start neither
    prepares a corpus (minutes for the standard library offline) nor makes a run folder for it."""
    monkeypatch.chdir(tmp_path)
    for setting in ("big", "training_config.batch_size=0"):
        assert main(["quickstart", "--path", str(EXCERPT), "--steps", "2", setting]) == 2
        assert "1/3 preparing data" not in capsys.readouterr().out
        assert list(tmp_path.iterdir()) == []
