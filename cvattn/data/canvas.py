"""Translated and cluttered canvases (Mnih, Heess, Graves, Kavukcuoglu. "Recurrent Models of Visual
Attention", NIPS 2014; docs/references.md, "Recurrent attention model"). Several objects on one canvas:
``cvattn.data.multi_object``.

Translated: the object on a blank ``canvas_size``² canvas at a random position. Cluttered: first
``num_distractors`` random ``distractor_size``² crops of *other* images of the same split at random positions,
then the object added at a random position, the sum clipped to 255 (to 1 in [0, 1] units), in the order of
DeepMind's mnist-cluttered generator. Training canvases are new every epoch; evaluation canvases are fixed by
the seed.

Deviations: training augmentations are applied to the object before it is placed (so the box stays exact);
distractors are cut from un-augmented images. Works for any number of channels.
"""
from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import numpy as np
import torch

from cvattn.data.dataset import ImageDataset, Images, split_key


def check_canvas_args(
    canvas_size: int | None, num_distractors: int, distractor_size: int, object_size: tuple[int, int]
) -> None:
    """Raise ``ValueError`` unless the canvas arguments fit objects of ``object_size`` (H, W)."""
    if num_distractors < 0:
        raise ValueError(f"num_distractors must be >= 0, got {num_distractors}.")
    if canvas_size is None:
        if num_distractors:
            raise ValueError(f"num_distractors={num_distractors} needs a canvas: set canvas_size (e.g. 60 or 100).")
        return
    if canvas_size < max(object_size):
        raise ValueError(
            f"canvas_size={canvas_size} is smaller than the {object_size[0]}x{object_size[1]} objects; "
            f"use canvas_size >= {max(object_size)} (60 or 100 in Mnih et al.)."
        )
    if not 1 <= distractor_size <= min(object_size):
        raise ValueError(
            f"distractor_size={distractor_size} must be in [1, {min(object_size)}]: distractors are crops of "
            f"{object_size[0]}x{object_size[1]} images."
        )


class CanvasDataset(ImageDataset):
    """``(image, label, box)`` samples: the object on a ``canvas_size``² canvas among distractors.

    ``image`` is float32 ``(C, canvas_size, canvas_size)``, normalised by ``mean``/``std``; ``box`` is float32
    ``(x0, y0, x1, y1)``, the object's pixels on the canvas with exclusive ends. Other arguments as
    ``ImageDataset``.
    """

    def __init__(
        self,
        images: Images,
        labels: torch.Tensor,
        mean: Sequence[float],
        std: Sequence[float],
        canvas_size: int,
        num_distractors: int = 0,
        distractor_size: int = 8,
        transform: A.Compose | None = None,
        seed: int = 0,
        train: bool = False,
    ):
        super().__init__(images, labels, mean, std, transform=transform, seed=seed, train=train)
        self.source_size = tuple(images[0].shape[:2])  # (H, W) of every image, the distractors' source
        check_canvas_args(canvas_size, num_distractors, distractor_size, self.source_size)
        if num_distractors and len(images) < 2:
            raise ValueError("Distractors are cut from other images: a cluttered canvas needs at least 2 images.")
        self.canvas_size = canvas_size
        self.num_distractors = num_distractors
        self.distractor_size = distractor_size

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        epoch, index = split_key(key)
        rng = self.sample_rng(epoch, index)
        obj = self.augmented(index, rng)                                  # (h, w, C) uint8
        canvas = self.cluttered(rng, index, obj.shape[2])                 # (size, size, C) int32
        h, w = self.check_fits(obj)
        y0, x0 = rng.integers(0, (self.canvas_size - h + 1, self.canvas_size - w + 1)).tolist()
        canvas[y0:y0 + h, x0:x0 + w] += obj
        image = np.minimum(canvas, 255).astype(np.uint8)                  # (size, size, C)
        box = torch.tensor([x0, y0, x0 + w, y0 + h], dtype=torch.float32)
        return self.normalise(image), self.labels[index], box

    def cluttered(self, rng: np.random.Generator, index: int, channels: int) -> np.ndarray:
        """An int32 (size, size, C) canvas holding the distractors, crops of images other than ``index``
        (int32: sums may exceed 255 until the caller clips them)."""
        size, crop = self.canvas_size, self.distractor_size
        canvas = np.zeros((size, size, channels), dtype=np.int32)
        height, width = self.source_size                                  # distractors come un-augmented
        # One draw per distractor: which other image, where to cut the crop, where to put it.
        highs = (len(self) - 1, height - crop + 1, width - crop + 1, size - crop + 1, size - crop + 1)
        for other, cy, cx, y, x in rng.integers(0, highs, size=(self.num_distractors, 5)).tolist():
            other += other >= index
            canvas[y:y + crop, x:x + crop] += self.images[other].numpy()[cy:cy + crop, cx:cx + crop]
        return canvas

    def check_fits(self, obj: np.ndarray) -> tuple[int, int]:
        """(h, w) of an augmented object, or a ``ValueError`` if it is larger than the canvas."""
        h, w = obj.shape[:2]
        if h > self.canvas_size or w > self.canvas_size:
            raise ValueError(f"An augmented {h}x{w} object does not fit on the {self.canvas_size}x{self.canvas_size} "
                             f"canvas.")
        return h, w
