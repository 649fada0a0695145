"""Hostile-but-realistic data input: every bad value is refused where it enters (mostly the datamodule's constructor,
before a run writes anything) with one paragraph naming the value, what is accepted and the fix; nothing is written.

One test per class of failure, parametrised over its instances. The datasets are tiny generated IDX files, image
folders and CIFAR batches in tmp_path (see test_data)."""
from __future__ import annotations

import contextlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from test_data import no_system_copy, write_cifar, write_idx, write_mnist_like  # noqa: F401 (fixture)

from cvattn.data import (CIFAR10DataModule, EpochSampler, FashionMNISTDataModule, ImageDataset,
                         ImageFolderDataModule, MNISTDataModule, build_transforms)
from cvattn.data.transforms import output_size

REPO = Path(__file__).resolve().parents[1]


def tree(root: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_size if p.is_file() else -1) for p in root.rglob("*"))


@contextlib.contextmanager
def refused(root: Path, *parts: str, error: type[Exception] = ValueError):
    """The block raises ``error`` with a one-paragraph message containing every one of ``parts``, and leaves the
    files under ``root`` as they were."""
    before = tree(root)
    with pytest.raises(error) as info:
        yield
    message = str(info.value)
    missing = [part for part in parts if part not in message]
    assert not missing, f"{missing} not in: {message}"
    assert "\n" not in message
    assert tree(root) == before


@pytest.fixture
def fmnist(tmp_path, no_system_copy) -> Path:  # noqa: F811 (the imported fixture)
    """100 training images (90 after the default 10% validation), 20 test images."""
    write_mnist_like(tmp_path / "fmnist")
    return tmp_path / "fmnist"


def image_folder(root: Path, classes: tuple[str, ...] = ("robin", "wren"), per_class: int = 7) -> Path:
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


# --------------------------------------------------------------------------------- argument types and ranges

@pytest.mark.parametrize("kwargs, parts", [
    ({"batch_size": 1e9}, ["batch_size must be a positive integer", "1000000000.0", "float", "write 1000000000"]),
    ({"batch_size": True}, ["batch_size must be a positive integer", "True", "bool"]),
    ({"batch_size": "32"}, ["batch_size must be a positive integer", "'32'", "str"]),
    ({"batch_size": -4}, ["batch_size must be a positive integer, got -4"]),
    ({"num_workers": -1}, ["num_workers must be >= 0 (0 loads in the main process), got -1"]),
    ({"num_workers": 1.5}, ["num_workers must be >= 0", "1.5"]),
    ({"val_fraction": 1.5}, ["val_fraction must be in (0, 1)", "1.5"]),
    ({"val_fraction": "0.1"}, ["val_fraction must be in (0, 1)", "'0.1'"]),
    ({"val_fraction": float("nan")}, ["val_fraction must be in (0, 1)", "nan"]),
    ({"val_fraction": True}, ["val_fraction must be in (0, 1)", "True"]),
    ({"seed": -1}, ["seed must be >= 0, got -1"]),
    ({"seed": 2**40}, ["seed must be an integer in [0, 4294967295]", str(2**40), "seed_everything"]),
    ({"seed": 0.5}, ["seed must be >= 0", "0.5", "float"]),
    ({"download": "yes"}, ["download must be true or false", "'yes'"]),
    ({"data_dir": None}, ["data_dir must be a folder path", "None"]),
    ({"data_dir": 7}, ["data_dir must be a folder path", "7"]),
], ids=lambda v: str(v) if not isinstance(v, list) else "")
def test_argument_types_and_ranges(fmnist, kwargs, parts):
    with refused(fmnist.parent, *parts):
        FashionMNISTDataModule(**{"data_dir": str(fmnist), "batch_size": 16, **kwargs})


def test_data_dir_that_is_a_file(tmp_path, no_system_copy):  # noqa: F811
    (tmp_path / "data").write_text("not a folder")
    with refused(tmp_path, "data_dir=", "data' is a file, not a folder"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "data"))


# ------------------------------------------------------------------------------- batch size against the data

