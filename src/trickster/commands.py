"""What each CLI command does, printing for a person. The options are declared in cli_parser.py and
checked in cli.py.

Each command is a function with typed arguments, named like the command line's options; options
that belong together travel as one of the dataclasses in options.py.
"""

from __future__ import annotations

import itertools
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from trickster import run_checkpoints

# cli.py runs every command from here: `trickster data ...` is written in commands_data.py, `chat`
# in commands_chat.py, `compare` in commands_compare.py
from trickster.commands_chat import chat_command  # noqa: F401
from trickster.commands_compare import compare_command  # noqa: F401
from trickster.commands_data import data_overlap, data_report, prepare_data, read_text_option  # noqa: F401
from trickster.data import sources
from trickster.data.dedup import DedupSettings
from trickster.errors import UserError
from trickster.model import lora
from trickster.model.flops import adapter_parameters, flops_per_token, parameter_breakdown
from trickster.model.transformer import untrained_like
from trickster.model.vocab import assumed_vocab
from trickster.moved_run import check_resumed_folder
from trickster.observe import evaluation, hellaswag
from trickster.options import ConfigSource, EvalOptions, PrepareOptions, Sampling, SourceSpec
from trickster.plural import counted
from trickster.prompts import hinted_prompt, llama_cpp_hint, next_hint, prompt_ids
from trickster.serve.limits import MAX_BATCH, MAX_LOADED_MODELS
from trickster.streaming import stream
from trickster.text_out import text_written
from trickster.train import checkpoint_load, dist
from trickster.train.console import QUIET_LEVELS, SlowPass
from trickster.train.device import resolve_device, resolve_precision
from trickster.train.loop import train
from trickster.train.resume import can_continue
from trickster.train.run_lock import fresh_run_dir
from trickster.train.signals import continue_command

OWN_TEMPLATE = "the layout of the records it was fine-tuned on (data prepare --format)"


def train_command(source: ConfigSource, resume: bool = False, progress: bool | None = None) -> int:
    """`resume`: the --resume flag; without it training_config.resume decides. `progress`: None
    leaves it to logging_config.progress_bar."""
    cfg = source.load()
    check_resumed_folder(source.config, source.overrides, cfg, resume)
    # dtype and compile `auto` as this machine runs them, so the run folder records what ran
    cfg = resolve_precision(cfg, resolve_device(cfg.device.device))
    try:
        result = train(cfg, resume=True if resume else None, progress=progress)
        speaks = dist.is_main_process()  # under torchrun, rank 0 prints the summary
    except UserError as err:  # one line to print: its frames would keep the process groups alive
        raise err.with_traceback(None) from None
    finally:
        dist.shutdown()
    if result.exit_signal is not None:
        return 128 + int(result.exit_signal)
    if result.finished_before:  # resume: auto in a finished run: its one line is printed
        return 0
    if not speaks or result.cfg.logging.log_level in QUIET_LEVELS:  # warning/error: errors only
        return 0
    best = checkpoint_load.loss_text(result.state.best_loss_seen)
    print(f"done: {counted(result.state.step, 'step')}; best val loss {best}; run in {result.run_dir}")
    # the prompt the run's samples continued (on prompt/response records one of theirs unless the
    # user gave one: train/fitted.py), as the llama.cpp line after an export does
    print(f"next: {next_hint(result.run_dir, result.cfg.training.sample_prompt)}")
    return 0


def generate_command(
    target: str, sampling: Sampling, device: str = "cpu", untrained: bool = False, use_cache: bool = True
) -> None:
    where = resolve_device(device, "--device")
    loaded = checkpoint_load.load_checkpoint(target, where)
    model = untrained_like(loaded.cfg) if untrained else loaded.model
    model = model.to(where)
    prompt, ids = prompt_ids(loaded.tokenizer, sampling.prompt)
    with text_written("generate"):
        sys.stdout.write(prompt)
        stream(model, loaded.tokenizer, ids, sampling, use_cache)
    if not untrained:  # random weights: the checkpoint picked lent its shape and tokenizer, no text
        checkpoint_load.say_picked(target, loaded)


