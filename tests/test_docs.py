"""README.md and docs/*.md against the product: every relative link and anchor leads somewhere
that exists; every command's options, config key, file and Python name the text gives exists; every
config key and option is mentioned; the nano preset shown is the file; ARCHITECTURE.md's module
map is src/trickster's tree."""

from __future__ import annotations

import argparse
import ast
import functools
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|(?:href|src)=\"([^\"]+)\"")


def prose(text: str, inline_code: bool = False) -> str:
    """The page without fenced code blocks (and inline code unless asked), where brackets are not links."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.M | re.S)
    return text if inline_code else re.sub(r"`[^`\n]*`", "", text)


def anchors(page: Path) -> set[str]:
    """GitHub's heading ids (lower case, punctuation dropped, spaces to hyphens, -1 -2 for repeats),
    and explicit id/name attributes."""
    found: set[str] = set()
    for heading in re.findall(
        r"^#{1,6}\s+(.+?)\s*#*\s*$", prose(page.read_text(encoding="utf-8"), inline_code=True), re.M
    ):
        text = re.sub(r"<[^>]+>|[*`]|\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        n = 0
        while (f"{slug}-{n}" if n else slug) in found:
            n += 1
        found.add(f"{slug}-{n}" if n else slug)
    found.update(re.findall(r"(?:id|name)=\"([^\"]+)\"", page.read_text(encoding="utf-8")))
    return found


def links(page: Path) -> list[str]:
    return [a or b for a, b in LINK.findall(prose(page.read_text(encoding="utf-8")))]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for link in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", link, re.I):  # http:, https:, mailto: ... are not checked
            continue
        path, _, anchor = link.partition("#")
        target = (page.parent / path).resolve() if path else page
        if not target.exists():
            broken.append(
                f"{link} (no {target.relative_to(ROOT) if target.is_relative_to(ROOT) else target})"
            )
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link} (no heading #{anchor} in {target.name})")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_the_link_finder_sees_links_and_anchors(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A Title: with *punctuation*\n## Step 2 - go\n## Step 2 - go\n## Serving (`bench/serve_it.py`)\n"
        'see [x](other.md#a-title-with-punctuation), ![img](fig.png "t") and `[not](a-link.md)`\n'
        '```\n[nor](this.md)\n```\n<img src="pic.png">\n',
        encoding="utf-8",
    )
    assert links(page) == ["other.md#a-title-with-punctuation", "fig.png", "pic.png"]
    assert anchors(page) == {
        "a-title-with-punctuation",
        "step-2---go",
        "step-2---go-1",
        "serving-benchserve_itpy",
    }


# --------------------------------------------------------------------------- the docs against the product
# What a reader copies from the guides: commands and their options, config keys, the files and
# Python names the text points at, and the module map. Each check reads the source, never runs it.

SRC = ROOT / "src" / "trickster"


def doc_lines(page: Path) -> list[tuple[int, str]]:
    """The page's lines, a shell line continued with a backslash joined to the next, and so is a
    line of prose whose inline code goes on to the next (`trickster serve RUN [--port 8000]
    [--max-batch 16]` wrapped over two lines; a paragraph's end ends it)."""
    lines, pending, fenced = [], None, False
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if pending is not None and not line.strip():
            lines.append(pending)
            pending = None
        if pending is not None:
            line = pending[1] + " " + line.lstrip()
            number = pending[0]
        elif re.match(r"(```|~~~)", line):
            fenced = not fenced
        if line.endswith("\\"):
            pending = (number, line[:-1])
        elif not fenced and line.count("`") % 2 == 1:
            pending = (number, line)
        else:
            pending = None
            lines.append((number, line))
    return lines + ([pending] if pending else [])


@functools.cache
def parser_of() -> argparse.ArgumentParser:
    """trickster's own parser (read, never changed)."""
    from trickster.cli_parser import build_parser

    return build_parser()


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """The options of a command, or of every command under it when it has subcommands."""
    found = {s for a in parser._actions for s in a.option_strings}
    for child in _subcommands(parser).values():
        found |= _options(child)
    return found


# a shell pipe ends a command (`trickster runs | head`); `RUN_DIR|CHECKPOINT` and `[--data DIR |
# --text FILE]` do not
COMMAND = re.compile(r"(?<![\w/.-])trickster\s+((?:[^`|#\n]|\|(?!\s+[^-\s]))*)")


def trickster_commands(text: str) -> list[tuple[list[str], str]]:
    """(command path, what is written after it) for each `trickster ...` on a line."""
    found = []
    for match in COMMAND.finditer(text):
        words, parser, path = match.group(1).split(), parser_of(), []
        for word in words:
            if word not in _subcommands(parser):
                break
            parser = _subcommands(parser)[word]
            path.append(word)
        if path:
            found.append((path, " ".join(words[len(path) :])))
    return found


def command_parser(path: list[str]) -> argparse.ArgumentParser:
    parser = parser_of()
    for word in path:
        parser = _subcommands(parser)[word]
    return parser


def script_options(script: str) -> set[str] | None:
    """The options a bench/ or scripts/ file takes (its argparse strings); None: not checked
    (scripts/test.sh hands everything to pytest)."""
    if script == "scripts/quickstart.sh":  # everything goes to `trickster quickstart`
        return _options(_subcommands(parser_of())["quickstart"])
    source = (ROOT / script).with_suffix(".py")  # gpu_check.sh runs gpu_check.py
    if not source.is_file():
        return None
    return set(re.findall(r"[\"'](--[a-z][\w-]*)[\"']", source.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_option_in_a_documented_command_exists(page):
    """`trickster train --device cuda` in a guide fails for whoever copies it (train has none)."""
    wrong = []
    for number, line in doc_lines(page):
        if page.name == "ERRORS.md" and "error: unrecognized arguments: " in line:
            continue  # the cases of an unknown option, shown on purpose
        for path, rest in trickster_commands(line):
            known = _options(command_parser(path))
            command = "trickster " + " ".join(path)
            options = re.findall(r"(?<![\w-])--[a-z][\w-]*", rest)
            wrong += [f"line {number}: {command} has no {o}" for o in options if o not in known]
        for script, args in re.findall(r"((?:bench|scripts)/[\w.-]+\.(?:py|sh))\s+([^`|#\n]*)", line):
            known = script_options(script)
            for option in re.findall(r"(?<![\w-])--[a-z][\w-]*", args):
                if known is not None and option not in known:
                    wrong.append(f"line {number}: {script} has no {option}")
    assert not wrong, f"{page.name}: " + "; ".join(wrong)


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each option of a command (or of its subcommands) and what argparse does with it."""
    found = {s: a for a in parser._actions for s in a.option_strings}
    for child in _subcommands(parser).values():
        found = {**_actions(child), **found}
    return found


def wrong_option_values(path: list[str], rest: str) -> list[str]:
    """A value an option refuses (`--dedup fuzzy`, each of `--dtype float32|bf16`), and a bracketed
    example that is not the default it stands for (`[--port 8080]` where 8000 is)."""
    actions, wrong = _actions(command_parser(path)), []
    for option, value in re.findall(r"(?<![\w-])(--[a-z][\w-]*)[ =]([^\s\]`]+)", rest):
        choices = getattr(actions.get(option), "choices", None)
        for choice in value.strip("\"'").split("|") if choices else []:
            if choice not in choices:
                wrong.append(f"{option} {choice} (it takes {', '.join(map(str, choices))})")
    for option, value in re.findall(r"\[(--[a-z][\w-]*) ([^\s\]|]+)\]", rest):
        action = actions.get(option)
        # a placeholder ([--out DIR]), or an example for an option with no default
        if action is None or action.default is None or re.fullmatch(r"[A-Z][A-Z_0-9]*", value):
            continue
        default = action.default
        shown: object = value.replace(",", "")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            shown = type(default)(float(shown))
        if shown != default:
            wrong.append(f"[{option} {value}] where the default is {default!r}")
    return wrong


# ERRORS.md shows the values the commands refuse, on purpose
@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "ERRORS.md"], ids=lambda p: p.name)
def test_documented_option_values_are_taken_and_shown_defaults_are_the_defaults(page):
    wrong = []
    for number, line in doc_lines(page):
        for path, rest in trickster_commands(line):
            command = "trickster " + " ".join(path)
            wrong += [f"line {number}: {command} {w}" for w in wrong_option_values(path, rest)]
    assert not wrong, f"{page.name}: " + "; ".join(wrong)


def test_wrapped_commands_are_read_whole(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Run `trickster serve RUN|CHECKPOINT [--port 8000]\n[--max-batch 16]` to serve.\n\n"
        "An odd ` alone\n\nends with its paragraph.\n```\ntrickster eval RUN \\\n  --json | head\n```\n",
        encoding="utf-8",
    )
    assert doc_lines(page) == [
        (1, "Run `trickster serve RUN|CHECKPOINT [--port 8000] [--max-batch 16]` to serve."),
        (3, ""),
        (4, "An odd ` alone"),
        (5, ""),
        (6, "ends with its paragraph."),
        (7, "```"),
        (8, "trickster eval RUN  --json | head"),
        (10, "```"),
    ]
    assert trickster_commands(doc_lines(page)[0][1]) == [
        (["serve"], "RUN|CHECKPOINT [--port 8000] [--max-batch 16]")
    ]
    assert trickster_commands(doc_lines(page)[6][1]) == [(["eval"], "RUN --json")]


def test_the_option_value_check_sees_wrong_values():
    assert wrong_option_values(["export"], "RUN --format hf --dtype float32|bfloat16") == []
    assert wrong_option_values(["serve"], "RUN [--port 8000] [--max-batch 16] [--api-key KEY]") == []
    assert wrong_option_values(["export"], "RUN --format onnx --dtype float32|bf16") == [
        "--format onnx (it takes hf, gguf)",
        "--dtype bf16 (it takes float32, bfloat16, float16)",
    ]
    assert wrong_option_values(["serve"], "RUN [--port 8080]") == ["[--port 8080] where the default is 8000"]
    assert wrong_option_values(["data", "prepare"], "text x [--val-fraction 0.2]") == [
        "[--val-fraction 0.2] where the default is 0.1"
    ]


# what stands for a value in a synopsis (`[--port 8000]`, `RUN_DIR|CHECKPOINT`, `PATH...`), outside quotes
SYNOPSIS = re.compile(r"\[|\.\.\.|\b[A-Z][A-Z_]*\|")


def code_block_commands(page: Path) -> list[tuple[int, list[str]]]:
    """Each `trickster ...` a code block of the page runs, as the shell hands it over: after a `$ `
    prompt, a pipe, `&&` or `-m` (`torchrun ... -m trickster train ...`), up to a pipe, a redirection
    or a comment; a line continued with a backslash read whole. A synopsis is no command."""
    return [command for block in commands_by_block(page) for command in block]


def commands_by_block(page: Path) -> list[list[tuple[int, list[str]]]]:
    """code_block_commands, a list for each code block."""
    blocks, fenced, pending = [], False, None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        if re.match(r"\s*(```|~~~)", line):
            fenced, pending = not fenced, None
            blocks += [[]] if fenced else []
            continue
        if not fenced:
            continue
        if pending is not None:
            number, line = pending[0], pending[1] + " " + line.strip()
        if line.endswith("\\"):
            pending = (number, line[:-1])
            continue
        pending = None
        words = _shell_words(re.sub(r"^\s*\$\s+", "", line))
        after = ("|", "&&", ";", "-m")
        starts = [i for i, w in enumerate(words) if w == "trickster" and (i == 0 or words[i - 1] in after)]
        if not starts or SYNOPSIS.search(re.sub(r"'[^']*'|\"[^\"]*\"", "''", line)):
            continue
        command = words[starts[0] + 1 :]
        ends = [i for i, w in enumerate(command) if re.fullmatch(r"[|&;<>()]+", w)]
        blocks[-1].append((number, command[: ends[0]] if ends else command))
    return blocks


def _shell_words(line: str) -> list[str]:
    import shlex

    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True  # `--out export/tiny.gguf` one word; `|`, `>&` words of their own
    try:
        return list(lexer)
    except ValueError:  # an open quote: prose in a block, not a command
        return []


def parse_error(words: list[str]) -> str | None:
    """What `trickster WORDS` says when its command line does not parse (a required argument
    missing, two options that exclude each other, an option without its value); None when it does."""
    import contextlib
    import io

    from trickster.cli import parse

    said = io.StringIO()
    try:
        with contextlib.redirect_stderr(said), contextlib.redirect_stdout(io.StringIO()):
            parse(parser_of(), words)
    except SystemExit as end:
        return (said.getvalue().strip() or f"exit {end.code}") if end.code else None
    return None


# ERRORS.md shows command lines the parser refuses, on purpose
@pytest.mark.parametrize("page", [p for p in PAGES if p.name != "ERRORS.md"], ids=lambda p: p.name)
def test_every_command_in_a_code_block_parses(page):
    """`trickster export runs/tiny --format gguf` without the --out it requires, or `--preset` and
    `--config` together, fails for whoever copies it, though each option exists."""
    wrong = []
    for number, words in code_block_commands(page):
        if (error := parse_error(words)) is not None:
            wrong.append(f"line {number}: trickster {' '.join(words)}: {error}")
    assert not wrong, f"{page.name}: " + "; ".join(wrong)


def test_the_command_finder_reads_code_blocks_as_the_shell_does(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "`trickster export run` in prose\n```bash\ntrickster export runs/tiny --format gguf   # a comment\n"
        "$ printf 'hi\\n' | trickster chat runs/tiny \\\n  --seed 1 > out.txt\n"
        "torchrun --nproc-per-node 2 -m trickster train --preset tiny 'a.b=[1, 2]'\n"
        "trickster serve RUN_DIR|CHECKPOINT [--port 8000]\ntrickster data prepare text PATH...\n```\n",
        encoding="utf-8",
    )
    assert code_block_commands(page) == [
        (3, ["export", "runs/tiny", "--format", "gguf"]),
        (4, ["chat", "runs/tiny", "--seed", "1"]),
        (6, ["train", "--preset", "tiny", "a.b=[1, 2]"]),
    ]
    assert "--out" in parse_error(["export", "runs/tiny", "--format", "gguf"])
    assert "not allowed" in parse_error(["train", "--preset", "tiny", "--config", "my.yaml"])
    assert "expected one argument" in parse_error(["generate", "runs/tiny", "--prompt"])
    assert parse_error(["chat", "runs/tiny", "--seed", "1"]) is None
    assert parse_error(["--help"]) is None


def data_folders(words: list[str]) -> tuple[str | None, str | None]:
    """(the folder `trickster WORDS` prepares, the data folder it reads): `data prepare` writes --out,
    else data/SOURCE-TOKENIZER (unknown with --tokenizer-from: the model's tokenizer names it);
    `train --data DIR` (a data_config.path override), `eval`/`compare --data`, `data report DIR`
    read one."""
    from trickster.cli import parse

    args = parse(parser_of(), words)
    if getattr(args, "data_command", None) == "prepare":
        kind = None if args.tokenizer_from else args.tokenizer or "char"
        return args.out or (kind and f"data/{args.source}-{kind}"), None
    paths = [o.partition("=")[2] for o in getattr(args, "overrides", []) if o.startswith("data_config.path=")]
    read = getattr(args, "folder", None) or getattr(args, "data", None) or (paths[-1] if paths else None)
    return None, read and read.rstrip("/")


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_a_block_that_prepares_data_uses_the_folder_it_writes(page):
    """A recipe prepared `hf` (into data/hf-gpt2, the default data/SOURCE-TOKENIZER) and trained on
    data/fineweb-gpt2, which nothing wrote: whoever runs the block meets `no prepared data`."""
    wrong = []
    for block in commands_by_block(page) if page.name != "ERRORS.md" else []:
        written: set[str | None] = set()
        for number, words in block:
            if "--help" in words:
                continue
            prepared, read = data_folders(words)
            if prepared is not None or words[:2] == ["data", "prepare"]:
                written.add(prepared)
            elif read and not read.isupper() and written and None not in written and read not in written:
                command = "trickster " + " ".join(words)
                wrong.append(f"line {number}: {command} reads {read}; the block prepares {sorted(written)}")
    assert not wrong, f"{page.name}: " + "; ".join(wrong)


def test_the_data_folders_of_a_command_are_found():
    assert data_folders(["data", "prepare", "hf", "HuggingFaceFW/fineweb", "--tokenizer", "gpt2"]) == (
        "data/hf-gpt2",
        None,
    )
    assert data_folders(["data", "prepare", "shakespeare"]) == ("data/shakespeare-char", None)
    assert data_folders(["data", "prepare", "jsonl", "c.jsonl", "--tokenizer-from", "runs/x"]) == (None, None)
    assert data_folders(["train", "--preset", "nano", "--data", "data/a/", "data_config.path=data/b"]) == (
        None,
        "data/a",
    )
    assert data_folders(["eval", "runs/x", "--data", "data/c"]) == (None, "data/c")
    assert data_folders(["data", "report", "data/d"]) == (None, "data/d")
    assert data_folders(["generate", "runs/x"]) == (None, None)


def config_key_exists(dotted: str) -> bool:
    from trickster.config import Config
    from trickster.config_errors import section_at

    parts = dotted.split(".")
    section = section_at(Config, parts[:-1])
    return section is not None and parts[-1] in section.model_fields


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_every_config_key_in_the_docs_exists(page):
    """Dotted keys in the text (`training_config.max_steps`) and the keys of YAML config blocks."""
    wrong, text = [], page.read_text(encoding="utf-8")
    typos = set(re.findall(r"unknown key ([\w.]+)", text))  # the typos an error page shows
    for number, line in doc_lines(page):
        # a key shown cut short ('training_config.kkkk...(10,018 characters)') is not checked
        for key in re.findall(
            r"\b(?:model|data|training|device|logging)_config(?:\.\w+)+(?!\w|\.\.\.)", line
        ):
            if key not in typos and not config_key_exists(key):
                wrong.append(f"line {number}: {key}")
    for block in re.findall(r"^```ya?ml\n(.*?)^```", text, re.M | re.S):
        for key in _yaml_keys(yaml.safe_load(block)):
            if not config_key_exists(key):
                wrong.append(f"YAML block: {key}")
    assert not wrong, f"{page.name}: unknown config keys " + "; ".join(wrong)


def _yaml_keys(tree, prefix: str = "") -> list[str]:
    from trickster.config import Config
    from trickster.config_errors import section_at

    keys = []
    for name, value in (tree or {}).items():
        key = f"{prefix}{name}"
        if prefix:
            keys.append(key)
        if isinstance(value, dict) and (not prefix or section_at(Config, key.split("."))):
            keys += _yaml_keys(value, key + ".")
    return keys


def test_every_config_key_and_option_is_documented():
    """A setting or a flag that no guide names is one nobody finds."""
    from trickster.config import SECTIONS

    text = "\n".join(p.read_text(encoding="utf-8") for p in PAGES)
    keys = [
        (section, name)
        for section in (*SECTIONS.values(), _section_at_path("training_config.lora"))
        for name in section.model_fields
    ]
    missing = [f"{s.__name__}.{n}" for s, n in keys if not re.search(rf"\b{n}\b", text)]
    options = _options(parser_of()) - {"-h", "--help"}
    missing += [o for o in sorted(options) if not re.search(rf"{o}(?![\w-])", text)]
    assert not missing, f"no guide mentions {missing}"


def _section_at_path(dotted: str):
    from trickster.config import Config
    from trickster.config_errors import section_at

    return section_at(Config, dotted.split("."))


def test_the_nano_preset_shown_in_training_md_is_the_file():
    page = (ROOT / "docs" / "training.md").read_text(encoding="utf-8")
    shown = next(b for b in re.findall(r"^```yaml\n(.*?)^```", page, re.M | re.S) if "runs/nano" in b)
    file = (SRC / "presets" / "nano.yaml").read_text(encoding="utf-8")
    assert yaml.safe_load(shown) == yaml.safe_load(file)


def python_name_exists(dotted: str) -> bool:
    """`trickster.model.flops.flops_per_token`: a module file, then a name defined at its top level."""
    parts, folder = dotted.split(".")[1:], SRC
    while parts and (folder / parts[0]).is_dir():
        folder = folder / parts.pop(0)
    if not parts:
        return True
    module = folder / f"{parts[0]}.py"
    if not module.is_file():
        return False
    if len(parts) == 1:
        return True
    text = module.read_text(encoding="utf-8")
    return len(parts) == 2 and re.search(rf"^(?:def |class )?{parts[1]}\b", text, re.M) is not None


SUBPACKAGES = "|".join(sorted(p.parent.name for p in SRC.glob("*/__init__.py")))
# `train/dist.py` anywhere; `data/loader.load_data` where a code span starts with it (elsewhere a
# dotted name after a folder is a file, `export/tiny.gguf`, or a folder, `data/stdlib.partial`)
MODULE = rf"(?:{SUBPACKAGES})/[A-Za-z_]\w*"  # a module of a subpackage: not `train/000000.bin`
MODULE_PATH = re.compile(rf"(?<![\w/.-])({MODULE})\.py\b|`({MODULE})\.(\w+)")


def missing_modules(text: str) -> list[str]:
    """The modules of src/trickster a text names by their path in the package (`train/dist.py`,
    as docs/ARCHITECTURE.md does) that do not exist, and the names it gives in one
    (`data/loader.load_data`) that the module does not define."""
    wrong = []
    for path, module, name in MODULE_PATH.findall(text):
        if path and not (SRC / f"{path}.py").is_file():
            wrong.append(f"{path}.py")
        if module and not python_name_exists(
            "trickster." + module.replace("/", ".") + ("" if name == "py" else f".{name}")
        ):
            wrong.append(f"{module}.{name}")
    return wrong


def test_the_module_path_finder_sees_missing_modules_and_names():
    text = (
        "`train/loop.py` and train/dist.py, (train/nowhere.py; `data/loader.load_data`, "
        "`data/loader.no_such_name` and `serve/gone.route`; not export/tiny.gguf, data/stdlib.partial, "
        "runs/x/train/ghost.py or `train.py`"
    )
    assert missing_modules(text) == ["train/nowhere.py", "data/loader.no_such_name", "serve/gone.route"]


@pytest.mark.parametrize("page", PAGES, ids=[p.relative_to(ROOT).as_posix() for p in PAGES])
def test_files_and_python_names_the_docs_point_at_exist(page):
    text = page.read_text(encoding="utf-8")
    wrong = missing_modules(text)
    for path in set(re.findall(r"(?<![\w/.-])((?:src/trickster|tests|bench|scripts)/[\w./-]*\w)", text)):
        if not (ROOT / path).exists():
            wrong.append(path)
    for path in set(re.findall(r"(?<![\w/.-])trickster/([\w/]+\.(?:py|yaml|html))", text)):
        if not (SRC / path).exists():
            wrong.append(f"trickster/{path}")
    names = set(re.findall(r"\btrickster(?:\.[A-Za-z_]\w*)+", text))
    wrong += [name for name in names if not python_name_exists(name)]
    assert not wrong, f"{page.name} names what does not exist: {sorted(wrong)}"


def test_the_module_map_in_architecture_md_matches_src():
    page = (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    block = re.search(r"^```\n(src/trickster/.*?)^```", page, re.M | re.S)
    listed, folder = set(), ""
    for line in block.group(1).splitlines()[1:]:
        match = re.match(r"( +)(\S+)", line)
        if not match:
            continue
        depth, name = len(match.group(1)), match.group(2)
        if depth == 2:
            folder = name if name.endswith("/") else ""
            listed.add(name)
        elif depth == 4 and folder:
            listed.add(folder + name)
    actual = {
        p.relative_to(SRC).as_posix() + ("/" if p.is_dir() else "")
        for p in SRC.rglob("*")
        if "__pycache__" not in p.parts and p.name != "__init__.py" and p.parent.name != "presets"
    }
    assert listed - actual == set(), f"ARCHITECTURE.md lists what src/ lacks: {sorted(listed - actual)}"
    assert actual - listed == set(), f"ARCHITECTURE.md leaves out {sorted(actual - listed)}"


def written_events() -> dict[str, set[str]]:
    """Each metrics.jsonl event the training code writes (`...metrics.write("eval", step, ...)`,
    `new_event("resume", step, ...)`, and `write_stopped(trainer, ...)` for `stopped`) and its
    fields: keywords, and the keys of a `**record` dict built in the same function."""
    events: dict[str, set[str]] = {}
    for module in sorted((SRC / "train").glob("*.py")):
        tree = ast.parse(module.read_text(encoding="utf-8"))
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            records: dict[str, set[str]] = {}
            for node in ast.walk(function):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                    keys = {k.value for k in node.value.keys if isinstance(k, ast.Constant)}
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            records.setdefault(target.id, set()).update(keys)
                if isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Store):
                    if isinstance(node.value, ast.Name) and isinstance(node.slice, ast.Constant):
                        records.setdefault(node.value.id, set()).add(node.slice.value)
            for call in (n for n in ast.walk(function) if isinstance(n, ast.Call)):
                func = call.func
                if getattr(func, "attr", getattr(func, "id", "")) == "write_stopped":  # recovery's helper
                    events.setdefault("stopped", set()).update(k.arg for k in call.keywords if k.arg)
                    continue
                built = getattr(func, "id", "") == "new_event"  # an event written with the file (resume)
                if not built and not (isinstance(func, ast.Attribute) and func.attr == "write"):
                    continue
                # self.metrics.write(...), trainer.metrics.write(...), metrics.write(...)
                owner = getattr(func.value, "attr", getattr(func.value, "id", "")) if not built else "metrics"
                if owner != "metrics":
                    continue
                fields = events.setdefault(call.args[0].value, set())
                for keyword in call.keywords:
                    if keyword.arg is not None:
                        fields.add(keyword.arg)
                    elif isinstance(keyword.value, ast.Name):
                        fields |= records.get(keyword.value.id, set())
    return events


def test_the_event_table_in_training_md_names_every_field_written():
    rows = {}
    for line in (ROOT / "docs" / "training.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `(\w+)`[^|]*\|(.*)\|\s*$", line)
        if match:
            rows[match.group(1)] = set(re.findall(r"`(\w+)`", match.group(2)))
    events = written_events()
    assert {"start", "train", "eval", "resume", "rollback", "spike", "stopped", "end"} <= events.keys()
    missing = {e: sorted(f - rows.get(e, set())) for e, f in events.items() if f - rows.get(e, set())}
    assert not missing, f"training.md's event table leaves out {missing}"


def test_watching_md_names_every_tensorboard_tag():
    from trickster.observe.sinks import TRAIN_SCALARS

    page = (ROOT / "docs" / "watching.md").read_text(encoding="utf-8")
    tags = [tag for tag, _ in TRAIN_SCALARS] + ["loss/val", "val/perplexity"]
    assert [t for t in tags if f"`{t}`" not in page] == []


def test_the_preset_table_in_training_md_is_the_presets():
    """Shape and parameter count of each row, from the preset files (tiny counted at 65 characters)."""
    from trickster.config import load_config
    from trickster.model.flops import parameter_breakdown
    from trickster.model.vocab import padded_vocab
    from trickster.presets import preset_names

    rows, wrong = {}, []
    for line in (ROOT / "docs" / "training.md").read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `([\w-]+)` \|(.*)", line)
        if match and match.group(1) in preset_names():
            rows[match.group(1)] = [c.strip() for c in match.group(2).split("|")]
    assert sorted(rows) == preset_names()
    for name, cells in rows.items():
        m = load_config(preset=name).model
        vocab = str(m.vocab_size)
        if m.vocab_size == "auto":
            m.vocab_size = padded_vocab(65)  # Tiny Shakespeare's characters
        heads = f"{m.num_heads}" + (f" ({m.num_kv_heads})" if m.num_kv_heads else "")
        shown = [str(v) for v in (m.hidden_dim, m.num_layers, heads, m.mlp_dim, m.max_seq_len, vocab)]
        total = f"{parameter_breakdown(m).total:,}"
        if cells[:6] != shown or not cells[6].startswith(total):
            wrong.append(f"{name}: {cells[:7]}, the preset {shown} {total}")
    assert not wrong, wrong


def shown_runs(page: Path) -> list[tuple[str, list[str]]]:
    """Each `$ trickster ...` of the page's code blocks and the lines shown after it."""
    runs = []
    for block in re.findall(r"^```\w*\n(.*?)^```", page.read_text(encoding="utf-8"), re.M | re.S):
        for command, output in re.findall(r"^\$ (trickster [^\n]*)\n((?:(?!\$ )[^\n]*\n)*)", block, re.M):
            runs.append((command, output.rstrip("\n").splitlines()))
    return runs


# what prints the same on any machine, from any folder: a preset's counts, a config refused, a
# plan for a GPU named by --gpu (its datasheet, not this machine)
SHOWN = [
    (page, command, output)
    for page in (
        ROOT / "docs" / "training.md",
        ROOT / "docs" / "troubleshooting.md",
        ROOT / "docs" / "watching.md",
    )
    for command, output in shown_runs(page)
    if re.match(r"trickster (info --preset|train) |trickster plan .*--gpu ", command)
    and "device=cuda" not in command
]


@pytest.mark.parametrize(
    ("page", "command", "output"), SHOWN, ids=[f"{p.name}: {c[:60]}" for p, c, _ in SHOWN]
)
def test_what_the_docs_show_a_command_print_is_what_it_prints(
    page, command, output, tmp_path, monkeypatch, capsys
):
    import shlex

    from trickster.cli import main

    monkeypatch.chdir(tmp_path)  # no data/ here: each case must fail before it would read any
    main(shlex.split(command)[1:])
    printed = capsys.readouterr()
    assert (printed.out + printed.err).rstrip("\n").splitlines() == output
    assert list(tmp_path.iterdir()) == []


def test_the_shown_commands_are_found():
    assert len(SHOWN) >= 6 and any("info --preset nano" in c for _, c, _ in SHOWN)


def test_each_command_of_the_readme_table_is_in_the_guide_it_links():
    """The README's table of commands sends a reader to a guide for each command: `trickster
    export` linked to a guide that never mentions it is a dead end."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = []
    for row in re.findall(r"^\| (`.*?) \| .* \| (.*\]\(docs/.*) \|$", readme, re.M):
        pages = {(ROOT / link.partition("#")[0]) for link in re.findall(r"\]\((docs/[^)]+)\)", row[1])}
        texts = " ".join(page.read_text(encoding="utf-8") for page in pages)
        for command in re.findall(r"trickster ((?:data )?[a-z]+)", row[0]):
            if f"trickster {command}" not in texts:
                missing.append(f"trickster {command} (linked to {sorted(p.name for p in pages)})")
    assert missing == [], missing
    assert "trickster serve" in readme and len(re.findall(r"^\| `trickster", readme, re.M)) >= 8


def folded_plans(page: Path) -> list[tuple[str, list[str]]]:
    """Each `<details>` plan of the page: the command its summary names and the lines of its block."""
    found = re.findall(
        r"<summary><code>(trickster plan [^<]*)</code></summary>\s*```\n(.*?)^```",
        page.read_text(encoding="utf-8"),
        re.M | re.S,
    )
    return [(command, block.rstrip("\n").splitlines()) for command, block in found]


FOLDED = folded_plans(ROOT / "docs" / "watching.md")


@pytest.mark.parametrize(("command", "output"), FOLDED, ids=[c[:60] for c, _ in FOLDED])
def test_each_folded_plan_prints_what_the_guide_shows_above_its_times(
    command, output, tmp_path, monkeypatch, capsys
):
    """watching.md's per-preset plans: everything before the times (the model, its counts, every
    memory line, the tokens) as the command prints it now. The times are a benchmark of the machine
    that planned them, so the run skips it (--no-bench), and the RAM is the one the block names."""
    import shlex

    from trickster import footprint
    from trickster.cli import main

    ram_gib = float(re.search(r"of ([\d.]+) GiB RAM\)", "\n".join(output)).group(1))
    monkeypatch.setattr(footprint, "device_memory", lambda device: (int(ram_gib * 2**30), "RAM"))
    monkeypatch.chdir(tmp_path)
    main([*shlex.split(command)[1:], "--no-bench"])
    printed = capsys.readouterr()
    lines = (printed.out + printed.err).rstrip("\n").splitlines()
    until_times = next(i for i, line in enumerate(output) if line.startswith("time"))
    assert lines[: lines.index("time: not measured (--no-bench)")] == output[:until_times]


def test_the_folded_plans_are_found():
    presets = [re.search(r"--preset (\S+)", c).group(1) for c, _ in FOLDED]
    assert presets == ["tiny", "nano", "mini", "midi", "mega", "gpt2-small"]
