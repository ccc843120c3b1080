"""Whether two tokenizers give every token id the same meaning: the one rule by which a model's
tokenizer is checked against a data folder's (eval and compare with --data, train --resume,
fine-tuning with training_config.init_from).

Their tokenizer.json files may differ while the ids mean the same: a char model exported to Hugging
Face (`export --format hf`) and imported back (`import hf`) has an `hf` tokenizer that encodes every
text of its corpus as the char one did. So the rule compares the tokenizers in the form `import hf`
reads an export back (export.hf.hf_tokenizer_files), by what decides the ids: the model (vocabulary,
merges), normalizer and pre-tokenizer, the added tokens and whether their text in the input stays
text (how text becomes ids), the decoder (how ids become text), and the ids that start a sequence
and end a document. Not what the files say besides: a chat template, a longest context, or other
ids that stop a generation (those change no id's meaning).
"""

from __future__ import annotations

import json

from trickster.data.tokenizers import HFTokenizer, Tokenizer

# the parts of a Hugging Face tokenizer.json that decide ids; its post-processor only adds the
# start id (bos_id, compared), its truncation and padding apply to batches of model inputs
DECIDING = ("normalizer", "pre_tokenizer", "model", "added_tokens", "decoder")


def same_ids(a: Tokenizer, b: Tokenizer) -> bool:
    """True when `a` and `b` encode text to the same ids and read ids back as the same text."""
    if a.fingerprint() == b.fingerprint():  # the same saved tokenizer
        return True
    if not isinstance(a, HFTokenizer) and not isinstance(b, HFTokenizer):
        return False  # char, byte and gpt2 save exactly what decides their ids, and nothing else
    return _meaning(a) == _meaning(b)


def _meaning(tokenizer: Tokenizer) -> dict:
    hf = tokenizer if isinstance(tokenizer, HFTokenizer) else _as_imported(tokenizer)
    spec = json.loads(hf.backend.to_str())  # as this `tokenizers` version spells it, whichever wrote it
    deciding = {key: spec.get(key) for key in DECIDING}
    # whether "<|endoftext|>" typed in a text stays text decides ids only where there are added tokens
    split_special = hf.backend.encode_special_tokens if spec.get("added_tokens") else None
    return deciding | {"split_special": split_special, "bos": hf.bos_id, "eot": hf.eot_id}


def _as_imported(tokenizer: Tokenizer) -> HFTokenizer:
    """A char, byte or gpt2 tokenizer as `import hf` reads its Hugging Face export back."""
    # here, not at the top: only a pair with an hf side (so `tokenizers` is there) comes this far
    from trickster.export.hf import hf_tokenizer_files

    files = hf_tokenizer_files(tokenizer, max_len=0)
    return HFTokenizer(files["tokenizer.json"], files["tokenizer_config.json"])
