"""`trickster data|train|generate|compare|eval|info|export|import|plan|report|runs|serve|quickstart`: thin
wrappers over the library.

Every error a user can fix is a UserError: one line on stderr, exit status 2, no traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trickster.errors import UserError

TOKENIZER_CHOICES = ("char", "byte", "bpe", "gpt2")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="trickster", description="Train a small language model from scratch, watch it learn, use it."
    )
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    # data prepare SOURCE
    data = commands.add_parser("data", help="prepare a corpus into token files")
    data_commands = data.add_subparsers(dest="data_command", required=True, parser_class=_Parser)
    prepare = data_commands.add_parser("prepare", help="tokenize a corpus into token shards")
    sources = prepare.add_subparsers(dest="source", required=True, parser_class=_Parser)
    shakespeare = sources.add_parser("shakespeare", help="Tiny Shakespeare (downloaded, SHA-256 checked)")
    shakespeare.add_argument("--path", help="a local copy instead of downloading")
    tinystories = sources.add_parser("tinystories", help="TinyStories from Hugging Face (streamed)")
    tinystories.add_argument(
        "--dataset",
        help="another name or a local folder with train and validation splits (default: the hub's)",
    )
    hf = sources.add_parser("hf", help="any Hugging Face dataset (streamed), or a local copy of one")
    hf.add_argument(
        "dataset", metavar="DATASET", help="hub name (HuggingFaceFW/fineweb-edu) or a local folder"
    )
    hf.add_argument("--config", help="the dataset's configuration (subset), e.g. sample-10BT")
    hf.add_argument("--split", default="train", help="split to read (default train)")
    text = sources.add_parser("text", help="local UTF-8 files, folders or glob patterns")
    text.add_argument("paths", nargs="+", metavar="PATH")
    sources.add_parser("python-stdlib", help="the running Python's standard library (always offline)")
    jsonl = sources.add_parser(
        "jsonl", help="JSON lines: a text field, records joined by a template, or prompt/response records"
    )
    jsonl.add_argument("paths", nargs="+", metavar="FILE")
    jsonl.add_argument(
        "--format",
        dest="record_format",
        choices=("prompt-response",),
        help="prompt-response (the default without --text-field/--template): the loss covers each "
        "response, never its prompt",
    )
    jsonl.add_argument("--template", help='join each record into one document, e.g. "{prompt}\\n{response}"')
    parquet = sources.add_parser("parquet", help="local Parquet files (streamed by record batch)")
    parquet.add_argument("paths", nargs="+", metavar="FILE")
    for source in (hf, jsonl, parquet):
        source.add_argument("--text-field", help="the field holding the text (default text)")
    for source in sources.choices.values():
        source.add_argument("--tokenizer", choices=TOKENIZER_CHOICES, help="build a new one (default char)")
        source.add_argument(
            "--vocab-size", type=int, metavar="N", help="bpe: the vocabulary to train up to (default 4096)"
        )
        source.add_argument(
            "--tokenizer-from",
            metavar="RUN_DIR|CHECKPOINT|FILE",
            help="use a model's tokenizer instead (to fine-tune that model on this data)",
        )
        source.add_argument("--out", help="output folder (default data/SOURCE-TOKENIZER)")
        source.add_argument("--val-fraction", type=float, default=0.1)
        source.add_argument("--workers", type=int, help="tokenizing processes (default: one per CPU)")
        source.add_argument("--shard-tokens", type=int, help="tokens per shard file (default 100,000,000)")
        source.add_argument("--no-progress", action="store_true", help="no progress bar")
        _add_dedup_options(source)
    overlap = data_commands.add_parser("overlap", help="how much of a text the training split already holds")
    overlap.add_argument("dir", metavar="DIR", help="a prepared data folder")
    overlap.add_argument("--text", required=True, metavar="FILE", help="a UTF-8 text (an eval set, prompts)")
    report = data_commands.add_parser("report", help="what to know about a prepared data folder")
    report.add_argument("dir", metavar="DIR", help="a prepared data folder")
    report.add_argument(
        "--html", nargs="?", const="", metavar="FILE", help="also write a page (default DIR/report.html)"
    )

    # train
    train = commands.add_parser("train", help="train a model from random weights (or fine-tune: init_from)")
    _add_config_args(train)
    train.add_argument("--data", help="prepared data folder (sets data_config.path)")
    train.add_argument("--out", help="run folder (sets logging_config.output_dir)")
    train.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint")
    train.add_argument("--no-progress", action="store_true", help="print log lines instead of a bar")
    precision = train.add_mutually_exclusive_group()  # the tutorial's --fp16, and its bf16 twin
    precision.add_argument("--fp16", action="store_true", help="same as device_config.dtype=float16")
    precision.add_argument("--bf16", action="store_true", help="same as device_config.dtype=bfloat16")
    train.add_argument("--compile", action="store_true", help="same as device_config.compile=true")
    train.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="override any config key, e.g. training_config.max_steps=200",
    )

    # generate
    gen = commands.add_parser("generate", help="generate text from a run or checkpoint")
    gen.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    _add_sampling_args(gen)
    gen.add_argument("--untrained", action="store_true", help="a freshly initialised model of the same shape")
    gen.add_argument("--no-cache", action="store_true", help="recompute the whole window every token")

    # compare
    compare = commands.add_parser("compare", help="trained and untrained samples side by side")
    compare.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    _add_sampling_args(compare)
    compare.add_argument("--data", help="data folder for the validation losses (default: the run's)")

    # eval
    ev = commands.add_parser("eval", help="loss, perplexity and bits per byte on held-out text")
    ev.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    source = ev.add_mutually_exclusive_group()
    source.add_argument(
        "--data", metavar="DIR", help="a prepared data folder: its val split (default: the run's)"
    )
    source.add_argument("--text", metavar="FILE", help="a UTF-8 text file, scored as one document")
    ev.add_argument("--max-tokens", type=int, metavar="N", help="score at most the first N tokens")
    ev.add_argument("--batch-size", type=int, default=8, help="windows per forward pass (default 8)")
    ev.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    ev.add_argument("--json", action="store_true", help="one JSON object instead of the table")

    # info
    info = commands.add_parser("info", help="parameter breakdown and FLOPs per token")
    _add_config_args(info)
    info.add_argument("--checkpoint", metavar="RUN_DIR|CHECKPOINT")
    info.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    # plan
    plan = commands.add_parser("plan", help="memory, FLOPs, token budget and a measured time estimate")
    _add_config_args(plan)
    plan.add_argument("--tokens", help="also estimate the time for this many tokens (e.g. 5000000, 5M, 2e9)")
    plan.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda", "mps"),
        help="device to plan and benchmark on (default: device_config.device)",
    )
    plan.add_argument(
        "--processes",
        type=int,
        default=1,
        help="training processes (GPUs) under torchrun; FSDP shards over them",
    )
    plan.add_argument("--no-bench", action="store_true", help="the formulas only: time no training steps")
    plan.add_argument("overrides", nargs="*", metavar="KEY=VALUE")

    # report
    report = commands.add_parser("report", help="one self-contained HTML page about a run")
    report.add_argument("run_dir", metavar="RUN_DIR")
    report.add_argument("--out", help="file to write (default RUN_DIR/report.html)")

    # runs
    runs = commands.add_parser("runs", help="a table of the runs in a folder")
    runs.add_argument("folder", nargs="?", default="runs", metavar="DIR", help="default: runs")
    # export (Hugging Face, GGUF) / import (Hugging Face)
    export = commands.add_parser("export", help="a run or checkpoint as a Hugging Face folder or GGUF file")
    export.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    export.add_argument(
        "--format",
        choices=("hf", "gguf"),
        default="hf",
        help="hf: a transformers / vLLM folder; gguf: one llama.cpp file",
    )
    export.add_argument("--out", required=True, help="a new folder (hf) or file (gguf) to write")
    export.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="weights dtype"
    )
    imp = commands.add_parser("import", help="turn a local Hugging Face Llama folder into a run")
    import_sources = imp.add_subparsers(dest="source", required=True, parser_class=_Parser)
    import_hf = import_sources.add_parser("hf", help="a folder written by save_pretrained()")
    import_hf.add_argument("path", metavar="DIR", help="config.json, model.safetensors, tokenizer.json")
    import_hf.add_argument("--out", required=True, help="the new run folder")

    # serve
    serve = commands.add_parser("serve", help="an OpenAI-compatible API and a playground page for a run")
    serve.add_argument("target", metavar="RUN_DIR|CHECKPOINT")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="default 8000; 0 picks a free one")
    serve.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda", "mps"))
    serve.add_argument("--api-key", metavar="KEY", help="require 'Authorization: Bearer KEY' on /v1")
    serve.add_argument(
        "--checkpoints",
        metavar="NAMES",
        help="comma-separated, e.g. best,step_000500,untrained (default: all of the run's and untrained)",
    )
    serve.add_argument(
        "--chat-template", metavar="FILE", help="a Jinja chat template for /v1/chat/completions"
    )
    serve.add_argument("--max-batch", type=int, default=16, help="sequences decoded together per model")

    # quickstart
    quick = commands.add_parser("quickstart", help="prepare data, train `tiny`, compare with untrained")
    quick.add_argument("--path", help="a local copy of Tiny Shakespeare")
    quick.add_argument("--steps", type=int, default=1500, help="training steps (default 1500)")
    quick.add_argument("--out", default="runs/quickstart", help="run folder (a new one if taken)")
    return parser


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--preset", help="a built-in preset: tiny, nano, mini, midi, mega, gpt2-small")
    group.add_argument("--config", help="a YAML config file")


def _add_sampling_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prompt", default="\n", help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=300)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 means greedy")
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda", "mps"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _add_dedup_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dedup",
        choices=("group", "near", "exact"),
        default="group",
        help="near-copies: group keeps them on their first copy's side of the split (default), near "
        "drops them, exact does not look for them (fastest); exact copies are dropped in every mode",
    )
    parser.add_argument(
        "--near-dup-threshold",
        type=float,
        default=0.8,
        metavar="J",
        help="Jaccard similarity of 5-word shingles from which documents are near-copies, in (0, 1] "
        "(default 0.8)",
    )
    parser.add_argument(
        "--keep-duplicates", action="store_true", help="keep exact copies (on their first copy's side)"
    )


def _dispatch(args: argparse.Namespace) -> int:
    from trickster import commands

    if args.command == "data" and args.data_command == "overlap":
        commands.data_overlap(args.dir, args.text)
        return 0
    if args.command == "data" and args.data_command == "report":
        commands.data_report(args.dir, args.html)
        return 0
    if args.command == "data":
        from trickster.data.dedup import DedupSettings

        commands.prepare_data(
            args.source,
            getattr(args, "paths", None) or getattr(args, "path", None),
            args.tokenizer,
            args.out,
            args.val_fraction,
            tokenizer_from=args.tokenizer_from,
            dataset=getattr(args, "dataset", None),
            config=getattr(args, "config", None),
            split=getattr(args, "split", "train"),
            text_field=getattr(args, "text_field", None),
            template=getattr(args, "template", None),
            record_format=getattr(args, "record_format", None),
            vocab_size=args.vocab_size,
            workers=args.workers,
            shard_tokens=args.shard_tokens,
            progress=not args.no_progress,
            dedup=DedupSettings(args.dedup, args.near_dup_threshold, args.keep_duplicates),
        )
        return 0
    if args.command == "train":
        overrides = list(args.overrides)
        if args.data:
            overrides.append(f"data_config.path={args.data}")
        if args.out:
            overrides.append(f"logging_config.output_dir={args.out}")
        if args.fp16 or args.bf16:
            overrides.append(f"device_config.dtype={'float16' if args.fp16 else 'bfloat16'}")
        if args.compile:
            overrides.append("device_config.compile=true")
        if not args.preset and not args.config:
            raise UserError("choose a model: --preset tiny|nano|... or --config FILE.yaml")
        return commands.train_command(
            args.preset, args.config, overrides, args.resume, progress=False if args.no_progress else None
        )
    if args.command == "generate":
        commands.generate_command(args)
        return 0
    if args.command == "compare":
        commands.compare_command(args)
        return 0
    if args.command == "eval":
        commands.eval_command(args)
        return 0
    if args.command == "info":
        commands.info_command(args.preset, args.config, args.checkpoint, args.overrides)
        return 0
    if args.command == "plan":
        if not args.preset and not args.config:
            raise UserError("choose what to plan: --preset NAME or --config FILE")
        commands.plan_command(
            args.preset,
            args.config,
            args.overrides,
            args.tokens,
            args.device,
            args.processes,
            not args.no_bench,
        )
        return 0
    if args.command == "report":
        commands.report_command(args.run_dir, args.out)
        return 0
    if args.command == "runs":
        commands.runs_command(args.folder)
        return 0
    if args.command == "export":
        commands.export_command(args.target, args.format, args.out, args.dtype)
        return 0
    if args.command == "import":
        commands.import_command(args.source, args.path, args.out)
        return 0
    if args.command == "serve":
        from trickster.serve.server import serve

        names = [n.strip() for n in args.checkpoints.split(",") if n.strip()] if args.checkpoints else None
        return serve(
            args.target,
            args.host,
            args.port,
            args.device,
            args.api_key,
            names,
            args.chat_template,
            args.max_batch,
        )
    if args.command == "quickstart":
        return commands.quickstart(args.path, args.steps, Path(args.out))
    raise AssertionError(args.command)


if __name__ == "__main__":
    raise SystemExit(main())
