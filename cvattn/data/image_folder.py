"""A folder of class subfolders (``root/<class>/**/<image>``), e.g. a user's bird photos.

Classes are the subfolder names in sorted order (torchvision's ``ImageFolder`` convention); folders starting with
a dot are skipped. Images are decoded with PIL when a sample is loaded, converted to RGB (grayscale and palette
images included) and resized to ``image_size``² (aspect ratio not kept), so a large folder needs no memory up
front. A file PIL cannot decode is reported by name. Normalised with ImageNet's statistics.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cvattn.data.base import ImageDataModule

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageFiles(Sequence):
    """Image files decoded on access: ``files[i]`` is a uint8 ``(size, size, 3)`` tensor; ``files[indices]``
    (a tensor or list of indices) is the ``ImageFiles`` of those files, like indexing a tensor."""

    def __init__(self, paths: Sequence[Path], size: int):
        self.paths = list(paths)
        self.size = size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (torch.Tensor, list)):
            return ImageFiles([self.paths[i] for i in torch.as_tensor(index).tolist()], self.size)
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            # OSError covers unidentified and truncated files; SyntaxError and ValueError come from broken headers.
            raise ValueError(f"Cannot decode image {path}: {err}. Remove or replace this file.") from None
        return torch.from_numpy(np.asarray(rgb).copy())                # (size, size, 3) uint8


def scan_class_folders(root: str | Path) -> tuple[list[str], list[Path], list[int]]:
    """``(class_names, image_paths, labels)`` of a folder of class subfolders; ``FileNotFoundError`` if empty."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist or is not a directory.")
    class_names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_names:
        raise FileNotFoundError(f"Image folder {root} has no class subfolders; expected {root}/<class>/<image>.")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise FileNotFoundError(
            f"Image folder {root} has class subfolders {class_names} but no images in them "
            f"(accepted extensions: {', '.join(IMAGE_EXTENSIONS)})."
        )
    return class_names, paths, labels


class ImageFolderDataModule(ImageDataModule):
    """Images in ``root/<class>/``; validation is held out of ``root``, the test split is ``test_root``.

    Args:
        root: folder of class subfolders used for training and validation.
        image_size: side every image is resized to.
        test_root: optional folder with the same class subfolders, used by ``trainer.test``.
        Others as ``ImageDataModule``.
    """

    in_chans = 3
    dataset_mean = IMAGENET_MEAN
    dataset_std = IMAGENET_STD

    def __init__(
        self,
        root: str,
        image_size: int,
        test_root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 2,
        val_fraction: float = 0.1,
        seed: int = 0,
        train_transforms: list[dict[str, Any]] | None = None,
        canvas_size: int | None = None,
        num_distractors: int = 0,
        distractor_size: int = 8,
    ):
        if image_size <= 0:
            raise ValueError(f"image_size must be a positive integer, got {image_size}.")
        self.object_size = (image_size, image_size)
        self.root = root
        self.test_root = test_root
        self._class_names, self._paths, self._labels = scan_class_folders(root)
        super().__init__(
            data_dir=root, batch_size=batch_size, num_workers=num_workers, val_fraction=val_fraction, seed=seed,
            train_transforms=train_transforms, canvas_size=canvas_size, num_distractors=num_distractors,
            distractor_size=distractor_size, download=False,
        )

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self._class_names)

    @property
    def num_classes(self) -> int:
        return len(self._class_names)

    def _load_split(self, train: bool) -> tuple[ImageFiles, torch.Tensor]:
        if train:
            return ImageFiles(self._paths, self.object_size[0]), torch.tensor(self._labels, dtype=torch.int64)
        if self.test_root is None:
            raise ValueError("ImageFolderDataModule has no test split: set test_root to a folder of class subfolders.")
        class_names, paths, labels = scan_class_folders(self.test_root)
        if class_names != self._class_names:
            raise ValueError(
                f"test_root {self.test_root} has classes {class_names}, but root {self.root} has "
                f"{self._class_names}; both need the same class subfolders."
            )
        return ImageFiles(paths, self.object_size[0]), torch.tensor(labels, dtype=torch.int64)
