"""The options of every `trickster` command, for cli.py to check and run.

Each `_add_NAME` builds one command's parser and names its function in commands.py
(`set_defaults(run="train_command")`). A new command: its function, an `_add_NAME` and a line in
`build_parser`. Nothing heavy is imported here, so `trickster --help` stays fast.
"""

from __future__ import annotations

import argparse

from trickster.cli_argparse import Parser, given, integer, out_path
from trickster.cli_export import add_export, add_import
from trickster.cli_serve import add_access, add_limits
from trickster.data.record_layouts import FORMATS as RECORD_FORMATS  # no numpy
from trickster.options import Sampling  # dataclasses only

TOKENIZER_CHOICES = ("char", "byte", "bpe", "gpt2")
DEVICES = ("auto", "cpu", "cuda", "mps")
AUTO_DEVICE = "default auto: CUDA, then MPS, then the CPU"
FIELD, DATASET = given("the field that holds the text"), given("a dataset name or folder")
# "$RUN" or --text "$FILE" with the variable unset: "" read as the current folder, or as the option
# left out (eval scored the run's own data; --tokenizer-from built a new tokenizer), without a word
TARGET = given("a run folder (runs/NAME) or a checkpoint folder")
TEXT_FILE, DATA_DIR = given("the path of a text file"), given("a prepared data folder")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="trickster", description="Train a small language model from scratch, watch it learn, use it."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=Parser)
    for add in (
        _add_data,
        _add_train,
        _add_generate,
        _add_chat,
        _add_compare,
        _add_eval,
        _add_info,
        _add_plan,
        _add_report,
        _add_runs,
        add_export,
        add_import,
        _add_serve,
        _add_quickstart,
    ):
        add(commands)
    return parser


class _SetsKey(argparse.Action):
    """An option that stands for a config override: `--data DIR` is data_config.path=DIR."""

    def __init__(self, option_strings, dest, key: str, value: str | None = None, **kwargs):
        kwargs.setdefault("help", f"{key}={value}" if value else f"sets {key}")
        super().__init__(option_strings, "flag_overrides", nargs=0 if value else None, default=[], **kwargs)
        self.key, self.value = key, value

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.flag_overrides = [*namespace.flag_overrides, f"{self.key}={self.value or values}"]