def eval_command(opts: EvalOptions) -> None:
    """Score a run on its val split, another prepared folder's, or a text file (see evaluation.py)."""
    device = resolve_device(opts.device, "--device")
    loaded = checkpoint_load.load_checkpoint(opts.target, device)
    if opts.task == "hellaswag":
        return _hellaswag(opts, loaded, device)
    tokenizer = loaded.tokenizer
    mask, exact_bytes = None, None
    if opts.text:
        text = read_text_option(Path(opts.text))
        tokens, whole_text = evaluation.text_sequence(tokenizer, text, opts.text)
        if whole_text and tokenizer.byte_lengths() is None:
            exact_bytes = len(text.encode("utf-8"))  # decoding window by window may drop spaces
        what = f"{opts.text} (one document)"
    else:
        path = opts.data or loaded.info.get("data_path")
        if not path:
            raise UserError(f"{loaded.path} does not name its data; pass --data DIR or --text FILE")
        if not opts.data and not Path(path).exists():
            raise UserError(f"{loaded.path}: {evaluation.data_not_here(loaded)} (or --text FILE)")
        data = evaluation.run_data(loaded, path)
        tokens, mask = data.val, data.val.loss_mask
        what = f"{path} (val split)"
    if opts.max_tokens is not None and len(tokens) > opts.max_tokens + 1:
        tokens = tokens[: opts.max_tokens + 1]
        mask = None if mask is None else mask[: opts.max_tokens + 1]
        exact_bytes = None
    dtype = loaded.dtype  # bfloat16 autocast on GPUs of Ampere and later, else float32
    slow = SlowPass(lambda text: print(text, file=sys.stderr, flush=True))  # 10M tokens take a while
    slow.start(f"scoring {what}")
    score = evaluation.score_sequence(
        loaded.model, tokens, tokenizer, loaded.cfg.seq_len, device, dtype, opts.batch_size, mask, slow
    )
    if exact_bytes is not None:
        score.bytes = exact_bytes
    if opts.as_json:
        result = {"checkpoint": str(loaded.path), "step": loaded.info.get("step"), "source": what}
        print(json.dumps({**result, **score.to_dict(), "context": loaded.cfg.seq_len}))
        return
    print(f"{loaded.path} (step {loaded.info.get('step')}) on {what}")
    print(
        f"loss {score.loss:.4f}   perplexity {score.perplexity:.3f}   bits per byte {score.bits_per_byte:.4f}"
    )
    print(
        f"{counted(score.tokens, 'token')}, {counted(score.bytes, 'byte')} "
        f"({score.bytes / score.tokens:.2f} bytes per token); "
        f"windows of {counted(loaded.cfg.seq_len, 'token')}, each token predicted once"
    )


def _hellaswag(opts: EvalOptions, loaded, device) -> None:
    """`eval --task hellaswag`: acc_norm and acc on the validation examples (see hellaswag.py)."""
    examples, where = hellaswag.load_examples(opts.hellaswag_file)
    examples = examples[: opts.max_examples]
    window = loaded.cfg.seq_len
    accuracy = hellaswag.score(
        loaded.model, loaded.tokenizer, examples, window, device, loaded.dtype, opts.batch_size
    )
    if opts.as_json:
        result = {"checkpoint": str(loaded.path), "step": loaded.info.get("step"), "task": "hellaswag"}
        print(json.dumps({**result, "source": where, **accuracy.to_dict(), "context": window}))
        return
    print(f"{loaded.path} (step {loaded.info.get('step')}) on HellaSwag validation ({where})")
    scored = f"{accuracy.scored:,}"
    print(
        f"acc_norm {accuracy.acc_norm:.4f} ({accuracy.correct_norm:,} of {scored})   "
        f"acc {accuracy.acc:.4f} ({accuracy.correct:,} of {scored})   chance 0.25"
    )
    its = "its" if accuracy.cut == 1 else "their"
    notes = [f"{counted(accuracy.cut, 'context')} cut from {its} start to fit {counted(window, 'token')}"]
    if skipped := hellaswag.skipped_summary(accuracy):
        notes.append(f"left out of {accuracy.examples:,}: {skipped}")
    print("; ".join(notes))


