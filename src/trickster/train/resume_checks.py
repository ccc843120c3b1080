"""A checkpoint checked to fit the run that resumes from it, before anything of it is loaded: the
same model, optimizer, seed, tokenizer and data (check_resumable, which returns the settings changed
since, to log; the tokenizer also before the data's size is judged, check_data_first), and a run
trained from scratch not resumed as a fine-tune (refuse_init_from_on_scratch, after resume.refuse_done: a run
that has done its steps says so first)."""

from __future__ import annotations

from pathlib import Path

from trickster import run_checkpoints
from trickster.config import Config, LoraConfig
from trickster.data.loader import PreparedData
from trickster.data.token_meaning import same_ids
from trickster.data.tokenizers import Tokenizer
from trickster.errors import UserError
from trickster.model.lora import adapted_layers, target_names
from trickster.train import checkpoint_load

# May differ between the checkpoint and the resumed run without being reported as a change
UNREPORTED_ON_RESUME = {"data_config.path", "logging_config.output_dir", "training_config.resume"}


def check_resumable(path: Path, saved_cfg: Config, info: dict, cfg: Config, data: PreparedData) -> dict:
    """Refuse a checkpoint of another model, tokenizer or data; return the settings that changed.
    `saved_cfg` and `info`: the checkpoint's config.yaml and info.json, as open_run read them.

    Other settings (max_steps, learning rate, intervals, ...) may change: they come back as
    {key: [old, new]} to be logged.
    """
    if saved_cfg.model != cfg.model:
        changed = [
            k for k in type(cfg.model).model_fields if getattr(saved_cfg.model, k) != getattr(cfg.model, k)
        ]
        raise UserError(
            f"cannot resume from {path}: model_config changed ({', '.join(changed)}); "
            "restore those values or start a new run with another --out"
        )
    _check_same_adapters(path, saved_cfg.training.lora, cfg.training.lora)
    if saved_cfg.training.optimizer != cfg.training.optimizer:
        raise UserError(
            f"cannot resume from {path}: it was trained with training_config.optimizer="
            f"{saved_cfg.training.optimizer} and holds that optimizer's state; set "
            f"training_config.optimizer={saved_cfg.training.optimizer}, or start a new run with another --out"
        )
    if saved_cfg.training.seed != cfg.training.seed:  # it changed only the validation set and the samples
        raise UserError(
            f"cannot resume from {path}: it was trained with training_config.seed={saved_cfg.training.seed}, "
            "and a resume continues its data order and random generators and evaluates on the validation "
            f"windows that seed drew; set training_config.seed={saved_cfg.training.seed}, or start a new run "
            "with another --out for another seed"
        )
    _check_same_data(path, info, data)
    return _changed_settings(saved_cfg, cfg)


def _check_same_adapters(path: Path, saved: LoraConfig | None, wanted: LoraConfig | None) -> None:
    """LoRA added, dropped, or with another rank or layers: the checkpoint's adapters (or their
    absence) no longer fit the model the run builds, which failed as it loaded them, with a
    traceback (lora=null) or a line that blamed the checkpoint. alpha alone may change (a setting)."""

    def shape(lora: LoraConfig | None) -> tuple | None:
        return None if lora is None else (lora.rank, target_names(lora))

    if shape(saved) == shape(wanted):
        return
    before = "none (every weight trained)" if saved is None else adapted_layers(saved)
    after = "none" if wanted is None else adapted_layers(wanted)
    restore = (
        "null"
        if saved is None
        else f"{{rank: {saved.rank}, alpha: {saved.alpha:g}, targets: [{', '.join(saved.targets)}]}} "
        "(a lora value replaces the whole setting)"
    )
    raise UserError(
        f"cannot resume from {path}: training_config.lora changed ({before} there, {after} here); "
        f"restore it with training_config.lora={restore}, or start a new run with another --out "
        "(nothing was changed)"
    )