@pytest.mark.parametrize("module, kwargs, parts", [
    ("fmnist", {"batch_size": 91}, ["batch_size=91 is larger than the 90 training images", "100 less 10",
                                    "Use batch_size <= 90"]),
    ("fmnist", {"batch_size": 10**9}, ["batch_size=1000000000", "1x28x28", "2,920.6 GiB", "Lower batch_size",
                                       "FashionMNISTDataModule.max_batch_bytes", "subclass FashionMNISTDataModule"]),
    ("fmnist", {"batch_size": 20, "val_fraction": 0.9}, ["batch_size=20 is larger than the 10 training images"]),
    ("folder", {"batch_size": 13}, ["batch_size=13 is larger than the 12 training images", "14 less 2"]),
    ("folder", {"batch_size": 4, "image_size": 30000}, ["image_size=30000", "max_image_size = 4096",
                                                        "subclass ImageFolderDataModule"]),
    ("folder", {"batch_size": 128, "image_size": 4096}, ["batch_size=128", "3x4096x4096", "24.0 GiB"]),
], ids=["batch>train", "batch-memory", "batch>train-after-val", "folder-batch>train", "folder-image-size",
        "folder-batch-memory"])
def test_batch_size_against_the_data(tmp_path, fmnist, module, kwargs, parts):
    if module == "fmnist":
        with refused(tmp_path, *parts):
            FashionMNISTDataModule(data_dir=str(fmnist), **kwargs)
    else:
        root = image_folder(tmp_path / "birds")
        with refused(tmp_path, *parts):
            ImageFolderDataModule(root=str(root), **{"image_size": 16, "val_fraction": 0.15, **kwargs})


def test_the_memory_bound_is_a_policy_a_subclass_lifts(fmnist):
    class BigBatches(FashionMNISTDataModule):
        max_batch_bytes = 2**50
    with refused(fmnist.parent, "batch_size=1000000000 is larger than the 90 training images"):
        BigBatches(data_dir=str(fmnist), batch_size=10**9)   # the next check answers: the bound is lifted
    assert BigBatches(data_dir=str(fmnist), batch_size=90).batch_size == 90


def test_batch_size_is_checked_again_when_the_files_come_later(tmp_path, no_system_copy):  # noqa: F811
    """Files not found when the datamodule is built (to be downloaded) are checked when setup loads them."""
    data = FashionMNISTDataModule(data_dir=str(tmp_path / "later"), batch_size=91)
    write_mnist_like(tmp_path / "later")
    with refused(tmp_path, "batch_size=91 is larger than the 90 training images"):
        data.setup("fit")


# -------------------------------------------------------------------------------- training pipeline geometry

@pytest.mark.parametrize("spec, parts", [
    ([{"name": "RandomCrop", "height": 32, "width": 32}],
     ["train_transforms[0]: RandomCrop of size 32x32 does not fit the 28x28 images", "at most 28x28"]),
    ([{"name": "Resize", "height": 20, "width": 20}, {"name": "CenterCrop", "height": 24, "width": 24}],
     ["train_transforms[1]: CenterCrop of size 24x24 does not fit the 20x20 images", "dataset's 28x28 images"]),
    ([{"name": "RandomResizedCrop", "size": [20, 20]}, {"name": "RandomCrop", "height": 28, "width": 28}],
     ["train_transforms[1]: RandomCrop of size 28x28 does not fit the 20x20 images"]),
    ([{"name": "OneOf", "transforms": [{"name": "Blur"}, {"name": "RandomCrop", "height": 40, "width": 40}]}],
     ["train_transforms[0].transforms[1]: RandomCrop of size 40x40"]),
    ([{"name": "RandomCrop", "height": 20, "width": 20, "p": 0.5}],
     ["several sizes (20x20, 28x28)", "a batch needs one size", "set p: 1"]),
    ([{"name": "OneOf", "transforms": [{"name": "Resize", "height": 20, "width": 20}, {"name": "Blur"}]}],
     ["several sizes (20x20, 28x28)"]),
    ([{"name": "RandomCrop", "height": 24, "width": 24}],
     ["into 24x24 ones", "validation and test images are not transformed and stay 28x28", "PadIfNeeded"]),
    ([{"name": "ToRGB"}], ["train_transforms[0]: ToRGB", "(28, 28, 3)", "1 channel(s)"]),
], ids=["crop>image", "crop>resized", "crop>random-resized", "oneof-branch", "p<1", "oneof-sizes",
        "train!=eval", "channels"])
def test_training_pipeline_geometry(fmnist, spec, parts):
    with refused(fmnist.parent, *parts):
        FashionMNISTDataModule(data_dir=str(fmnist), batch_size=16, train_transforms=spec)