def info_command(source: ConfigSource, checkpoint: str | None = None) -> None:
    """The model a config or checkpoint describes; a checkpoint adds its provenance and config."""
    if checkpoint:
        loaded = checkpoint_load.load_checkpoint(checkpoint)
        cfg, info, waived = loaded.cfg, loaded.info, []
    else:
        (cfg, waived), info = source.described(), None
    cfg, note = assumed_vocab(cfg)
    b = parameter_breakdown(cfg.model)
    m = cfg.model
    print(f"model: {m.shape()}{note}")
    print("parameters:")
    print(f"  embedding       {b.embedding:>14,}")
    print(f"  per block       {b.per_block:>14,}")
    print(f"  {f'blocks (x{m.num_layers})':<16}{b.blocks:>14,}")
    print(f"  final norm      {b.final_norm:>14,}")
    output = "tied to the embedding (0 extra)" if b.tied else f"{b.output:,}"
    print(f"  output          {output:>14}")
    print(f"  total           {b.total:>14,}")
    adapted = cfg.training.lora
    if adapted is not None:  # what a LoRA run trains, and the count its header and `runs` give
        adapters = adapter_parameters(m, adapted)
        trained = f"{lora.adapted_layers(adapted)}: the only weights trained"
        print(f"  LoRA adapters   {adapters:>14,}  ({trained})")
        print(f"  with adapters   {b.total + adapters:>14,}  (an export merges them: the total above)")
    fpt = flops_per_token(m, cfg.seq_len, cfg.training.lora)  # a LoRA run's: no frozen weights' gradients
    print(f"training FLOPs per token (context {cfg.seq_len}): {fpt:,}")
    if waived:  # a run's config.yaml: what training with it must set, which the model does not use
        print(f"note: to train with {source.config}, set these on the command line: {'; '.join(waived)}")
    if info:
        print(checkpoint_load.checkpoint_line(loaded))
        if info.get("init_from"):  # a fine-tune: the checkpoint it started from
            origin = info["init_from"]
            print(f"fine-tuned from {origin['checkpoint']} (step {origin['step']}, saved {origin['saved']})")
        if info.get("imported_from"):  # `trickster import hf`: weights from elsewhere, no data here
            print(f"imported from {info['imported_from']}")
        print(f"tokenizer fingerprint {info.get('tokenizer_fingerprint')} (from a SHA-256 of its settings)")
        if info.get("data_fingerprint"):
            print(f"data sha256 {info['data_fingerprint']} ({info.get('data_path')})")
        manifest = info.get("manifest", {})
        versions = ("trickster", "torch", "numpy", "safetensors", "python")
        print("versions: " + ", ".join(f"{k} {manifest.get(k)}" for k in versions))
        print(f"git: {manifest.get('git_sha')}, device: {manifest.get('device')}, saved {info.get('saved')}")
        print(f"config ({loaded.path / 'config.yaml'}):")
        for line in loaded.cfg.to_yaml().splitlines():
            print("  " + line)


def plan_command(
    source: ConfigSource,
    tokens: str | None = None,
    device: str | None = None,
    processes: int = 1,
    bench: bool = True,
    gpu: str | None = None,
    mfu: float | None = None,
    data: str | None = None,
) -> None:
    """`gpu`: plan for that GPU by its datasheet, whether or not this machine has one (no benchmark).
    `data`: --data, a prepared folder whose vocabulary and tokens the plan counts."""
    import torch

    from trickster import plan
    from trickster.plan_gpu import named_gpu

    named = named_gpu(gpu) if gpu is not None else None
    cfg = source.load()
    budget = plan.parse_tokens(tokens) if tokens is not None else None
    name = f"preset {source.preset}" if source.preset else str(source.config)
    if named is not None:
        where = torch.device("cuda")
    else:
        key = "--device" if device else "device_config.device"
        where = resolve_device(device or cfg.device.device, key, "or plan for a GPU by name: --gpu H100")
    made = plan.make_plan(cfg, where, budget, name, bench, processes, named, mfu, data)
    print(plan.format_plan(made))


def report_command(run_dir: str, out: str | None) -> None:
    from trickster.observe.report import write_report

    path, problem = write_report(run_dir, out)
    print(f"wrote {path} (open it in a browser)")
    if problem:
        print(f"note: {problem}")