def check_data_first(run_dir: Path, resume: bool | str, data: PreparedData) -> None:
    """On a resume, refuse data prepared with another tokenizer than the run's before the data is
    judged against the config: it showed first as a val split too small for a window, or a
    vocabulary larger than model_config.vocab_size, whose fixes send the user to change data or a
    config that are right. Looked at before the run folder is claimed, in the last checkpoint
    listed (every checkpoint of a run holds its one tokenizer), whose info.json is read only if
    the tokenizer differs, to name the newest as check_resumable does (the resume reads the one it
    continues from once: test_resume); check_resumable checks that one again under the lock. A
    folder with none, or whose checkpoint cannot be read, is left to open_run_dir to say so."""
    if not resume or not run_dir.is_dir():
        return
    try:
        listed = run_checkpoints.continuable(run_dir)
        if not listed or same_ids(checkpoint_load.read_tokenizer(listed[-1]), data.tokenizer):
            return
        newest = run_checkpoints.newest(run_dir)
    except (UserError, OSError):  # said under the lock, with its fix
        return
    if newest is not None:
        _check_same_data(*newest, data)


def _check_same_data(path: Path, info: dict, data: PreparedData) -> None:
    trained = checkpoint_load.read_tokenizer(path)
    if not same_ids(trained, data.tokenizer):
        fix = _data_fix(info, data, trained)
        raise UserError(f"cannot resume from {path}: the tokenizer changed; {fix}")
    if info.get("data_fingerprint") != data.meta.get("tokens_sha256"):
        raise UserError(f"cannot resume from {path}: the prepared data changed; {_data_fix(info, data)}")


def _data_fix(info: dict, data: PreparedData, trained: Tokenizer | None = None) -> str:
    """The fix: the data folder the checkpoint's run named (info.json, relative to where it trained);
    prepared again with another tokenizer than `trained` (the checkpoint's), both named, so that
    'as it was' says how."""
    trained_on, new_run = info.get("data_path"), "or start a new run with another --out"
    if trained_on is None:
        return "use the data it was trained on"
    if Path(trained_on).resolve() != Path(data.path).resolve():
        return f"it was trained on {trained_on}: pass --data {trained_on}, {new_run}"
    again = f"{trained_on} was prepared again since the run trained on it"
    if trained is not None:
        again += f" ({_tokenizers_named(trained, data.tokenizer)})"
    return f"{again}: prepare it as it was, {new_run}"


def _tokenizers_named(trained: Tokenizer, now: Tokenizer) -> str:
    before, after = (f"{t.kind}, vocabulary {t.vocab_size:,}" for t in (trained, now))
    if before == after:  # as many ids of the same kind, meaning others (other characters, merges)
        return f"the run trained with {before}; it holds {after} too, of other ids, now"
    return f"the run trained with {before}; it holds {after} now"


def _changed_settings(old: Config, new: Config) -> dict[str, list]:
    """{key: [old, new]}; a setting the checkpoint's config.yaml held of the wrong kind is compared
    as the file held it (its default took its place in `old`)."""
    before, after = old.to_dict(), new.to_dict()
    changed = {}
    for section, values in after.items():
        for key, value in values.items():
            dotted = f"{section}.{key}"
            previous = old.set_aside.get(dotted, before.get(section, {}).get(key))
            if previous != value and dotted not in UNREPORTED_ON_RESUME:
                changed[dotted] = [previous, value]
    return changed


def refuse_init_from_on_scratch(checkpoint: Path, saved: Config, cfg: Config) -> None:
    """A run trained from scratch resumed with training_config.init_from: a resume continues from
    its checkpoint and never reads init_from, which the run would yet record as where it began (its
    config.yaml, 'Resuming the fine-tune', 'changed on resume'). A fine-tune may name its base
    anew (moved since: its checkpoint holds every weight)."""
    wanted = cfg.training.init_from
    if saved.training.init_from is None and wanted is not None:
        raise UserError(
            f"cannot resume from {checkpoint}: the run was trained from scratch, and a resume continues "
            f"from its checkpoint, never from training_config.init_from ({wanted}); drop init_from to "
            f"continue the run, or start a fine-tune of {wanted} with another --out (nothing was changed)"
        )
