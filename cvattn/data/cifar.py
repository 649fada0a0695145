"""CIFAR-10 and CIFAR-100 (Krizhevsky 2009): 32×32 RGB, 50 000 training and 10 000 test images.

Read from the dataset's own "python version" (the layout torchvision downloads): ``data_dir/cifar-10-batches-py``
(``data_batch_1``…``data_batch_5``, ``test_batch``, ``batches.meta``) or ``data_dir/cifar-100-python``
(``train``, ``test``, ``meta``; fine labels). Those batch files are pickles; they are read with an unpickler
that accepts nothing but the numpy arrays, lists and dicts they contain, so a foreign pickle cannot run code.
When the folder is missing and ``download`` is true, torchvision downloads and unpacks it.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cvattn.data.base import ImageDataModule
from cvattn.data.download import find_or_download


class _ArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled numpy array needs; anything else is an ``UnpicklingError``."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),   # pickled by numpy < 2, as the released files are
        ("numpy._core.multiarray", "_reconstruct"),  # pickled by numpy >= 2
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: not part of a CIFAR batch file")
        return super().find_class(module, name)


def read_batch(path: Path) -> dict[str, Any]:
    """One CIFAR batch or meta file as a dict; ``ValueError`` naming the file when it is not one."""
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="latin1").load()  # latin1: the files were pickled by Python 2
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a CIFAR batch file: {err}.") from None
    if not isinstance(batch, dict):
        raise ValueError(f"{path} is not a CIFAR batch file: it holds a {type(batch).__name__}, not a dict.")
    return batch


class _CifarDataModule(ImageDataModule):
    """A CIFAR variant; subclasses name its folder, files and label keys."""

    in_chans = 3
    object_size = (32, 32)
    torchvision_name: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str

    def prepare_data(self) -> None:
        self._find_folder()

    @property
    def class_names(self) -> tuple[str, ...]:
        path = self._find_folder() / self.meta_file
        names = read_batch(path).get(self.names_key)
        if not isinstance(names, (list, tuple)) or len(names) != self.num_classes:
            got = f"{len(names)} names" if isinstance(names, (list, tuple)) else repr(type(names).__name__)
            raise ValueError(f"{path} is not {self.torchvision_name}'s meta file: '{self.names_key}' should list "
                             f"{self.num_classes} class names, it holds {got}.")
        return tuple(names)

    def _load_split(self, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
        folder = self._find_folder()
        images, labels = [], []
        for name in self.train_files if train else (self.test_file,):
            batch = read_batch(folder / name)
            try:
                data = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)  # rows are R, G, B planes
                images.append(data.transpose(0, 2, 3, 1))                                # (n, 32, 32, 3)
                labels.append(np.asarray(batch[self.label_key], dtype=np.int64).reshape(-1))
            except (KeyError, ValueError, TypeError) as err:
                raise ValueError(
                    f"{folder / name} is not a {self.torchvision_name} batch: expected "
                    f"'data' (n, 3072) uint8 and '{self.label_key}'; {type(err).__name__}: {err}."
                ) from None
            if len(images[-1]) != len(labels[-1]):
                raise ValueError(
                    f"{folder / name} holds {len(images[-1])} images but {len(labels[-1])} labels in "
                    f"'{self.label_key}'; a batch needs one label per image: replace it with the dataset's own file."
                )
        return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))

    def _find_folder(self) -> Path:
        folder = Path(self.data_dir) / self.folder
        wanted = [*self.train_files, self.test_file, self.meta_file]

        def missing() -> list[str]:
            return [name for name in wanted if not (folder / name).is_file()]

        found, download_note = find_or_download(lambda: None if missing() else folder, self.torchvision_name,
                                                self.download, root=self.data_dir)
        if found is not None:
            return found
        raise FileNotFoundError(
            f"{type(self).__name__}: {folder} lacks {missing()}. Put the dataset's python version there "
            f"(data_dir={self.data_dir!r}), or let torchvision download it (download=True; here {download_note})."
        )


class CIFAR10DataModule(_CifarDataModule):
    """CIFAR-10. Statistics of the 50 000 training images (per-pixel std, not the often-quoted 0.20)."""

    num_classes = 10
    torchvision_name = "CIFAR10"
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_file = "test_batch"
    meta_file = "batches.meta"
    label_key = "labels"
    names_key = "label_names"
    dataset_mean = (0.4914, 0.4822, 0.4465)
    dataset_std = (0.2470, 0.2435, 0.2616)


class CIFAR100DataModule(_CifarDataModule):
    """CIFAR-100 with its 100 fine labels. Statistics of the 50 000 training images."""

    num_classes = 100
    torchvision_name = "CIFAR100"
    folder = "cifar-100-python"
    train_files = ("train",)
    test_file = "test"
    meta_file = "meta"
    label_key = "fine_labels"
    names_key = "fine_label_names"
    dataset_mean = (0.5071, 0.4865, 0.4409)
    dataset_std = (0.2673, 0.2564, 0.2762)