def runs_command(folder: str) -> None:
    from trickster.observe.runs import find_runs, format_runs

    runs = find_runs(folder)
    if not runs:
        print(f"no runs in {folder} (a run folder holds metrics.jsonl; train one with `trickster train`)")
        return
    for line in format_runs(runs):
        print(line)
    for run in runs:  # what its row leaves out: a damaged line of metrics.jsonl, a missing config.yaml
        if run.problem:
            print(f"note: {run.name}: {run.problem}")


def export_command(
    target: str, fmt: str | None, out: str, dtype: str = "float32", chat_template: str | None = None
) -> Path:
    """`chat_template`: --chat-template's file, shipped with the model."""
    from trickster.export import gguf, hf

    named_gguf = Path(out).suffix.lower() == ".gguf"
    fmt = fmt or ("gguf" if named_gguf else "hf")  # `--out model.gguf` wrote a folder of that name
    if fmt == "hf" and named_gguf:
        raise UserError(
            f"--out {out} is named as a GGUF file, and --format hf writes a folder; pass --format gguf "
            "(or leave --format out), or an --out without .gguf for a Hugging Face folder"
        )
    if fmt == "gguf":
        path, loaded = gguf.export_gguf(target, out, dtype, chat_template)
        tokenizer = loaded.tokenizer
        hint = llama_cpp_hint(path, hinted_prompt(tokenizer, loaded.cfg.training.sample_prompt))
        print(f"wrote {path} ({dtype}); run it with llama.cpp: {hint}")
        if tokenizer.chat_template is not None and chat_template is None:
            print(f"chat template: {OWN_TEMPLATE}, which llama.cpp's chat tools read")
        checkpoint_load.say_picked(target, loaded)
        return path
    if fmt != "hf":
        raise UserError(f"unknown export format '{fmt}'; choose hf or gguf")
    path, shipped, loaded = hf.export_hf(target, out, dtype, chat_template)
    tokenizer = loaded.tokenizer
    print(f"wrote {path}: config.json, model.safetensors ({dtype}), generation_config.json, tokenizer files")
    print(f"load it with transformers.AutoModelForCausalLM.from_pretrained('{path}'), or: vllm serve {path}")
    # an empty file leaves the tokenizer's own template in place, unsaid (an imported one's always)
    own = OWN_TEMPLATE if tokenizer.chat_template is not None and chat_template is None else None
    if named := (chat_template if shipped else own):
        print(f"chat template: {named}, which tokenizer.apply_chat_template(messages) renders")
    checkpoint_load.say_picked(target, loaded)
    return path


def import_command(source: str, path: str, out: str, revision: str | None = None) -> Path:
    from trickster.export.hf_import import import_hf

    if source != "hf":
        raise UserError(f"unknown import source '{source}'; choose hf")
    run = import_hf(path, out, revision)
    final = run / "checkpoints" / "final"
    m = checkpoint_load.read_config(final).model
    origin = run_checkpoints.read_info(final)["imported_from"]  # a Hub repo: with the commit it resolved to
    print(f"imported {origin}: {parameter_breakdown(m).total:,} parameters, {m.shape()}")
    # 'Hello' where the tokenizer encodes it: an exported char model of lowercase text lacks 'H'
    print(f"wrote {run}/checkpoints/final; try: {next_hint(run, 'Hello')}")
    return run


def serve_command(
    target: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    device: str = "auto",
    api_key: str | None = None,
    checkpoints: str | None = None,
    chat_template: str | None = None,
    max_batch: int = MAX_BATCH,
    max_loaded_models: int = MAX_LOADED_MODELS,
    allowed_host: list[str] | None = None,
) -> int:
    """`trickster serve`: the OpenAI-compatible API and the playground over a run's checkpoints."""
    from trickster.serve.server import serve

    names = [n.strip() for n in checkpoints.split(",") if n.strip()] if checkpoints is not None else None
    return serve(
        target, host, port, device, api_key, names, chat_template, max_batch, max_loaded_models, allowed_host
    )


