"""A seeded training sampler whose order depends only on (seed, epoch).

Lightning calls ``set_epoch(epoch)`` on a dataloader's sampler before each epoch (``_set_sampler_epoch``, also
through ``DistributedSamplerWrapper``). The sampler yields ``(epoch, index)`` keys rather than bare indices so
that the dataset can derive every random choice for a sample from ``(seed, epoch, index)`` inside whichever
worker process loads it: nothing depends on how many random numbers were drawn before, or on ``num_workers``.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for every index once per epoch, shuffled by ``(seed, epoch)`` if ``shuffle``."""

    def __init__(self, num_samples: int, seed: int = 0, shuffle: bool = True):
        if num_samples <= 0:
            raise ValueError(f"EpochSampler needs at least one sample, got num_samples={num_samples}.")
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
