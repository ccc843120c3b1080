"""The typed arguments of the commands in commands.py, in groups that travel together.

Field names are the command line's option names (`--max-new-tokens` is `max_new_tokens`), so cli.py
fills each group from the parsed options by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # cli_parser reads Sampling's defaults for --help, before pydantic is needed
    from trickster.config import Config


@dataclass
class SourceSpec:
    """What `trickster data prepare SOURCE` reads; each source uses the fields it needs."""

    source: str  # shakespeare, tinystories, hf, text, python-stdlib, jsonl, parquet
    path: str | None = None  # shakespeare: a local copy instead of downloading
    paths: list[str] = field(default_factory=list)  # text, jsonl, parquet: files, folders, globs
    dataset: str | None = None  # tinystories, hf: a hub name or a local folder
    config: str | None = None  # hf: the dataset's configuration (subset)
    split: str = "train"  # hf: the split to read
    text_field: str | None = None  # hf, jsonl, parquet: the field holding the text
    template: str | None = None  # jsonl: join each record into one document
    # fine-tuning records: jsonl's default without the two above (prompt-response); parquet, hf
    record_format: str | None = None


@dataclass
class PrepareOptions:
    """How `trickster data prepare` tokenizes and writes."""

    tokenizer: str | None = None  # char (default), byte, bpe or gpt2: build a new one
    vocab_size: int | None = None  # bpe: the vocabulary to train up to
    tokenizer_from: str | None = None  # a run, checkpoint, data folder or tokenizer.json to reuse
    out: str | None = None  # the data folder (default data/SOURCE-TOKENIZER)
    val_fraction: float = 0.1
    workers: int | None = None  # tokenizing processes (default: one per CPU)
    shard_tokens: int | None = None  # tokens per shard file
    progress: bool = True


@dataclass
class ConfigSource:
    """A run's config: a preset or a YAML file, then `section.key=value` overrides in order."""

    preset: str | None = None
    config: str | None = None
    overrides: list[str] = field(default_factory=list)

    def load(self) -> Config:
        from trickster.config import load_config

        return load_config(self.config, self.preset, self.overrides)

    def described(self) -> tuple[Config, list[str]]:
        """The config to describe, and the problems waived in it: one a run saved is read as its
        checkpoints are, its training settings as saved (config_saved.described)."""
        from trickster.config_saved import described

        return described(self.config, self.preset, self.overrides)


@dataclass
class Sampling:
    """What `generate` and `compare` continue, and how they sample."""

    prompt: str | None = None  # None: a line break, or a new document where the vocabulary has none
    max_new_tokens: int = 300
    temperature: float = 0.8  # 0 means greedy
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass
class EvalOptions:
    """`trickster eval`: a run or checkpoint scored on a data folder's val split or a text file, or
    its HellaSwag accuracy."""

    target: str
    data: str | None = None  # default: the run's data folder
    text: str | None = None
    task: str | None = None  # hellaswag: accuracy on its validation set instead of a loss
    hellaswag_file: str | None = None  # a local copy of hellaswag_val.jsonl instead of the cached download
    max_tokens: int | None = None
    max_examples: int | None = None  # --task: the first N examples only
    batch_size: int = 8
    device: str = "auto"
    as_json: bool = False
