"""`trickster import hf ORG/NAME`: a model repo on the Hugging Face Hub, fetched with huggingface_hub's
`snapshot_download` into its usual cache (HF_HOME, HF_HUB_CACHE), so that a second import, or one
with HF_HUB_OFFLINE=1, reads the same snapshot without a download.

Only the files import reads are asked for, in two steps: config.json and the tokenizer first, which
import checks (a Llama? a fast tokenizer?) before the weights, gigabytes, are fetched; then
model.safetensors, or the shards that model.safetensors.index.json names. Pickled .bin weights are
never downloaded. Every failure of the Hub (unknown repo or revision, gated, offline and not cached,
disk full) is one line that says what to do.
"""

from __future__ import annotations

import errno
import json
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from trickster.data.hf_tokens import HF_EXTRA
from trickster.data.sources import one_line
from trickster.errors import UserError, did_you_mean

# ORG/NAME as the Hub spells a repo id. Any other SOURCE (./x, /abs, ~/x, a/b/c, a name without a
# slash) is a local path, and so is an ORG/NAME that exists on disk.
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")
# what import reads besides the weights
SMALL_FILES = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "model.safetensors.index.json",
]
LOGIN = "log in with `hf auth login` (`huggingface-cli login` before huggingface_hub 1.0) or set HF_TOKEN"

Checked = TypeVar("Checked")


@dataclass(frozen=True)
class HubModel:
    repo_id: str
    revision: str | None  # as asked; None: the repo's default branch
    commit: str  # the commit it resolved to (the snapshot folder's name)
    folder: Path  # the snapshot in the Hugging Face cache

    def origin(self) -> dict:
        """What the checkpoint's info.json records: which revision a fine-tune starts from."""
        return {
            "imported_from": f"{self.repo_id} (Hugging Face Hub, commit {self.commit})",
            "hub": {"repo_id": self.repo_id, "revision": self.revision or "main", "commit": self.commit},
        }


def is_repo_id(source: str | Path) -> bool:
    """A SOURCE given as text that reads ORG/NAME and is no existing path (a Path is always local)."""
    return isinstance(source, str) and REPO_ID.fullmatch(source) is not None and not Path(source).exists()


def fetch_model(
    repo_id: str, revision: str | None, check: Callable[[Path, str], Checked]
) -> tuple[HubModel, Checked]:
    """The snapshot of `repo_id` at `revision` with what import reads; `check(folder, label)` runs on
    config.json and the tokenizer before the weights are fetched, and its result is returned."""
    first = _snapshot(repo_id, revision, SMALL_FILES)
    commit = first.name
    label = f"{repo_id}@{commit}"
    fixes = {
        "config.json": "it is not a transformers model; pass a Llama's repo id or folder",
        "tokenizer.json": (
            "only fast tokenizers are imported: "
            f"AutoTokenizer.from_pretrained('{repo_id}').save_pretrained(DIR) writes one; save the model "
            "beside it and import DIR"
        ),
    }
    for name, fix in fixes.items():
        if not (first / name).is_file():
            _refuse_if_offline(label, name)
            raise UserError(f"{label} has no {name}; {fix}")
    checked = check(first, label)
    weights = _weight_names(first / "model.safetensors.index.json")
    folder = _snapshot(repo_id, commit, weights)
    missing = [name for name in weights if not (folder / name).is_file()]
    if missing:
        _refuse_if_offline(label, missing[0])
    if missing and weights == ["model.safetensors"]:
        raise UserError(
            f"{label} has no safetensors weights (model.safetensors or model.safetensors.index.json), and "
            f"pickled .bin weights are never loaded; AutoModelForCausalLM.from_pretrained('{repo_id}')"
            ".save_pretrained(DIR) writes safetensors: import DIR"
        )
    return HubModel(repo_id, revision, commit, folder), checked