class _Given(argparse.Action):
    """An option whose value is noted as given (DEST_given), which its default cannot tell."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        setattr(namespace, f"{self.dest}_given", True)


# --------------------------------------------------------------------------- data


def _add_data(commands) -> None:
    data = commands.add_parser("data", help="prepare a corpus into token files")
    data_commands = data.add_subparsers(
        dest="data_command", metavar="COMMAND", required=True, parser_class=Parser
    )
    _add_data_prepare(data_commands)
    _add_data_overlap(data_commands)
    _add_data_report(data_commands)


def _add_data_prepare(data_commands) -> None:
    prepare = data_commands.add_parser("prepare", help="tokenize a corpus into token shards")
    sources = prepare.add_subparsers(dest="source", metavar="SOURCE", required=True, parser_class=Parser)
    shakespeare = sources.add_parser("shakespeare", help="Tiny Shakespeare (downloaded, SHA-256 checked)")
    shakespeare.add_argument("--path", type=TEXT_FILE, help="a local copy instead of downloading")
    tinystories = sources.add_parser("tinystories", help="TinyStories from Hugging Face (streamed)")
    tinystories.add_argument(
        "--dataset",
        type=DATASET,
        help="another name or a local folder with train and validation splits (default: the hub's)",
    )
    hf = sources.add_parser("hf", help="any Hugging Face dataset (streamed), or a local copy of one")
    hf.add_argument(
        "dataset",
        type=DATASET,
        metavar="DATASET",
        help="hub name (HuggingFaceFW/fineweb-edu) or a local folder",
    )
    hf.add_argument("--config", help="the dataset's configuration (subset), e.g. sample-10BT")
    hf.add_argument("--split", default="train", help="split to read (default train)")
    text = sources.add_parser("text", help="local UTF-8 files, folders or glob patterns")
    text.add_argument("paths", nargs="+", metavar="PATH")
    sources.add_parser("python-stdlib", help="the running Python's standard library (always offline)")
    jsonl = sources.add_parser(
        "jsonl", help="JSON lines: a text field, records joined by a template, or fine-tuning records"
    )
    jsonl.add_argument("paths", nargs="+", metavar="FILE")
    jsonl.add_argument(
        "--format",
        dest="record_format",
        choices=RECORD_FORMATS,
        help="fine-tuning records, the loss over each response only: prompt-response (the default "
        "without --text-field/--template), alpaca (instruction, input, output) or messages (chat: "
        "every assistant turn); alpaca and messages give the model their chat template",
    )
    jsonl.add_argument("--template", help='join each record into one document, e.g. "{prompt}\\n{response}"')
    parquet = sources.add_parser("parquet", help="local Parquet files (streamed by record batch)")
    parquet.add_argument("paths", nargs="+", metavar="FILE")
    for source in (hf, parquet):
        source.add_argument("--text-field", type=FIELD, help="the field holding the text (default text)")
        source.add_argument(
            "--format",
            dest="record_format",
            choices=RECORD_FORMATS,
            help="fine-tuning records, as jsonl reads them (the loss over each response only): "
            "prompt-response, alpaca or messages (default: the text field, no records)",
        )
    # jsonl has no default field: without one (or --template) it reads prompt/response records
    jsonl.add_argument("--text-field", type=FIELD, help="the field holding each record's text")
    for source in sources.choices.values():
        _add_prepare_options(source)
        source.set_defaults(run="prepare_data", text_field=None, template=None)


def _add_prepare_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokenizer", choices=TOKENIZER_CHOICES, help="build a new one (default char)")
    parser.add_argument(
        "--vocab-size", type=integer, metavar="N", help="bpe: the vocabulary to train up to (default 4096)"
    )
    parser.add_argument(
        "--tokenizer-from",
        type=given("a run folder, a checkpoint folder or a tokenizer.json"),
        metavar="RUN_DIR|CHECKPOINT|FILE",
        help="use a model's tokenizer instead (to fine-tune that model on this data)",
    )
    parser.add_argument("--out", type=out_path, help="output folder (default data/SOURCE-TOKENIZER)")
    held_out = "the share held out for validation (default 0.1)"
    parser.add_argument("--val-fraction", type=float, default=0.1, action=_Given, help=held_out)
    parser.add_argument("--workers", type=integer, help="tokenizing processes (default: one per CPU)")
    parser.add_argument("--shard-tokens", type=integer, help="tokens per shard file (default 100,000,000)")
    shown = "no progress bars, nor lines off a terminal"
    parser.add_argument("--no-progress", dest="progress", action="store_false", help=shown)
    dedup = "near-copies: group keeps them on their first copy's side of the split (default), near drops "
    dedup += "them, exact does not look for them (fastest); exact copies are dropped in every mode"
    # --dedup, --near-dup-threshold and --keep-duplicates make prepare_data's DedupSettings
    parser.add_argument(
        "--dedup", dest="mode", choices=("group", "near", "exact"), default="group", help=dedup
    )
    similar = "Jaccard similarity of 5-word shingles from which documents are near-copies, in (0, 1] (0.8)"
    threshold = {"dest": "threshold", "type": float, "default": 0.8, "metavar": "J", "action": _Given}
    parser.add_argument("--near-dup-threshold", **threshold, help=similar)
    parser.add_argument(
        "--keep-duplicates", action="store_true", help="keep exact copies (on their first copy's side)"
    )


def _add_data_overlap(data_commands) -> None:
    overlap = data_commands.add_parser("overlap", help="how much of a text the training split already holds")
    overlap.add_argument("folder", metavar="DIR", help="a prepared data folder")
    overlap.add_argument(
        "--text", dest="text_file", required=True, metavar="FILE", help="a UTF-8 text (an eval set, prompts)"
    )
    overlap.set_defaults(run="data_overlap")


def _add_data_report(data_commands) -> None:
    report = data_commands.add_parser("report", help="what to know about a prepared data folder")
    report.add_argument("folder", metavar="DIR", help="a prepared data folder")
    report.add_argument(
        "--html", nargs="?", const="", metavar="FILE", help="also write a page (default DIR/report.html)"
    )
    report.set_defaults(run="data_report")


# --------------------------------------------------------------------------- train, info, plan


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", help="a built-in preset: tiny, nano, mini, midi, mega, gpt2-small")
    group.add_argument("--config", help="a YAML config file")
    _add_overrides(
        parser,
        "override any config key (`trickster train --help` lists them), e.g. training_config.max_steps=200",
    )


def _add_overrides(parser: argparse.ArgumentParser, text: str) -> None:
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=text + " (anywhere on the line)")
    parser.set_defaults(flag_overrides=[])  # what _SetsKey options add, which win over KEY=VALUE


def _add_train(commands) -> None:
    train = commands.add_parser("train", help="train a model from random weights (or fine-tune: init_from)")
    _add_config_args(train)
    train.add_argument("--data", action=_SetsKey, key="data_config.path", metavar="DIR")
    train.add_argument(
        "--out", action=_SetsKey, key="logging_config.output_dir", metavar="DIR", type=out_path
    )
    train.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    train.add_argument(
        "--no-progress", dest="progress", action="store_const", const=False, help="log lines, no bar"
    )
    precision = train.add_mutually_exclusive_group()  # the tutorial's --fp16, and its bf16 twin
    dtype = "device_config.dtype"
    precision.add_argument("--fp16", action=_SetsKey, key=dtype, value="float16")
    precision.add_argument("--bf16", action=_SetsKey, key=dtype, value="bfloat16")
    train.add_argument("--compile", action=_SetsKey, key="device_config.compile", value="true")
    train.set_defaults(run="train_command")
    train.help_more = _config_keys


def _config_keys() -> str:
    from trickster.config_help import config_keys_help  # pydantic: loaded only when help is asked

    return config_keys_help()


def _add_info(commands) -> None:
    info = commands.add_parser("info", help="parameter breakdown and FLOPs per token")
    _add_config_args(info)
    info.add_argument(
        "--checkpoint",
        metavar="RUN_DIR|CHECKPOINT",
        help="a trained model: also its step, losses, versions, git SHA and config",
    )
    info.set_defaults(run="info_command")


def _add_plan(commands) -> None:
    plan = commands.add_parser("plan", help="memory, FLOPs, token budget and a measured time estimate")
    _add_config_args(plan)
    plan.add_argument("--tokens", help="also estimate the time for this many tokens (e.g. 5000000, 5M, 2e9)")
    plan.add_argument(
        "--data",
        metavar="DIR",
        help="a prepared data folder: its vocabulary and tokens (epochs) counted "
        "(default: data_config.path's, once prepared)",
    )
    where = plan.add_mutually_exclusive_group()
    where.add_argument(
        "--device", choices=DEVICES, help="device to plan and benchmark on (default: device_config.device)"
    )
    gpu_help = "plan for a GPU by its datasheet, here or not (H100, A100 80GB, RTX 4090...); time assumed"
    where.add_argument("--gpu", metavar="NAME", help=gpu_help)
    plan.add_argument("--mfu", type=float, help="with --gpu: the MFU the time assumes (default: 0.3 to 0.5)")
    plan.add_argument(
        "--processes",
        type=integer,
        default=1,
        help="training processes (GPUs) under torchrun: DDP replicas, or FSDP shards with "
        "device_config.enable_fsdp=true; on a CPU they share its RAM",
    )
    plan.add_argument(
        "--no-bench", dest="bench", action="store_false", help="the formulas only: time no steps"
    )
    plan.set_defaults(run="plan_command")


# --------------------------------------------------------------------------- generate, compare, eval


def _add_sampling_args(parser: argparse.ArgumentParser, prompt: bool = True) -> None:
    # options.Sampling holds the defaults: an option not given is left out of the namespace, and
    # cli._call builds Sampling from those given
    unset, default = argparse.SUPPRESS, Sampling()
    parser.add_argument("target", type=TARGET, metavar="RUN_DIR|CHECKPOINT")
    if prompt:
        help = "text to continue (default: a line break, or a new document where the vocabulary has none)"
        parser.add_argument("--prompt", default=unset, help=help)
    parser.add_argument(
        "--max-new-tokens",
        type=integer,
        default=unset,
        help=f"the most tokens to generate after the prompt (default: {default.max_new_tokens})",
    )
    parser.add_argument(
        "--temperature", type=float, default=unset, help=f"0 means greedy (default: {default.temperature})"
    )
    parser.add_argument(
        "--top-k",
        type=integer,
        default=unset,
        metavar="K",
        help="sample among the K likeliest tokens (default: off)",
    )
    parser.add_argument(
        "--top-p",
        type=float,
        default=unset,
        metavar="P",
        help="sample among the likeliest tokens that together hold P of the probability (default: off)",
    )
    parser.add_argument(
        "--seed",
        type=integer,
        default=unset,
        help="the same seed gives the same text (default: a new one each time)",
    )
    parser.add_argument("--device", default="cpu", choices=DEVICES, help="default cpu")


def _add_generate(commands) -> None:
    gen = commands.add_parser("generate", help="generate text from a run or checkpoint")
    _add_sampling_args(gen)
    gen.add_argument("--untrained", action="store_true", help="a freshly initialised model of the same shape")
    gen.add_argument(
        "--no-cache", dest="use_cache", action="store_false", help="recompute the whole window every token"
    )
    gen.set_defaults(run="generate_command")


def _add_chat(commands) -> None:
    chat = commands.add_parser(
        "chat", help="talk to a model in the terminal (it continues text without a template)"
    )
    _add_sampling_args(chat, prompt=False)
    chat.add_argument(
        "--chat-template", metavar="FILE", help="a Jinja chat template (default: the model's own)"
    )
    chat.add_argument("--system", metavar="TEXT", help="a system message that opens every conversation")
    chat.set_defaults(run="chat_command")


def _add_compare(commands) -> None:
    help = "samples and val losses beside a fine-tune's base model, or an untrained one"
    compare = commands.add_parser("compare", help=help)
    _add_sampling_args(compare)
    compare.add_argument(
        "--data", type=DATA_DIR, help="data folder for the validation losses (default: the run's)"
    )
    against = compare.add_mutually_exclusive_group()
    help = "compare with this run or checkpoint (default: the one a fine-tune started from, else untrained)"
    against.add_argument("--base", type=TARGET, metavar="RUN_DIR|CHECKPOINT", help=help)
    against.add_argument("--untrained", action="store_true", help="compare with random weights")
    compare.set_defaults(run="compare_command")


def _add_eval(commands) -> None:
    ev = commands.add_parser(
        "eval", help="loss, perplexity and bits per byte on held-out text; HellaSwag accuracy"
    )
    ev.add_argument("target", type=TARGET, metavar="RUN_DIR|CHECKPOINT")
    source = ev.add_mutually_exclusive_group()
    source.add_argument(
        "--data",
        type=DATA_DIR,
        metavar="DIR",
        help="a prepared data folder: its val split (default: the run's)",
    )
    source.add_argument(
        "--text", type=TEXT_FILE, metavar="FILE", help="a UTF-8 text file, scored as one document"
    )
    source.add_argument(
        "--task", choices=["hellaswag"], help="hellaswag: accuracy on its 10,042 validation examples"
    )
    ev.add_argument(
        "--hellaswag-file",
        type=given("the path of hellaswag_val.jsonl"),
        metavar="FILE",
        help="a local copy of hellaswag_val.jsonl (default: downloaded once, then cached)",
    )
    ev.add_argument("--max-tokens", type=integer, metavar="N", help="score at most the first N tokens")
    ev.add_argument("--max-examples", type=integer, metavar="N", help="--task: score the first N examples")
    ev.add_argument(
        "--batch-size",
        type=integer,
        default=8,
        help="windows per forward pass; with --task, examples (4 rows each) (default 8)",
    )
    ev.add_argument("--device", default="auto", choices=DEVICES, help=AUTO_DEVICE)
    ev.add_argument(
        "--json", dest="as_json", action="store_true", help="one JSON object instead of the table"
    )
    ev.set_defaults(run="eval_command")


# --------------------------------------------------------------------------- report, runs


def _add_report(commands) -> None:
    report = commands.add_parser("report", help="one self-contained HTML page about a run")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--out", type=out_path, help="file to write (default RUN_DIR/report.html)")
    report.set_defaults(run="report_command")


def _add_runs(commands) -> None:
    runs = commands.add_parser("runs", help="a table of the runs in a folder")
    runs.add_argument("folder", nargs="?", default="runs", metavar="DIR", help="default: runs")
    runs.set_defaults(run="runs_command")


# --------------------------------------------------------------------------- serve, quickstart


def _add_serve(commands) -> None:
    serve = commands.add_parser("serve", help="an OpenAI-compatible API and a playground page for a run")
    serve.add_argument("target", type=TARGET, metavar="RUN_DIR|CHECKPOINT")
    add_access(serve)  # --host, --port, --api-key, --allowed-host
    serve.add_argument("--device", default="auto", choices=DEVICES, help=AUTO_DEVICE)
    serve.add_argument(
        "--checkpoints",
        metavar="NAMES",
        help="comma-separated, e.g. best,step_000500,untrained (default: all of the run's and untrained)",
    )
    serve.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a Jinja chat template for /v1/chat/completions (default: each model's own)",
    )
    add_limits(serve)  # --max-batch, --max-loaded-models
    serve.set_defaults(run="serve_command")


def _add_quickstart(commands) -> None:
    quick = commands.add_parser("quickstart", help="prepare data, train `tiny`, compare with untrained")
    quick.add_argument("--path", type=TEXT_FILE, help="a local copy of Tiny Shakespeare")
    quick.add_argument("--steps", type=integer, default=1500, help="training steps (default 1500)")
    quick.add_argument(
        "--out",
        type=out_path,
        default="runs/quickstart",
        help="run folder (default %(default)s; a new one if taken)",
    )
    quick.add_argument(
        "--max-new-tokens", type=integer, default=250, help="length of the two samples compared (default 250)"
    )
    _add_overrides(quick, "override the tiny preset, e.g. training_config.batch_size=8")
    quick.set_defaults(run="quickstart")
