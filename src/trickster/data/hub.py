"""Hugging Face datasets as sources: a hub name (TinyStories, FineWeb, any other) or a local copy
(parquet/json/text files, or a folder written by `save_to_disk`), streamed one row at a time."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from trickster.data.json_records import TextField
from trickster.data.links import missing
from trickster.data.no_text import NoText
from trickster.data.paths import source_of
from trickster.data.sources import DownloadFailed, Source, file_identity, one_line, require_package
from trickster.errors import UserError

TINYSTORIES = "roneneldan/TinyStories"


@dataclass
class Revision:
    """The version of a Hub dataset, which changes under the same name. `lookup()` asks the Hub for
    the commit it is at now (None when it cannot tell: offline, or any failure; then nothing is
    compared). Reading uses `pinned`, which prepare sets to the commit it records, so that what
    meta.json names is what was read, and a continued preparation reads the commit it started from."""

    lookup: Callable[[], str | None]
    pinned: str | None = None


def hub_revision(dataset: str) -> str | None:
    """The commit `dataset` is at on the Hub: one request for that field alone (not the file list)."""
    datasets = require_package("datasets", "Hugging Face datasets need the `datasets` package")
    if datasets.config.HF_HUB_OFFLINE:  # HF_HUB_OFFLINE or HF_DATASETS_OFFLINE: no request at all
        return None
    import huggingface_hub

    try:
        return huggingface_hub.HfApi().dataset_info(dataset, expand=["sha"], timeout=10).sha
    except Exception:  # no network, a gated or unknown dataset: reading it will say which, if it fails
        return None


def hf_dataset(
    dataset: str,
    config: str | None = None,
    split: str = "train",
    text_field: str = "text",
    val_split: str | None = None,
    name: str = "hf",
) -> Source:
    """A Hugging Face dataset, streamed (`datasets.load_dataset(..., streaming=True)`).

    `dataset` is a hub name (`HuggingFaceFW/fineweb-edu`) or a local folder: parquet/json/text files
    (the splits come from the file names, `train-*.parquet`, `validation-*.parquet`) or a dataset
    written by `save_to_disk`. `val_split` names the dataset's own validation split, if it is used.
    """
    require_package("datasets", "Hugging Face datasets need the `datasets` package")
    local = Path(dataset)
    identity = {
        "source": name,
        "dataset": dataset,
        "config": config,
        "split": split,
        "text_field": text_field,
    }
    if val_split:
        identity["val_split"] = val_split
    check_not_a_file(dataset)
    if local.is_dir():
        identity["files"] = file_identity(sorted(p for p in local.rglob("*") if p.is_file()))
    revision = None if local.is_dir() else Revision(lambda: hub_revision(dataset))

    def at() -> str | None:  # the commit prepare pinned before reading (None: the newest one)
        return None if revision is None else revision.pinned

    fix = _fix(name, "pass --text-field FIELD naming the one that holds the text")
    no_text = NoText("record", text_field, fix)
    # a row's text as a JSON record's, in the same words (None: TextField's own advice of the flags)
    field = TextField(text_field, one_schema=True, fix=_fix(name, None))

    def read() -> Iterator[str]:
        no_text.restart()  # a pass: its training split, then its validation split
        field.restart()
        return _hf_texts(dataset, config, split, name, at(), field, no_text)

    read_val = None
    if val_split:

        def read_val() -> Iterator[str]:
            return _hf_texts(dataset, config, val_split, name, at(), field, no_text)

    return Source(
        name, identity, read, read_val=read_val, files=[dataset], revision=revision, no_text=no_text
    )


def check_not_a_file(dataset: str) -> None:
    """Refuse a file named as a dataset (a hub name or a folder), saying which source reads it, and
    a path to nothing (./stories: no Hub name starts with '.', '/' or '~', and the Hub's words were
    "Repo id must use alphanumeric chars")."""
    local = Path(dataset)
    if dataset.startswith((".", "/", "~")) and not local.exists():
        raise UserError(
            missing(local, "pass an existing folder, or a dataset name on the Hub (ORG/NAME)", dataset)
        )
    if local.exists() and not local.is_dir():
        raise UserError(
            f"{dataset} is a file; pass a dataset name or a folder (or read this file with "
            f"`trickster data prepare {source_of(local)} {dataset}`)"
        )


def tinystories(dataset: str = TINYSTORIES) -> Source:
    """TinyStories: one story per row ("text"), with its own validation split."""
    return hf_dataset(dataset, split="train", text_field="text", val_split="validation", name="tinystories")


TINYSTORIES_LAYOUT = (
    "tinystories reads the 'text' field of splits 'train' and 'validation'; for a dataset laid out "
    "otherwise use `trickster data prepare hf DATASET` with --text-field and --split"
)


def _fix(name: str, flags: str | None) -> str | None:
    """What to change: `hf` has the flags to name fields and splits; `tinystories` has none."""
    return TINYSTORIES_LAYOUT if name == "tinystories" else flags


def _open_hf(dataset: str, config: str | None, split: str, name: str, revision: str | None):
    datasets = require_package("datasets", "Hugging Face datasets need the `datasets` package")
    import huggingface_hub

    # their retry warnings would bury the one line that says what is wrong
    datasets.logging.set_verbosity_error()
    huggingface_hub.utils.logging.set_verbosity_error()
    where = Path(dataset)
    fix = _fix(
        name,
        "check the name (and --config/--split) on huggingface.co/datasets and your connection, "
        "or pass a local folder",
    )
    if name == "tinystories" and not where.is_dir():  # from the hub: offline is the usual cause
        offline = "check your connection, or download it elsewhere and pass its folder with --dataset FOLDER"
        fix = f"{offline}; {fix}"
    try:
        if where.is_dir() and any(
            (where / f).is_file() for f in ("dataset_dict.json", "dataset_info.json", "state.json")
        ):
            saved = datasets.load_from_disk(str(where))
            if isinstance(saved, datasets.DatasetDict):
                if split not in saved:
                    raise UserError(
                        f"{dataset} has no split '{split}' (it has: {', '.join(saved)}); "
                        + _fix(name, "pass --split")
                    )
                saved = saved[split]
            return saved.to_iterable_dataset()
        return datasets.load_dataset(dataset, config, split=split, streaming=True, revision=revision)
    except UserError:
        raise
    except Exception as err:  # hub, network and file errors come as many types; the message says which
        # from the Hub, a download that failed: prepare keeps a folder an older version prepared
        failed = UserError if where.is_dir() else DownloadFailed
        raise failed(f"could not open dataset '{dataset}' split '{split}' ({one_line(err)}); {fix}") from None


def hf_rows(
    dataset: str,
    config: str | None = None,
    split: str = "train",
    name: str = "hf",
    revision: str | None = None,
) -> Iterator[dict]:
    """The rows of a dataset's split (a hub name or a local folder, as hf_dataset reads it), streamed,
    each a dict of Python values; a failure to open it or to go on reading it is one line."""
    rows = iter(_open_hf(dataset, config, split, name, revision))
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as err:  # a dropped connection mid-stream: the partial output is kept
            raise UserError(
                f"reading dataset '{dataset}' failed ({one_line(err)}); check your connection and run the "
                "same command again to continue"
            ) from None
        yield row


def _hf_texts(
    dataset: str, config: str | None, split: str, name: str, revision: str | None, field: TextField,
    no_text: NoText,
) -> Iterator[str]:  # fmt: skip
    for row in hf_rows(dataset, config, split, name, revision):
        text = field.text(row, f"dataset '{dataset}'")
        if text:
            yield text
        else:
            no_text.skipped(f"dataset '{dataset}' split '{split}'", row)
