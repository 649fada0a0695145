"""A seeded training sampler whose order depends only on (seed, epoch).

Lightning calls ``set_epoch(epoch)`` on a dataloader's sampler before each epoch (``_set_sampler_epoch``, also
through ``DistributedSamplerWrapper``). The sampler yields ``(epoch, index)`` keys rather than bare indices so
that the dataset can derive every random choice for a sample from ``(seed, epoch, index)`` inside whichever
worker process loads it: nothing depends on how many random numbers were drawn before, or on ``num_workers``.
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Sampler

from cvattn.checks import check_int_range


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for every index once per epoch, shuffled by ``(seed, epoch)`` if ``shuffle``."""

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        check_int_range("EpochSampler's num_samples", num_samples, 1)
        check_int_range("EpochSampler's seed", seed, 0)
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            # Per-sample streams in ImageDataset end in a nonzero tag, so they never coincide with this one.
            order = np.random.default_rng((self.seed, self.epoch)).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        return ((self.epoch, int(index)) for index in order)


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that Lightning checkpoints mid-epoch, so that ``--ckpt_path`` resumes exactly.

    Lightning saves ``state_dict()`` of a training loader that has one and hands it back through ``load_state_dict``
    before iterating again. The state is the sampler's epoch and how many batches that epoch has handed out; when
    the resumed iteration is in the same epoch, those batches are loaded again and dropped (the price of not reaching
    into torch's private batch-index iterator). Iteration starts at the first ``next()``, after Lightning's
    ``set_epoch``: started eagerly, as Lightning does on resume, worker processes would read the previous epoch's order.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._epoch, self._handed_out = 0, 0
        self._resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "batches": self._handed_out}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        self._resume = state_dict

    def __iter__(self) -> Iterator[Any]:
        # EpochSampler, or Lightning's DistributedSamplerWrapper around it, which forwards set_epoch.
        self._epoch, self._handed_out = getattr(self.sampler, "epoch", 0), 0
        resume, self._resume = self._resume, None
        skip = resume["batches"] if resume is not None and resume["epoch"] == self._epoch else 0
        for batch in super().__iter__():
            self._handed_out += 1
            if self._handed_out > skip:
                yield batch
