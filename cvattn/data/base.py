"""The LightningDataModule shared by every cvattn dataset.

A subclass says what its data is (``num_classes``, ``in_chans``, ``object_size``, ``dataset_mean``,
``dataset_std``, ``class_names``) and how to load a split (``_load_split``); this base holds the images in
memory, holds out a seeded validation part of the training split (the test split is touched once, for the final
test), applies the albumentations pipeline, optionally places the images on translated/cluttered canvases, and
builds loaders whose training order and randomness depend only on ``(seed, epoch, index)``.

Batches are ``(images, labels)``, or ``(images, labels, boxes)`` with a canvas (see docs/design.md, "Batches").
Canvases are not standardised: with a canvas ``mean`` is 0 and ``std`` is 1, so pixels stay in [0, 1] with
a background of 0, as in Mnih et al. 2014 (a glimpse padded with black beyond the canvas sees the same 0).
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from cvattn.data.canvas import CanvasDataset, check_canvas_args
from cvattn.data.dataset import ImageDataset, Images
from cvattn.data.multi_object import MultiObjectCanvasDataset, check_num_objects
from cvattn.data.sampler import EpochSampler, ResumableDataLoader
from cvattn.data.transforms import build_transforms


class ImageDataModule(L.LightningDataModule):
    """Base datamodule; see the module docstring.

    Args:
        data_dir: where the dataset files are looked for (and downloaded to).
        batch_size: samples per batch, for every split.
        num_workers: loader processes (0 loads in the main process).
        val_fraction: part of the training split held out, by a permutation seeded with ``seed``, for validation.
        seed: seeds the split, the training order, the augmentations and the canvases.
        train_transforms: albumentations pipeline for training images, e.g.
            ``[{name: HorizontalFlip, p: 0.5}]`` (see ``cvattn.data.transforms``).
        canvas_size: place every image on a ``canvas_size``² canvas (batches then carry boxes).
        num_distractors: clutter: crops of other images placed on the canvas before the object.
        distractor_size: side of those crops.
        num_objects: objects per canvas, all of different classes and not overlapping
            (``cvattn.data.multi_object``). With more than one, batches are ``(images, multi_hot, boxes, classes)``:
            ``multi_hot`` float32 ``(B, num_classes)`` (1 for each class on the canvas), ``boxes`` float32
            ``(B, num_objects, 4)``, ``classes`` int64 ``(B, num_objects)`` (the class of each box); with one, the
            single-object ``(images, labels, boxes)``.
        download: download the dataset when it is not found locally.
    """

    num_classes: int
    in_chans: int
    object_size: tuple[int, int]
    dataset_mean: tuple[float, ...]
    dataset_std: tuple[float, ...]
    class_names: tuple[str, ...]

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        seed: int = 0,
        train_transforms: list[dict[str, Any]] | None = None,
        canvas_size: int | None = None,
        num_distractors: int = 0,
        distractor_size: int = 8,
        num_objects: int = 1,
        download: bool = True,
    ):
        super().__init__()
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
        if num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0 loads in the main process), got {num_workers}.")
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1) (a part of train is held out), got {val_fraction}.")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}.")
        check_canvas_args(canvas_size, num_distractors, distractor_size, self.object_size)
        check_num_objects(num_objects, canvas_size, self.object_size, self.num_classes)
        self.data_dir = data_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.val_fraction = val_fraction
        self.seed = seed
        self.train_transform = build_transforms(train_transforms)
        self.canvas_size = canvas_size
        self.num_distractors = num_distractors
        self.distractor_size = distractor_size
        self.num_objects = num_objects
        self.download = download
        self.train_set: ImageDataset | None = None
        self.val_set: ImageDataset | None = None
        self.test_set: ImageDataset | None = None

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the batches: the canvas when there is one."""
        return (self.canvas_size, self.canvas_size) if self.canvas_size else self.object_size

    @property
    def mean(self) -> tuple[float, ...]:
        """Per-channel mean subtracted from [0, 1] pixels (0 with a canvas)."""
        return (0.0,) * self.in_chans if self.canvas_size else self.dataset_mean

    @property
    def std(self) -> tuple[float, ...]:
        """Per-channel std the pixels are divided by (1 with a canvas)."""
        return (1.0,) * self.in_chans if self.canvas_size else self.dataset_std

    def _load_split(self, train: bool) -> tuple[Images, torch.Tensor]:
        """The training (``train``) or test split: uint8 ``(N, H, W, C)`` images and int64 ``(N,)`` labels."""
        raise NotImplementedError(f"{type(self).__name__} must define _load_split")

    def setup(self, stage: str | None = None) -> None:
        if stage in ("fit", "validate", None) and self.train_set is None:
            images, labels = self._checked_split(train=True)
            num_val = round(len(labels) * self.val_fraction)
            if not 1 <= num_val < len(labels):
                raise ValueError(
                    f"val_fraction={self.val_fraction} of {len(labels)} training images leaves an empty "
                    "training or validation split; use more images or another val_fraction."
                )
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))
            val_idx, train_idx = order[:num_val], order[num_val:]
            self.train_set = self._dataset(images[train_idx], labels[train_idx], train=True)
            self.val_set = self._dataset(images[val_idx], labels[val_idx], train=False)
        if stage in ("test", None) and self.test_set is None:
            self.test_set = self._dataset(*self._checked_split(train=False), train=False)

    def _checked_split(self, train: bool) -> tuple[Images, torch.Tensor]:
        images, labels = self._load_split(train)
        split = "training" if train else "test"
        if len(labels) == 0:
            raise ValueError(f"{type(self).__name__}: the {split} split is empty.")
        if labels.min() < 0 or labels.max() >= self.num_classes:
            raise ValueError(
                f"{type(self).__name__}: {split} labels span [{labels.min()}, {labels.max()}], "
                f"expected [0, {self.num_classes - 1}]."
            )
        return images, labels

    def _dataset(self, images: Images, labels: torch.Tensor, train: bool) -> ImageDataset:
        transform = self.train_transform if train else None
        if self.canvas_size is None:
            return ImageDataset(images, labels, self.mean, self.std, transform, self.seed, train)
        if self.num_objects > 1:
            return MultiObjectCanvasDataset(
                images, labels, self.mean, self.std, self.canvas_size, self.num_objects, self.num_classes,
                self.num_distractors, self.distractor_size, transform, self.seed, train,
            )
        return CanvasDataset(
            images, labels, self.mean, self.std, self.canvas_size, self.num_distractors, self.distractor_size,
            transform, self.seed, train,
        )

    def train_dataloader(self) -> DataLoader:
        self._require("train_set", "fit")
        return self._loader(self.train_set, EpochSampler(len(self.train_set), self.seed))

    def val_dataloader(self) -> DataLoader:
        self._require("val_set", "fit")
        return self._loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        self._require("test_set", "test")
        return self._loader(self.test_set)

    def _require(self, name: str, stage: str) -> None:
        if getattr(self, name) is None:
            raise RuntimeError(f"{type(self).__name__}.{name} is not built: call setup({stage!r}) first.")

    def _loader(self, dataset: ImageDataset, sampler: EpochSampler | None = None) -> DataLoader:
        return (DataLoader if sampler is None else ResumableDataLoader)(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            # Own generator: creating the loader's iterator then draws nothing from torch's global RNG.
            generator=torch.Generator().manual_seed(self.seed),
        )