def _stopped_run_passed_over(out: Path, run_dir: Path) -> str | None:
    """The line for the newest folder quickstart passed over (`out`, `out-2`, ... before `run_dir`,
    see fresh_run_dir) that holds a stopped run: a rerun starts a new run, and says how to continue
    that one instead, with the command its Ctrl-C printed."""
    names = itertools.chain([out], (out.with_name(f"{out.name}-{n}") for n in itertools.count(2)))
    for folder in reversed(list(itertools.takewhile(lambda name: name != run_dir, names))):
        found = can_continue(folder)
        if found is not None:
            checkpoint, max_steps = found
            step = run_checkpoints.checkpoint_step(checkpoint)
            return (
                f"{folder} holds a stopped run (checkpoints/{checkpoint.name}, step "
                f"{step:,} of {max_steps:,}); this starts a new run in "
                f"{run_dir}. To continue that one instead: {continue_command(folder)}"
            )
    return None


def quickstart(
    path: str | None = None,
    steps: int = 1500,
    out: str | Path = "runs/quickstart",
    overrides: Sequence[str] = (),
    max_new_tokens: int = 250,
) -> int:
    """Prepare data, train the tiny preset, then compare it with an untrained model.

    `overrides` change the tiny preset after quickstart's own settings (e.g. a smaller batch); a
    training_config.max_steps among them sets the run's length as --steps does."""
    # a bad override is refused here, before the data; the schedule below, fitted to the steps,
    # passes whatever passes this (its warmup is below them, its intervals at least 1)
    length = ConfigSource(preset="tiny", overrides=[f"training_config.max_steps={steps}", *overrides])
    steps = length.load().training.max_steps
    # a tenth of a short run; fitted.py keeps tiny's 100 past 100 steps (PERFORMANCE.md: worse at 120)
    schedule = [
        f"training_config.max_steps={steps}",
        f"training_config.warmup_steps={min(100, steps // 10)}",
        f"training_config.eval_every={max(1, steps // 6)}",
        f"training_config.save_every={max(1, steps // 3)}",
    ]
    print("1/3 preparing data")
    options = PrepareOptions(tokenizer="char", out="data/shakespeare-char", progress=False)
    try:
        data_dir = prepare_data(SourceSpec("shakespeare", path=path), options, DedupSettings())
    except sources.DownloadFailed as err:  # not a full disk or a folder in use: those say so
        if path is not None:
            raise
        print(f"  Tiny Shakespeare is not reachable ({err})")
        print("  falling back to the Python standard library as the corpus")
        options.out = "data/python-stdlib-char"
        data_dir = prepare_data(SourceSpec("python-stdlib"), options, DedupSettings())
    run_dir = fresh_run_dir(Path(out))
    print(f"\n2/3 training the tiny preset for {steps} steps")
    passed_over = _stopped_run_passed_over(Path(out), run_dir)
    if passed_over:
        print(f"  {passed_over}")
    prompt = "ROMEO:" if "shakespeare" in str(data_dir) else "def "
    settings = [
        f"data_config.path={data_dir}",
        f"logging_config.output_dir={run_dir}",
        *schedule,
        f"training_config.sample_prompt={prompt}",
    ]
    code = train_command(ConfigSource(preset="tiny", overrides=[*settings, *overrides]))
    if code:  # stopped by a signal (128 + its number), its line saying how to resume
        _compare_so_far(run_dir, prompt)
        return code
    print("\n3/3 the same prompt, untrained versus trained")
    compare_command(str(run_dir), Sampling(prompt=prompt, max_new_tokens=max_new_tokens, seed=0))
    print(f"Run folder: {run_dir} (config.yaml, metrics.jsonl, loss.png, checkpoints/best, final)")
    print(f'Try: trickster generate {run_dir} --prompt "{prompt}" --max-new-tokens 500')
    print(f"     trickster report {run_dir}   (an HTML page: curves, samples, trained vs untrained)")
    return 0


def _compare_so_far(run_dir: Path, prompt: str) -> None:
    """After a stopped quick start's resume line: its third part works on the checkpoint saved so
    far, which that line left unsaid (the README names it as the next step)."""
    if run_checkpoints.latest(run_dir) is not None:  # a second Ctrl-C may stop it before any
        command = f"trickster compare {shlex.quote(str(run_dir))} --prompt {shlex.quote(prompt)}"
        print(f"or see what it has learned so far (the quick start's third part): {command}")
