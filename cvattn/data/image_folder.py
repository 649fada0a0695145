"""A folder of class subfolders (``root/<class>/**/<image>``), e.g. a user's bird photos.

Classes are the subfolder names in sorted order (torchvision's ``ImageFolder`` convention); folders starting with
a dot are skipped. Images are decoded with PIL when a sample is loaded, converted to RGB (grayscale and palette
images included) and resized to ``image_size``² (aspect ratio not kept), so a large folder needs no memory up
front. A file PIL cannot decode is reported by name. Normalised with ImageNet's statistics.

Both folders are scanned when the datamodule is built: a class subfolder without images (say, one holding only a
README.txt) is refused rather than becoming a class that is never seen, and ``test_root`` must have the classes of
``root``. ``image_size`` is at most ``max_image_size`` (4096), a policy like ``max_batch_bytes``.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
import os
from typing import Any

import numpy as np
import torch
from PIL import Image

from cvattn.checks import check_int_range
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
    """``(class_names, image_paths, labels)`` of a folder of class subfolders; ``FileNotFoundError`` if it has no
    images, ``ValueError`` naming the class subfolders that have none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Image folder {root} does not exist or is not a directory.")
    class_names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_names:
        raise FileNotFoundError(f"Image folder {root} has no class subfolders; expected {root}/<class>/<image>.")
    files = {name: sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
             for name in class_names}
    if not any(files.values()):
        raise FileNotFoundError(
            f"Image folder {root} has class subfolders {class_names} but no images in them "
            f"(accepted extensions: {', '.join(IMAGE_EXTENSIONS)})."
        )
    empty = [name for name in class_names if not files[name]]
    if empty:
        holds = "; ".join(f"{root / name} holds {_listing(root / name)}" for name in empty[:3])
        raise ValueError(
            f"Image folder {root}: class subfolder(s) {empty} have no images ({holds}), so their classes would never "
            f"be seen. Every subfolder of {root} is a class: add images (accepted extensions: "
            f"{', '.join(IMAGE_EXTENSIONS)}) or move the folder out."
        )
    paths = [path for name in class_names for path in files[name]]
    labels = [label for label, name in enumerate(class_names) for _ in files[name]]
    return class_names, paths, labels


def _listing(folder: Path, examples: int = 3) -> str:
    """``"nothing"``, or ``"only README.txt, notes/ (2 entries)"``: what a class folder without images holds."""
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    if not entries:
        return "nothing"
    more = f" and {len(entries) - examples} more" if len(entries) > examples else ""
    return f"only {', '.join(entries[:examples])}{more}"


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
    max_image_size: int = 4096

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
        for name, folder in (("root", root), ("test_root", test_root)):
            if not isinstance(folder, (str, os.PathLike)) and not (name == "test_root" and folder is None):
                raise ValueError(f"{name} must be a folder path (a string), got {folder!r}.")
        check_int_range("image_size", image_size, 1)
        if image_size > self.max_image_size:
            raise ValueError(
                f"image_size={image_size} is above ImageFolderDataModule.max_image_size = {self.max_image_size}: "
                f"every image would be decoded and resized to {image_size}x{image_size}. Use a smaller image_size "
                "(224 is usual). The bound is a policy against running out of memory mid-run; to lift it, subclass "
                "ImageFolderDataModule with a larger max_image_size and name that class in the config."
            )
        self.object_size = (image_size, image_size)
        self.root = root
        self.test_root = test_root
        self._class_names, self._paths, self._labels = scan_class_folders(root)
        self._test_split = None if test_root is None else self._scan_test_root()
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
        if self._test_split is None:
            raise ValueError("ImageFolderDataModule has no test split: set test_root to a folder of class subfolders.")
        paths, labels = self._test_split
        return ImageFiles(paths, self.object_size[0]), torch.tensor(labels, dtype=torch.int64)

    def _check_files(self) -> int:
        return len(self._paths)

    def _scan_test_root(self) -> tuple[list[Path], list[int]]:
        class_names, paths, labels = scan_class_folders(self.test_root)
        if class_names != self._class_names:
            raise ValueError(
                f"test_root {self.test_root} has classes {class_names}, but root {self.root} has "
                f"{self._class_names}; both need the same class subfolders."
            )
        return paths, labels
