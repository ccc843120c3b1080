"""The options of `trickster export` and `trickster import`: a run out to Hugging Face or GGUF, a
Hugging Face Llama in. Imports nothing heavy (--help)."""

from __future__ import annotations

from trickster.cli_argparse import Parser, given, out_path


def add_export(commands) -> None:
    export = commands.add_parser("export", help="a run or checkpoint as a Hugging Face folder or GGUF file")
    export.add_argument(
        "target", type=given("a run folder (runs/NAME) or a checkpoint folder"), metavar="RUN_DIR|CHECKPOINT"
    )
    export.add_argument(
        "--format",
        dest="fmt",
        choices=("hf", "gguf"),
        help="hf: a transformers / vLLM folder; gguf: one llama.cpp file (default: gguf if --out ends .gguf)",
    )
    export.add_argument(
        "--out",
        type=out_path,
        required=True,
        help="a new folder (hf) or file (gguf; in a folder given, RUN.gguf) to write",
    )
    export.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default="float32",
        help="weights dtype (default float32; gguf takes float32 or float16)",
    )
    export.add_argument(
        "--chat-template",
        metavar="FILE",
        help="a Jinja chat template to ship with the model (default: the model's own, if imported with one)",
    )
    export.set_defaults(run="export_command")


def add_import(commands) -> None:
    imp = commands.add_parser("import", help="turn a Hugging Face Llama (a folder or a Hub repo) into a run")
    import_sources = imp.add_subparsers(dest="source", metavar="SOURCE", required=True, parser_class=Parser)
    import_hf = import_sources.add_parser(
        "hf", help="a folder written by save_pretrained(), or a Hub repo id ORG/NAME (downloaded)"
    )
    import_hf.add_argument(
        "path",
        type=given("a model folder or a Hub repo id ORG/NAME"),
        metavar="MODEL",
        help="a local folder (config.json, model.safetensors, tokenizer.json), or ORG/NAME on the Hugging "
        "Face Hub when no such path exists (./ORG/NAME is always the folder)",
    )
    import_hf.add_argument(
        "--revision", help="a branch, tag or commit of the Hub repo (default: main); recorded in the run"
    )
    import_hf.add_argument("--out", type=out_path, required=True, help="the new run folder")
    import_hf.set_defaults(run="import_command")
