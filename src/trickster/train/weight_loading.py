"""A checkpoint's weight files into a model, one tensor at a time.

Every process of a job loads the same model.safetensors. It was read whole before any tensor was
copied: safetensors (0.8) maps the file, the tensors were pages of the mapping (no private copy),
and every page read stayed resident in the process while the mapping lived, so at the copy each
process held the whole file (4.4 GB for a 1.1B model in float32): file pages, shared through the
page cache, yet counted in each process's resident memory (RSS), which the OOM killer weighs and
tools that add up a job's processes' RSS count once per process (8 processes: 35 GB).

Now each file's header is checked first (names, shapes and dtypes, before any weight is touched),
then each tensor is read with pread(2) (safetensors' `backend="pread"`) into memory of its own,
copied, and let go: a process holds about one tensor beyond its model. Each file is opened once,
for its check and its reads: a file replaced meanwhile (a training run writing a new `best` while
`serve` loads it) is still read whole from the copy that was checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from trickster.errors import UserError
from trickster.model import lora
from trickster.model.transformer import Transformer
from trickster.train.weights import some, weights_to_save

# safetensors' names of the dtypes a model's weights can have
DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def load_weights(model: Transformer, file: Path) -> None:
    """Copy weights into `model` (not sharded), refusing any name, shape or dtype that does not
    match exactly; nothing is copied unless every tensor of every file matches."""
    with torch.no_grad():
        for name, tensor in _tensors(model, file, mapped=False):
            model.get_parameter(name).copy_(tensor)


def read_weights(model: Transformer, file: Path) -> dict[str, torch.Tensor]:
    """The whole tensors of a checkpoint's weights file that `model` holds, by parameter name,
    checked as load_weights checks them (for a sharded model, whose loader takes them all at once).
    They are pages of the mapped file, as before: read, they would be a private copy of the whole
    file in each process."""
    return dict(_tensors(model, file, mapped=True))


def _tensors(model: Transformer, file: Path, mapped: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the weights file, read one at a time once every header matches `model`
    (`mapped`: pages of the mapped file; else read into memory of their own).
    A model with LoRA adapters (during a LoRA run) also gets its adapters, from lora.safetensors
    beside the file."""
    parts = [(file, weights_to_save(model))]
    adapters = lora.adapter_weights(model)
    if adapters:
        parts.append((file.parent / lora.ADAPTERS, adapters))
    with ExitStack() as stack:
        opened = [(stack.enter_context(_opened(path, mapped)), path, expected) for path, expected in parts]
        for f, path, expected in opened:
            _check_header(path, f, expected)
        for f, path, expected in opened:
            for name in expected:
                yield name, _read(f, path, name)


def _read(f, file: Path, name: str) -> torch.Tensor:
    try:
        return f.get_tensor(name)
    except (SafetensorError, OSError) as err:
        raise _damaged(file, err) from None


@contextmanager
def _opened(file: Path, mapped: bool):
    """safe_open of `file`, its failures (damaged, truncated, gone) as one line."""
    try:
        try:
            backend = {} if mapped else {"backend": "pread"}
            opened = safe_open(str(file), framework="pt", device="cpu", **backend)
        except TypeError:  # safetensors before 0.8 has no backend: it maps the file
            opened = safe_open(str(file), framework="pt", device="cpu")
        with opened as f:
            yield f
    except (SafetensorError, OSError) as err:
        raise _damaged(file, err) from None


def _damaged(file: Path, err: Exception) -> UserError:
    return UserError(f"{file} is damaged or not a safetensors file ({err}); use another checkpoint")


def _check_header(file: Path, f, expected: dict[str, torch.Tensor]) -> None:
    """Refuse a file whose names, shapes or dtypes (from its header: no tensor is read) are not
    exactly those of `expected`."""
    names = set(f.keys())
    missing, unexpected = sorted(set(expected) - names), sorted(names - set(expected))
    if missing or unexpected:
        raise UserError(
            f"{file} does not match its config: missing {some(missing)}, "
            f"unexpected {some(unexpected)}; was it written by another model?"
        )
    for name, want in expected.items():
        saved = f.get_slice(name)
        shape, dtype = torch.Size(saved.get_shape()), DTYPES.get(saved.get_dtype(), saved.get_dtype())
        if shape != want.shape or dtype != want.dtype:
            raise UserError(
                f"{file}: {name} is {tuple(shape)} {dtype}, the config needs "
                f"{tuple(want.shape)} {want.dtype}; the checkpoint and its config disagree"
            )
