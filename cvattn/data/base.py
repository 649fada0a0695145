"""The LightningDataModule shared by every cvattn dataset.

A subclass says what its data is (``num_classes``, ``in_chans``, ``object_size``, ``dataset_mean``,
``dataset_std``, ``class_names``) and how to load a split (``_load_split``); this base holds the images in
memory, holds out a seeded validation part of the training split (the test split is touched once, for the final
test), applies the albumentations pipeline, optionally places the images on translated/cluttered canvases, and
builds loaders whose training order and randomness depend only on ``(seed, epoch, index)``.

Batches are ``(images, labels)``, or ``(images, labels, boxes)`` with a canvas (see docs/design.md, "Batches").
Canvases are not standardised: with a canvas ``mean`` is 0 and ``std`` is 1, so pixels stay in [0, 1] with
a background of 0, as in Mnih et al. 2014 (a glimpse padded with black beyond the canvas sees the same 0).

Every argument is checked in the constructor, before a run writes anything: types and ranges, the training
pipeline on a blank image of the dataset's size (see ``cvattn.data.transforms.output_size``), the memory of one
batch against ``max_batch_bytes``, and, where a subclass can count its training images cheaply (``_check_files``),
that the validation split and one batch fit in them. ``setup`` checks the loaded splits again.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from cvattn.checks import check_int_range, check_open_interval
from cvattn.data.canvas import CanvasDataset, check_canvas_args
from cvattn.data.dataset import ImageDataset, Images
from cvattn.data.multi_object import MultiObjectCanvasDataset, check_num_objects
from cvattn.data.sampler import EpochSampler, ResumableDataLoader
from cvattn.data.transforms import build_transforms, output_size

# torch.Generator and numpy accept larger seeds, Lightning's seed_everything does not.
MAX_SEED = 2**32 - 1


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

    ``max_batch_bytes`` (a class attribute, 2 GiB) bounds one float32 batch, ``batch_size × in_chans × H × W × 4``
    bytes: a policy that turns a typo (``batch_size: 1e9``, ``image_size: 30000``) into an error before the run
    rather than an out-of-memory crash in it. To lift it, subclass the datamodule with a larger value and name that
    class in the config.
    """

    max_batch_bytes: int = 2**31

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
        check_int_range("batch_size", batch_size, 1)
        check_int_range("num_workers", num_workers, 0, note="(0 loads in the main process)")
        check_open_interval("val_fraction", val_fraction, 0, 1, note="(a part of train is held out)")
        check_int_range("seed", seed, 0)
        check_int_range("seed", seed, 0, MAX_SEED, note="(the range of Lightning's seed_everything)")
        if not isinstance(data_dir, (str, os.PathLike)):
            raise ValueError(f"data_dir must be a folder path (a string), got {data_dir!r}.")
        if Path(data_dir).exists() and not Path(data_dir).is_dir():
            raise ValueError(f"data_dir={str(data_dir)!r} is a file, not a folder: point data_dir at the folder that "
                             "holds (or will receive) the dataset's files.")
        if not isinstance(download, bool):
            raise ValueError(f"download must be true or false, got {download!r}.")
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
        self._check_sizes()

    def _check_sizes(self) -> None:
        """The batch memory, the training pipeline's output size, and the split sizes where they are known."""
        self._check_batch_bytes(self.image_size)
        if self.train_transform is not None:
            height, width = self.object_size
            augmented = output_size(self.train_transform, self.object_size, self.in_chans)
            if self.canvas_size is None and augmented != self.object_size:
                raise ValueError(
                    f"train_transforms turn the {height}x{width} training images into {augmented[0]}x{augmented[1]} "
                    f"ones, but validation and test images are not transformed and stay {height}x{width}: the model "
                    f"would see two sizes. End the pipeline at {height}x{width} (e.g. PadIfNeeded then RandomCrop "
                    f"of {height}x{width}, or RandomResizedCrop with size [{height}, {width}])."
                )
            if self.canvas_size is not None and max(augmented) > self.canvas_size:
                raise ValueError(
                    f"train_transforms turn the {height}x{width} objects into {augmented[0]}x{augmented[1]} ones, "
                    f"which do not fit on the {self.canvas_size}x{self.canvas_size} canvas; use canvas_size >= "
                    f"{max(augmented)} or a pipeline that ends at most {self.canvas_size}x{self.canvas_size}."
                )
        num_images = self._check_files()
        if num_images is not None:
            self._check_split_sizes(num_images)

    def _check_batch_bytes(self, size: tuple[int, int]) -> None:
        height, width = size
        nbytes = self.batch_size * self.in_chans * height * width * 4
        if nbytes > self.max_batch_bytes:
            name = type(self).__name__
            raise ValueError(
                f"One batch of batch_size={self.batch_size} float32 images of {self.in_chans}x{height}x{width} would "
                f"take {nbytes / 2**30:,.1f} GiB, more than {name}.max_batch_bytes = {self.max_batch_bytes / 2**30:g} "
                f"GiB. Lower batch_size (or the image size). The bound is a policy against running out of memory "
                f"mid-run; to lift it, subclass {name} with a larger max_batch_bytes and name that class in the config."
            )

    def _check_files(self) -> int | None:
        """Check what the dataset's files say without loading them, and return the number of training images, or
        ``None`` where that is not known cheaply (the files are then checked when ``setup`` loads them)."""
        return None

    def _check_split_sizes(self, num_images: int) -> int:
        """The number of validation images of a training split of ``num_images``; ``ValueError`` if the split
        leaves an empty part or fewer training images than one batch."""
        if num_images == 0:
            raise ValueError(f"{type(self).__name__}: the training split is empty.")
        num_val = round(num_images * self.val_fraction)
        if not 1 <= num_val < num_images:
            raise ValueError(
                f"val_fraction={self.val_fraction} of {num_images} training images leaves an empty "
                "training or validation split; use more images or another val_fraction."
            )
        if self.batch_size > num_images - num_val:
            raise ValueError(
                f"batch_size={self.batch_size} is larger than the {num_images - num_val} training images "
                f"({num_images} less {num_val} held out for validation by val_fraction={self.val_fraction}): every "
                f"epoch would be one short batch. Use batch_size <= {num_images - num_val}."
            )
        return num_val

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
            num_val = self._check_split_sizes(len(labels))
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
        if len(images) != len(labels):
            raise ValueError(f"{type(self).__name__}: the {split} split has {len(images)} images but {len(labels)} "
                             "labels; it needs one label per image.")
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
