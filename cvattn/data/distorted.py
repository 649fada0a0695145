"""Distorted MNIST / Fashion-MNIST, the spatial transformer paper's tasks (Jaderberg et al., NIPS 2015, §4.1;
docs/references.md, "Spatial transformers").

- ``'rotated'`` (R): the image rotated by an angle uniform in ±90° about its centre, on its own 28×28 frame;
- ``'rts'`` (RTS): rotated by an angle uniform in ±45°, scaled by a factor uniform in [0.7, 1.2], and placed at
  a uniform random position on a blank 42×42 canvas.

(The translated and cluttered 60×60 canvases are ``canvas_size``/``num_distractors`` of every datamodule,
``cvattn.data.canvas``.)

Placement: the object's centre is uniform over the positions where the scaled, unrotated image (a square of side
28·s) lies wholly on the canvas. The sample's ``box`` is that square, ``(cx - 14s, cy - 14s, cx + 14s, cy + 14s)``
in pixels (exclusive ends, float): it holds the object whatever the angle, since an MNIST digit lies in the central
20×20 of its image and 20·√2 ≈ 28 (a Fashion-MNIST item fills more of its image, so its rotated corners can reach
past the box), and its centre is the object's centre. On the rotated task the box is the whole 28×28 image.
Bilinear resampling (OpenCV's ``warpAffine``), black beyond the source image. Pixels stay in [0, 1], background 0,
as on the other canvases. Training samples are new every epoch, evaluation samples fixed by the seed (a pure
function of ``(seed, epoch, index)``, ``cvattn.data.dataset``).

Deviations: the paper does not say how it resamples or how it bounds the placement; the above is cvattn's choice.
Training augmentations (``train_transforms``) are applied to the 28×28 image before the distortion.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch

from cvattn.checks import check_choice, check_int_range
from cvattn.data.dataset import ImageDataset, Images, split_key
from cvattn.data.mnist import FashionMNISTDataModule, MNISTDataModule

# The paper's settings: (largest |angle| in degrees, (smallest, largest) scale, canvas side).
DISTORTIONS: dict[str, tuple[float, tuple[float, float], int | None]] = {
    "rotated": (90.0, (1.0, 1.0), None),     # None: the image's own size
    "rts": (45.0, (0.7, 1.2), 42),
}


def check_distortion_args(max_angle: float, scale_range: Sequence[float], canvas_size: int,
                          object_size: tuple[int, int]) -> tuple[float, float]:
    """The checked ``scale_range``; ``ValueError`` unless the angle, scales and canvas fit ``object_size``."""
    if isinstance(max_angle, bool) or not isinstance(max_angle, (int, float)) or not 0 <= max_angle <= 180:
        raise ValueError(f"max_angle must be a number of degrees in [0, 180], got {max_angle!r}.")
    if (not isinstance(scale_range, (tuple, list)) or len(scale_range) != 2
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scale_range)
            or not 0 < scale_range[0] <= scale_range[1]):
        raise ValueError(f"scale_range must be (smallest, largest) with 0 < smallest <= largest, got "
                         f"{scale_range!r}; the paper's RTS uses (0.7, 1.2).")
    check_int_range("canvas_size", canvas_size, 1)
    largest = math.ceil(max(object_size) * scale_range[1])
    if canvas_size < largest:
        raise ValueError(f"canvas_size={canvas_size} cannot hold a {object_size[0]}x{object_size[1]} image scaled by "
                         f"{scale_range[1]} ({largest} pixels); use canvas_size >= {largest} or a smaller largest "
                         f"scale.")
    return float(scale_range[0]), float(scale_range[1])


class DistortedDataset(ImageDataset):
    """``(image, label, box)`` samples: each image rotated, scaled and placed on a ``canvas_size``² canvas.

    ``image`` float32 ``(C, canvas_size, canvas_size)`` in [0, 1] (``mean`` 0, ``std`` 1 as on every canvas, or
    as given); ``box`` float32 ``(x0, y0, x1, y1)`` (module docstring). ``params(key)`` gives the
    ``(angle, scale, cx, cy)`` a sample is made with. Other arguments as ``ImageDataset``.
    """

    def __init__(self, images: Images, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                 max_angle: float, scale_range: Sequence[float], canvas_size: int,
                 transform: A.Compose | None = None, seed: int = 0, train: bool = False):
        super().__init__(images, labels, mean, std, transform=transform, seed=seed, train=train)
        self.source_size = tuple(images[0].shape[:2])                         # (H, W)
        self.scale_range = check_distortion_args(max_angle, scale_range, canvas_size, self.source_size)
        self.max_angle = float(max_angle)
        self.canvas_size = canvas_size

    def _draw(self, rng: np.random.Generator, side: int) -> tuple[float, float, float, float]:
        angle = float(rng.uniform(-self.max_angle, self.max_angle))
        scale = float(rng.uniform(*self.scale_range))
        half = side * scale / 2
        cx, cy = rng.uniform(half, self.canvas_size - half, size=2).tolist()
        return angle, scale, cx, cy

    def params(self, key: int | tuple[int, int]) -> tuple[float, float, float, float]:
        """``(angle in degrees, scale, cx, cy)`` of sample ``key``, the centre in pixels (edge coordinates)."""
        epoch, index = split_key(key)
        rng = self.sample_rng(epoch, index)
        obj = self.augmented(index, rng)
        return self._draw(rng, max(obj.shape[:2]))

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, index = split_key(key)
        rng = self.sample_rng(epoch, index)
        obj = self.augmented(index, rng)                                          # (h, w, C) uint8
        h, w = obj.shape[:2]
        angle, scale, cx, cy = self._draw(rng, max(h, w))
        # OpenCV puts pixel centres at integers; box coordinates put them at +0.5.
        matrix = cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), angle, scale)   # about the source centre
        matrix[:, 2] += (cx - 0.5 - (w - 1) / 2, cy - 0.5 - (h - 1) / 2)              # ... moved to (cx, cy)
        size = self.canvas_size
        canvas = cv2.warpAffine(obj, matrix, (size, size), flags=cv2.INTER_LINEAR,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        canvas = canvas.reshape(size, size, obj.shape[2])                        # warpAffine drops a single channel
        half = max(h, w) * scale / 2
        box = torch.tensor([cx - half, cy - half, cx + half, cy + half], dtype=torch.float32)
        return self.normalise(canvas), self.labels[index], box


class _DistortedMixin:
    """A 28×28 datamodule whose images are distorted (module docstring); batches ``(images, labels, boxes)``."""

    def __init__(self, distortion: str = "rts", data_dir: str = "data", batch_size: int = 128, num_workers: int = 2,
                 val_fraction: float = 0.1, seed: int = 0, train_transforms: list[dict[str, Any]] | None = None,
                 download: bool = True):
        check_choice("distortion", distortion, DISTORTIONS)
        self.distortion = distortion
        max_angle, scale_range, canvas_size = DISTORTIONS[distortion]
        self.max_angle, self.scale_range = max_angle, scale_range
        self.distorted_size = canvas_size or self.object_size[0]
        super().__init__(data_dir=data_dir, batch_size=batch_size, num_workers=num_workers,
                         val_fraction=val_fraction, seed=seed, train_transforms=train_transforms, download=download)

    @property
    def image_size(self) -> tuple[int, int]:
        return (self.distorted_size, self.distorted_size)

    @property
    def mean(self) -> tuple[float, ...]:
        return (0.0,) * self.in_chans

    @property
    def std(self) -> tuple[float, ...]:
        return (1.0,) * self.in_chans

    def _dataset(self, images: Images, labels: torch.Tensor, train: bool) -> ImageDataset:
        return DistortedDataset(images, labels, self.mean, self.std, self.max_angle, self.scale_range,
                                self.distorted_size, self.train_transform if train else None, self.seed, train)


class DistortedMNISTDataModule(_DistortedMixin, MNISTDataModule):
    """MNIST, rotated (``distortion='rotated'``, 28×28) or rotated, scaled and translated (``'rts'``, 42×42), as
    in Jaderberg et al. 2015 (module docstring). Other arguments as ``ImageDataModule``."""


class DistortedFashionMNISTDataModule(_DistortedMixin, FashionMNISTDataModule):
    """Fashion-MNIST with the distortions of ``DistortedMNISTDataModule``."""


__all__ = ["DISTORTIONS", "DistortedDataset", "DistortedFashionMNISTDataModule", "DistortedMNISTDataModule",
           "check_distortion_args"]