def test_pipelines_that_fit_are_accepted(fmnist, tmp_path):
    """Every pipeline of the shipped configs, and size changes that end at the dataset's size, pass the check."""
    for config in sorted((REPO / "configs").glob("*.yaml")):
        data = yaml.safe_load(config.read_text())["data"]
        if isinstance(data, str):   # a composed config names its data section's file (docs/configs.md)
            data = yaml.safe_load((config.parent / data).read_text())
        spec = data["init_args"].get("train_transforms")
        size, channels = ((32, 32), 3) if "cifar" in config.name else ((28, 28), 1)
        if spec:
            assert output_size(build_transforms(spec), size, channels) == size, config.name
    for spec in ([{"name": "Resize", "height": 40, "width": 40}, {"name": "RandomCrop", "height": 28, "width": 28}],
                 [{"name": "RandomCrop", "height": 20, "width": 20, "p": 0.5}, {"name": "Resize", "height": 28,
                                                                               "width": 28}]):
        FashionMNISTDataModule(data_dir=str(fmnist), batch_size=16, train_transforms=spec)
    root = image_folder(tmp_path / "birds")   # 3 channels, image_size 16
    ImageFolderDataModule(root=str(root), image_size=16, batch_size=4, train_transforms=[
        {"name": "PadIfNeeded", "min_height": 20, "min_width": 20}, {"name": "RandomCrop", "height": 16, "width": 16}])


def test_augmented_objects_must_fit_the_canvas(fmnist):
    with refused(fmnist.parent, "into 40x40 ones, which do not fit on the 30x30 canvas", "canvas_size >= 40"):
        FashionMNISTDataModule(data_dir=str(fmnist), batch_size=16, canvas_size=30,
                               train_transforms=[{"name": "Resize", "height": 40, "width": 40}])


# ------------------------------------------------------------------------------------ IDX files that disagree

def _short_images(d: Path):
    write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((90, 28, 28)))


def _short_labels(d: Path):
    write_idx(d / "train-labels-idx1-ubyte.gz", np.arange(80) % 10)


def _wrong_shape(d: Path):
    write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((100, 14, 56)))


def _flat_images(d: Path):
    write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((100, 784)))


def _two_d_labels(d: Path):
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros((100, 2)))


def _short_test_labels(d: Path):
    write_idx(d / "t10k-labels-idx1-ubyte.gz", np.arange(19) % 10)


@pytest.mark.parametrize("damage, parts", [
    (_short_images, ["train-images-idx3-ubyte.gz holds 90 images but", "train-labels-idx1-ubyte.gz holds 100 labels",
                     "one label per image"]),
    (_short_labels, ["train-images-idx3-ubyte.gz holds 100 images but", "train-labels-idx1-ubyte.gz holds 80 labels"]),
    (_wrong_shape, ["train-images-idx3-ubyte.gz holds images of 14x56, but FashionMNIST images are 28x28"]),
    (_flat_images, ["train-images-idx3-ubyte.gz holds images of shape (100, 784)", "(N, 28, 28)"]),
    (_two_d_labels, ["train-labels-idx1-ubyte.gz holds an array of shape (100, 2)", "shape (N,)"]),
    (_short_test_labels, ["t10k-images-idx3-ubyte.gz holds 20 images but", "t10k-labels-idx1-ubyte.gz holds 19"]),
], ids=lambda v: getattr(v, "__name__", ""))
def test_idx_files_that_disagree(fmnist, damage, parts):
    damage(fmnist)
    with refused(fmnist.parent, *parts):   # from the headers, in the constructor
        FashionMNISTDataModule(data_dir=str(fmnist), batch_size=16)
    empty = fmnist.parent / "empty"
    data = FashionMNISTDataModule(data_dir=str(empty), batch_size=16)   # nothing found yet: checked on loading
    fmnist.rename(empty)
    with refused(fmnist.parent, *parts):
        data.setup()


def test_idx_files_of_another_size_are_not_mnist(tmp_path, no_system_copy):  # noqa: F811
    write_mnist_like(tmp_path / "d")
    write_idx(tmp_path / "d" / "t10k-images-idx3-ubyte.gz", np.zeros((20, 32, 32)))
    with refused(tmp_path, "t10k-images-idx3-ubyte.gz holds images of 32x32, but MNIST images are 28x28",
                 "ImageFolderDataModule"):
        MNISTDataModule(data_dir=str(tmp_path / "d"), batch_size=16)


# ------------------------------------------------------------------------------------- image folders

def _readme_only(root: Path):
    (root / "sparrow").mkdir()
    (root / "sparrow" / "README.txt").write_text("photos to come")


def _empty_folder(root: Path):
    (root / "sparrow" / "later").mkdir(parents=True)


def _wrong_extension(root: Path):
    (root / "sparrow").mkdir()
    for i in range(5):
        (root / "sparrow" / f"{i}.heic").write_bytes(b"\0" * 10)


