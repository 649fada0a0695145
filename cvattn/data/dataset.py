"""Samples from uint8 images: seeded per-sample augmentation, then normalisation.

Every random choice for a sample comes from a generator seeded by ``(seed, epoch, index)``, so a training
sample is a pure function of those three numbers, whatever the worker, the number of workers, or how much
randomness was consumed before. Evaluation samples depend on ``(seed, index)`` only and are never augmented.
"""
from __future__ import annotations

import random
from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch
from torch.utils.data import Dataset

# images[i] is a uint8 (H, W, C) tensor: a uint8 (N, H, W, C) tensor in memory, or ImageFiles decoding a folder.
Images = torch.Tensor | Sequence[torch.Tensor]

# Tags that end the per-sample seeds; nonzero, so they never coincide with EpochSampler's (seed, epoch) stream
# (numpy's SeedSequence pads short seeds with zeros).
_TRAIN_STREAM, _EVAL_STREAM = 1, 2


def split_key(key: int | tuple[int, int]) -> tuple[int, int]:
    """``(epoch, index)`` from an ``EpochSampler`` key, or ``(0, index)`` from a plain index."""
    if isinstance(key, tuple):
        return key
    return 0, int(key)


class ImageDataset(Dataset):
    """``(image, label)`` samples; ``image`` float32 ``(C, H, W)`` normalised by ``mean``/``std``.

    Args:
        images: ``images[i]`` is a uint8 ``(H, W, C)`` tensor: a uint8 ``(N, H, W, C)`` tensor held in memory, or
            ``ImageFiles`` decoding a folder on access.
        labels: int64 ``(N,)``.
        mean, std: per-channel statistics in [0, 1] units.
        transform: albumentations pipeline applied to training samples only.
        seed: base of every per-sample seed.
        train: augment, and draw a new sample every epoch.
    """

    def __init__(
        self,
        images: Images,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        transform: A.Compose | None = None,
        seed: int = 0,
        train: bool = False,
    ):
        if len(images) == 0:
            raise ValueError(f"{type(self).__name__} got no images.")
        if len(images) != len(labels):
            raise ValueError(f"{type(self).__name__}: {len(images)} images but {len(labels)} labels.")
        if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.dtype != torch.int64:
            got = f"{labels.dtype} {tuple(labels.shape)}" if isinstance(labels, torch.Tensor) else type(labels).__name__
            raise ValueError(f"{type(self).__name__}: labels must be an int64 tensor of shape (N,), got {got}.")
        first = images[0]
        if not isinstance(first, torch.Tensor) or first.ndim != 3 or first.dtype != torch.uint8:
            got = f"{first.dtype} {tuple(first.shape)}" if isinstance(first, torch.Tensor) else type(first).__name__
            raise ValueError(f"{type(self).__name__}: images[i] must be uint8 (H, W, C) tensors, got {got}.")
        channels = first.shape[-1]
        if len(mean) != channels or len(std) != channels or min(std) <= 0:
            raise ValueError(f"mean and std need one value per channel ({channels} here) and std > 0, got "
                             f"mean={tuple(mean)}, std={tuple(std)}.")
        self.images = images
        self.labels = labels
        self.transform = transform
        self.seed = seed
        self.train = train
        # x_norm = x_uint8 * scale - shift, with scale = 1 / (255 std), shift = mean / std
        self._scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(-1, 1, 1)
        self._shift = (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std, dtype=torch.float32)).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = split_key(key)
        image = self.augmented(index, self.sample_rng(epoch, index))
        return self.normalise(image), self.labels[index]

    def sample_rng(self, epoch: int, index: int) -> np.random.Generator:
        if self.train:
            return np.random.default_rng((self.seed, epoch, index, _TRAIN_STREAM))
        return np.random.default_rng((self.seed, 0, index, _EVAL_STREAM))

    def augmented(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """Image ``index`` as uint8 ``(H, W, C)``, augmented from ``rng`` when training."""
        image = self.images[index].numpy()
        if self.train and self.transform is not None:
            self.transform.set_random_state(rng, random.Random(int(rng.integers(2**63))))
            image = self.transform(image=image)["image"]
        return image

    def normalise(self, image: np.ndarray) -> torch.Tensor:
        chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (H, W, C) uint8 -> (C, H, W)
        return chw.float().mul_(self._scale).sub_(self._shift)