def _weight_names(index: Path) -> list[str]:
    """The shards the index names, or model.safetensors. A damaged index is left to import to report."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map")
        return sorted({name for name in weight_map.values() if isinstance(name, str)})
    except (OSError, ValueError, AttributeError, TypeError):
        return ["model.safetensors"]


def _snapshot(repo_id: str, revision: str | None, patterns: list[str]) -> Path:
    try:
        from huggingface_hub import snapshot_download, utils
    except ImportError:
        raise UserError(f"importing from the Hugging Face Hub needs `huggingface_hub`: {HF_EXTRA}") from None
    # its warnings ("No files matched"), and its progress bars in a log, would bury the one line that
    # says what is wrong; on a terminal the bars show a download of gigabytes going
    utils.logging.set_verbosity_error()
    if not sys.stderr.isatty():
        utils.disable_progress_bars()
    try:
        # offline, look in the cache only: given a commit (the weights' step), huggingface_hub 1.x
        # asks the Hub for that commit's file list unless it cached one itself, and offline mode
        # refuses that request, though the snapshot is in the cache
        folder = snapshot_download(
            repo_id, revision=revision, allow_patterns=patterns, local_files_only=_offline()
        )
    except Exception as err:  # the Hub, the network and the disk fail in many types; each said in one line
        raise _failure(err, repo_id, revision) from None
    return Path(folder)


def _failure(err: Exception, repo_id: str, revision: str | None) -> UserError:
    from huggingface_hub import constants, errors

    cache = constants.HF_HUB_CACHE
    if isinstance(err, errors.GatedRepoError):
        return UserError(
            f"{repo_id} is a gated repo: accept its terms at https://huggingface.co/{repo_id} and {LOGIN}"
        )
    if isinstance(err, errors.RepositoryNotFoundError):
        return UserError(
            f"no folder {repo_id} here and no model repo '{repo_id}' on the Hugging Face Hub; check the "
            f"name, or if it is private {LOGIN}"
        )
    if isinstance(err, errors.RevisionNotFoundError):
        return UserError(
            f"{repo_id} has no revision '{revision}'; pass one of its branches, tags or commits with "
            "--revision, or leave --revision out for main"
        )
    if isinstance(err, errors.HFValidationError):
        return UserError(f"'{repo_id}' is not a Hub repo id ({one_line(err)}); pass ORG/NAME or a folder")
    if isinstance(err, errors.LocalEntryNotFoundError):
        asked = f"{repo_id} at {revision}" if revision else repo_id
        where = f"{_not_a_folder_here(repo_id)}{asked} is not (wholly) in the Hugging Face cache ({cache})"
        if _offline():
            return UserError(
                f"{where} and HF_HUB_OFFLINE=1 forbids downloading it; connect and run again without "
                "HF_HUB_OFFLINE, or pass a local folder"
            )
        return UserError(
            f"{where} and the Hub could not be reached ({_network_reason(err.__cause__ or err)}); check your "
            "connection and run again, or pass a local folder"
        )
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"the disk is full: downloading {repo_id} into the Hugging Face cache ({cache}) stopped; free "
            "space or set HF_HUB_CACHE to a folder on a bigger disk, and run again (what was downloaded "
            "is kept)"
        )
    return UserError(
        f"downloading {repo_id} from the Hugging Face Hub failed ({one_line(err)}); check your "
        f"connection and the cache folder ({cache}), and run again, or pass a local folder"
    )


def _not_a_folder_here(repo_id: str) -> str:
    """Where ORG/NAME's ORG is a folder here (`export/tny` for `export/tiny`), the words that say
    NAME is not in it, with the closest folder that is: a mistyped local path reads as a Hub id, and
    offline its only line was about the Hub and its cache."""
    parent = Path(repo_id).parent
    if str(parent) == "." or not parent.is_dir():
        return ""
    try:
        names = [p.name for p in parent.iterdir() if p.is_dir()]
    except OSError:
        return ""
    return f"no folder {repo_id} here{did_you_mean(Path(repo_id).name, names, f'{parent}/')}, and "


def _network_reason(err: BaseException) -> str:
    """The system's words ("[Errno 111] Connection refused"), which huggingface_hub before 1.0 nests
    in several layers of requests' and urllib3's reprs."""
    said = re.search(r"\[Errno -?\d+\] [^'\"()]+", str(err))
    return said.group(0).strip() if said else one_line(err)


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _refuse_if_offline(label: str, name: str) -> None:
    """Offline, a missing file may only be missing from the cache (a download stopped half-way)."""
    if _offline():
        raise UserError(
            f"{label} is in the Hugging Face cache without {name}; connect and run again without "
            "HF_HUB_OFFLINE=1 to download it, or pass a local folder"
        )