@pytest.mark.parametrize("damage, parts", [
    (_readme_only, ["class subfolder(s) ['sparrow'] have no images", "sparrow holds only README.txt",
                    "would never be seen", "accepted extensions: .jpg"]),
    (_empty_folder, ["['sparrow'] have no images", "sparrow holds only later/"]),
    (_wrong_extension, ["['sparrow'] have no images", "only 0.heic, 1.heic, 2.heic and 2 more"]),
], ids=lambda v: getattr(v, "__name__", ""))
def test_class_folder_without_images(tmp_path, damage, parts):
    root = image_folder(tmp_path / "birds")
    damage(root)
    with refused(tmp_path, *parts):
        ImageFolderDataModule(root=str(root), image_size=16, batch_size=4)
    test_root = image_folder(tmp_path / "test")
    damage(test_root)
    root_with_it = image_folder(tmp_path / "with", classes=("robin", "sparrow", "wren"))
    with refused(tmp_path, *parts):   # test_root is scanned in the constructor too
        ImageFolderDataModule(root=str(root_with_it), image_size=16, batch_size=4, test_root=str(test_root))


@pytest.mark.parametrize("kwargs, parts, error", [
    ({"root": None}, ["root must be a folder path", "None"], ValueError),
    ({"test_root": 3}, ["test_root must be a folder path", "3"], ValueError),
    ({"image_size": 16.0}, ["image_size must be a positive integer", "16.0", "write 16"], ValueError),
    ({"image_size": -1}, ["image_size must be a positive integer, got -1"], ValueError),
    ({"test_root": "elsewhere"}, ["elsewhere does not exist"], FileNotFoundError),
], ids=["root-none", "test-root-int", "float-size", "negative-size", "missing-test-root"])
def test_image_folder_arguments(tmp_path, kwargs, parts, error):
    root = image_folder(tmp_path / "birds")
    with refused(tmp_path, *parts, error=error):
        ImageFolderDataModule(**{"root": str(root), "image_size": 16, "batch_size": 4, **kwargs})


# ------------------------------------------------------------------------------------ CIFAR files

def test_cifar_batches_that_disagree(tmp_path, no_system_copy):  # noqa: F811
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    write_cifar(tmp_path, "cifar-10-batches-py", files, "labels", ("batches.meta", "label_names", ["a"] * 9))
    data = CIFAR10DataModule(data_dir=str(tmp_path), batch_size=4)
    with refused(tmp_path, "batches.meta is not CIFAR10's meta file", "should list 10 class names, it holds 9"):
        data.class_names
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": np.zeros((6, 3072), np.uint8), "labels": [0] * 5}, f)
    with refused(tmp_path, "data_batch_3 holds 6 images but 5 labels in 'labels'"):
        data.setup("fit")


# ------------------------------------------------------------------------------ datasets and samplers built by hand

@pytest.mark.parametrize("build, parts", [
    (lambda: ImageDataset(torch.zeros(4, 8, 8, 3, dtype=torch.uint8), torch.arange(4), (0.5,), (0.2,)),
     ["mean and std need one value per channel (3 here)", "mean=(0.5,)"]),
    (lambda: ImageDataset(torch.zeros(4, 8, 8, 1, dtype=torch.uint8), torch.arange(4), (0.5,), (0.0,)),
     ["std > 0", "std=(0.0,)"]),
    (lambda: ImageDataset(torch.zeros(4, 8, 8, 1), torch.arange(4), (0.5,), (0.2,)),
     ["images[i] must be uint8 (H, W, C) tensors, got torch.float32 (8, 8, 1)"]),
    (lambda: ImageDataset(torch.zeros(4, 8, 8, 1, dtype=torch.uint8), torch.zeros(4, 2).long(), (0.5,), (0.2,)),
     ["labels must be an int64 tensor of shape (N,), got torch.int64 (4, 2)"]),
    (lambda: ImageDataset(torch.zeros(4, 8, 8, 1, dtype=torch.uint8), torch.arange(3), (0.5,), (0.2,)),
     ["4 images but 3 labels"]),
    (lambda: EpochSampler(10.0), ["EpochSampler's num_samples must be a positive integer", "10.0"]),
    (lambda: EpochSampler(10, seed=-3), ["EpochSampler's seed must be >= 0, got -3"]),
], ids=["mean-channels", "zero-std", "float-images", "2d-labels", "count", "sampler-float", "sampler-seed"])
def test_datasets_and_samplers_built_by_hand(tmp_path, build, parts):
    with refused(tmp_path, *parts):
        build()
