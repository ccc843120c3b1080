"""Training batches on their way to the device, one micro-batch ahead of the step that uses them."""

from __future__ import annotations

import torch

from trickster.data.loader import BatchSampler, split_rows


class DeviceBatches:
    """Draws each micro-batch while the device still works on the one before.

    A batch is one contiguous (B, T+1) host tensor (page-locked on CUDA), copied with one
    non-blocking transfer and split into inputs and targets on the device: a strided slice would
    be staged through pageable memory and block. `state_dict()` is the sampler's position before
    the batch drawn ahead, so a checkpoint resumes with exactly the batch the step would have used.
    """

    def __init__(self, sampler: BatchSampler, device: torch.device):
        self.sampler, self.device = sampler, device
        self._ahead: tuple[dict, torch.Tensor] | None = None

    def prefetch(self) -> None:
        if self._ahead is None:
            position = self.sampler.state_dict()
            rows = self.sampler.next_rows(pin=self.device.type == "cuda")
            self._ahead = (position, rows.to(self.device, non_blocking=True))

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) on the device: (B, T) views of one transferred tensor."""
        self.prefetch()
        _, rows = self._ahead
        self._ahead = None
        return split_rows(rows, self.sampler.seq_len)

    def state_dict(self) -> dict:
        return self._ahead[0] if self._ahead is not None else self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._ahead = None
        self.sampler.load_state_dict(state)
