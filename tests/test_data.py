"""Data: IDX/CIFAR/image-folder loading, splits, albumentations pipelines, canvases, seeded determinism."""
import gzip
import os
import pickle
import struct
from pathlib import Path

import albumentations as A
import lightning as L
import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from cvattn.data import (CanvasDataset, CIFAR10DataModule, CIFAR100DataModule, EpochSampler, FashionMNISTDataModule,
                         ImageFolderDataModule, MNISTDataModule, build_transforms)
from cvattn.data.idx import read_idx

AUGMENT = [{"name": "HorizontalFlip", "p": 0.5},
           {"name": "Affine", "translate_percent": [-0.1, 0.1], "rotate": [-10, 10]}]
SPLIT_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def write_idx(path: Path, array: np.ndarray) -> None:
    """IDX: 00 00 08 <ndim>, big-endian uint32 dims, uint8 data; gzipped when the name ends in .gz."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with (gzip.open if path.suffix == ".gz" else open)(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_mnist_like(directory: Path, num_train: int = 100, num_test: int = 20, gz: bool = True, seed: int = 0):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in (("train", num_train), ("t10k", num_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % 10
        for name, array in zip(SPLIT_FILES[split], (images, labels)):
            write_idx(directory / (name + (".gz" if gz else "")), array)
        arrays[split] = images, labels
    return arrays


@pytest.fixture
def no_system_copy(tmp_path, monkeypatch):
    """No system-wide dataset and no network: every download fails at once."""
    def offline(*args, **kwargs):
        raise RuntimeError("no network in this test")
    for cls in (FashionMNISTDataModule, MNISTDataModule):
        monkeypatch.setattr(cls, "system_dir", str(tmp_path / "no-system-copy"))
    for name in ("FashionMNIST", "MNIST", "CIFAR10", "CIFAR100"):
        monkeypatch.setattr(torchvision.datasets, name, offline)


@pytest.fixture
def fmnist_dir(tmp_path, no_system_copy):
    write_mnist_like(tmp_path / "fmnist")
    return str(tmp_path / "fmnist")


def batches(loader) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in batch) for batch in loader]


def assert_same_batches(a, b) -> None:
    assert len(a) == len(b)
    for batch_a, batch_b in zip(a, b):
        for ta, tb in zip(batch_a, batch_b):
            torch.testing.assert_close(ta, tb, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------- transforms

def test_build_transforms_from_yaml_spec():
    assert build_transforms(None) is None and build_transforms([]) is None
    compose = build_transforms(AUGMENT + [{"name": "OneOf", "transforms": [{"name": "GaussianBlur"},
                                                                           {"name": "GaussNoise"}]}])
    assert isinstance(compose, A.Compose)
    flip, affine, one_of = compose.transforms
    assert isinstance(flip, A.HorizontalFlip) and flip.p == 0.5
    assert isinstance(affine, A.Affine)
    assert [type(t) for t in one_of.transforms] == [A.GaussianBlur, A.GaussNoise]
    out = compose(image=np.zeros((28, 28, 1), np.uint8))["image"]
    assert out.shape == (28, 28, 1) and out.dtype == np.uint8


@pytest.mark.parametrize("spec, message", [
    ([{"name": "HorizontalFlp"}], "Did you mean HorizontalFlip"),
    ([{"name": "Affine", "translate_percnt": 0.1}], "did you mean 'translate_percent'"),
    ([{"name": "Affine", "p": 2}], "bad arguments"),
    ([{"name": "Normalize"}], "normalises with the datamodule's mean/std"),
    ([{"p": 0.5}], "'name' key"),
    ({"name": "HorizontalFlip"}, "must be a list"),
    ([{"name": "OneOf", "transforms": [{"name": "Blurr"}]}], r"train_transforms\[0\].transforms\[0\]"),
])
def test_build_transforms_errors(spec, message):
    with pytest.raises(ValueError, match=message):
        build_transforms(spec)


# ------------------------------------------------------------------------------------------------- IDX files

@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_roundtrip(tmp_path, suffix):
    array = np.random.default_rng(0).integers(0, 256, (5, 4, 3), dtype=np.uint8)
    write_idx(tmp_path / f"a{suffix}", array)
    np.testing.assert_array_equal(read_idx(tmp_path / f"a{suffix}"), array)


def test_read_idx_rejects_bad_files(tmp_path):
    write_idx(tmp_path / "whole", np.zeros((5, 4), np.uint8))
    (tmp_path / "cut").write_bytes((tmp_path / "whole").read_bytes()[:-3])
    with pytest.raises(ValueError, match="cut.*truncated or corrupt"):
        read_idx(tmp_path / "cut")
    (tmp_path / "float").write_bytes(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0" * 4)
    with pytest.raises(ValueError, match="float is not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "float")
    (tmp_path / "bad.gz").write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="Cannot read IDX file .*bad.gz"):
        read_idx(tmp_path / "bad.gz")


# ----------------------------------------------------------------------------------------- MNIST-like modules

def test_fashion_mnist_from_data_dir(tmp_path, no_system_copy):
    arrays = write_mnist_like(tmp_path / "d", num_train=100, num_test=20)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "d"), batch_size=32, num_workers=0, val_fraction=0.2)
    assert (dm.num_classes, dm.in_chans, dm.image_size) == (10, 1, (28, 28))
    assert dm.class_names[0] == "T-shirt/top" and len(dm.class_names) == 10
    dm.setup("fit")
    dm.setup("test")
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (80, 20, 20)
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    test_images, test_labels = arrays["t10k"]
    expected = (torch.from_numpy(test_images).float() / 255 - dm.mean[0]) / dm.std[0]
    torch.testing.assert_close(x[:, 0], expected)
    assert y.tolist() == test_labels.tolist()


def test_split_is_seeded_disjoint_and_complete(fmnist_dir):
    def split(seed):
        dm = FashionMNISTDataModule(data_dir=fmnist_dir, batch_size=16, num_workers=0, val_fraction=0.1, seed=seed)
        dm.setup("fit")
        return ({bytes(image.numpy()) for image in dm.train_set.images},
                {bytes(image.numpy()) for image in dm.val_set.images})
    train, val = split(0)
    assert len(val) == 10 and len(train) == 90 and not train & val
    assert split(0) == (train, val)
    assert split(1)[1] != val


def test_torchvision_layout_and_raw_files(tmp_path, no_system_copy):
    write_mnist_like(tmp_path / "data" / "FashionMNIST" / "raw", gz=False)
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "data"), batch_size=16, num_workers=0)
    dm.setup("test")
    assert len(dm.test_set) == 20


def test_mnist_from_system_copy(tmp_path, no_system_copy, monkeypatch):
    arrays = write_mnist_like(tmp_path / "system", num_test=30)
    monkeypatch.setattr(MNISTDataModule, "system_dir", str(tmp_path / "system"))
    dm = MNISTDataModule(data_dir=str(tmp_path / "empty"), batch_size=16, num_workers=0, download=False)
    dm.setup("test")
    assert dm.class_names == tuple("0123456789") and dm.mean == (0.1307,)
    assert dm.test_set.labels.tolist() == arrays["t10k"][1].tolist()


def test_another_datasets_files_are_refused_by_their_brightness(tmp_path, no_system_copy):
    """MNIST and Fashion-MNIST share file names; a folder of one read as the other is an error, not a silent run."""
    for name, brightness in (("fashion_like", 73), ("mnist_like", 33)):    # mean 0.286 and 0.129 of 255
        images = np.full((1000, 28, 28), brightness, np.uint8)
        (tmp_path / name).mkdir()
        for file, array in zip(SPLIT_FILES["t10k"], (images, np.arange(1000) % 10)):
            write_idx(tmp_path / name / f"{file}.gz", array)
    with pytest.raises(ValueError, match=r"fashion_like/t10k-images-idx3-ubyte.gz does not look like MNIST: its "
                                         r"images' mean brightness is 0.286, MNIST's is 0.131; FashionMNIST's is "
                                         r"0.286, so these are most likely its files"):
        MNISTDataModule(data_dir=str(tmp_path / "fashion_like"), num_workers=0).setup("test")
    with pytest.raises(ValueError, match="not look like FashionMNIST.*MNIST's is 0.131, so these are most likely its"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "mnist_like"), num_workers=0).setup("test")
    for module, folder in ((MNISTDataModule, "mnist_like"), (FashionMNISTDataModule, "fashion_like")):
        data = module(data_dir=str(tmp_path / folder), num_workers=0)
        data.setup("test")
        assert len(data.test_set) == 1000


def test_missing_dataset_names_all_three_ways(tmp_path, no_system_copy):
    dm = FashionMNISTDataModule(data_dir=str(tmp_path / "data"), num_workers=0)
    with pytest.raises(FileNotFoundError) as err:
        dm.setup("fit")
    message = str(err.value)
    for part in (str(tmp_path / "data"), str(tmp_path / "data" / "FashionMNIST" / "raw"),
                 str(tmp_path / "no-system-copy"), "apt-get install dataset-fashion-mnist",
                 "download failed: RuntimeError: no network in this test"):
        assert part in message
    with pytest.raises(FileNotFoundError, match="download=False"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "data"), download=False).prepare_data()


def test_split_mixing_is_refused(tmp_path, no_system_copy):
    """Images in one folder and labels in another are not a split: both must come from the same copy."""
    write_mnist_like(tmp_path / "data")
    (tmp_path / "data" / "train-labels-idx1-ubyte.gz").rename(tmp_path / "train-labels-idx1-ubyte.gz")
    with pytest.raises(FileNotFoundError, match="train-labels-idx1-ubyte"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "data"), num_workers=0).setup("fit")


def test_empty_and_mislabelled_datasets(tmp_path, no_system_copy):
    write_mnist_like(tmp_path / "empty", num_train=0)
    with pytest.raises(ValueError, match="training split is empty"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "empty")).setup("fit")
    write_mnist_like(tmp_path / "bad")
    write_idx(tmp_path / "bad" / "t10k-labels-idx1-ubyte.gz", np.full(20, 12))
    with pytest.raises(ValueError, match=r"labels span \[12, 12\], expected \[0, 9\]"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "bad"), batch_size=16).setup("test")
    write_mnist_like(tmp_path / "tiny", num_train=1)
    with pytest.raises(ValueError, match="val_fraction=0.1 of 1 training images"):
        FashionMNISTDataModule(data_dir=str(tmp_path / "tiny")).setup("fit")


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"num_workers": -1}, "num_workers must be >= 0"),
    ({"val_fraction": 0.0}, r"val_fraction must be in \(0, 1\)"),
    ({"val_fraction": 1.0}, r"val_fraction must be in \(0, 1\)"),
    ({"seed": -1}, "seed must be >= 0"),
    ({"canvas_size": 20}, "canvas_size=20 is smaller than the 28x28 objects"),
    ({"canvas_size": 60, "num_distractors": -1}, "num_distractors must be >= 0"),
    ({"num_distractors": 4}, "needs a canvas"),
    ({"canvas_size": 60, "num_distractors": 4, "distractor_size": 29}, r"distractor_size=29 must be in \[1, 28\]"),
    ({"train_transforms": [{"name": "Flip"}]}, "unknown albumentations transform 'Flip'"),
])
def test_datamodule_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FashionMNISTDataModule(**kwargs)


def test_real_fashion_mnist(tmp_path):
    """The system copy (Debian's dataset-fashion-mnist, present in CI): sizes, labels and our statistics."""
    dm = FashionMNISTDataModule(data_dir=str(tmp_path), download=False, num_workers=0)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (54000, 6000, 10000)
    train = torch.cat([dm.train_set.images, dm.val_set.images]).float() / 255
    assert train.shape == (60000, 28, 28, 1)
    torch.testing.assert_close(train.mean(), torch.tensor(dm.mean[0]), atol=1e-3, rtol=0)
    torch.testing.assert_close(train.std(), torch.tensor(dm.std[0]), atol=1e-3, rtol=0)
    labels = torch.cat([dm.train_set.labels, dm.val_set.labels])
    assert torch.bincount(labels).tolist() == [6000] * 10
    assert torch.bincount(dm.test_set.labels).tolist() == [1000] * 10


# ---------------------------------------------------------------------------------------------------- CIFAR

def write_cifar(root: Path, folder: str, files: list[str], label_key: str, meta: tuple[str, str, list[str]],
                per_file: int = 6) -> dict[str, np.ndarray]:
    """The dataset's python version: pickled dicts with 'data' (n, 3072) uint8 in R, G, B planes and labels."""
    (root / folder).mkdir(parents=True)
    rng = np.random.default_rng(0)
    written = {}
    for name in files:
        data = rng.integers(0, 256, (per_file, 3072), dtype=np.uint8)
        with open(root / folder / name, "wb") as f:
            pickle.dump({"data": data, label_key: list(range(per_file)), "batch_label": name}, f, protocol=3)
        written[name] = data
    meta_file, names_key, names = meta
    with open(root / folder / meta_file, "wb") as f:
        pickle.dump({names_key: names}, f, protocol=3)
    return written


def test_cifar10_reads_the_python_batches(tmp_path, no_system_copy):
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    written = write_cifar(tmp_path, "cifar-10-batches-py", files, "labels", ("batches.meta", "label_names", names))
    dm = CIFAR10DataModule(data_dir=str(tmp_path), batch_size=8, num_workers=0, val_fraction=0.2)
    assert (dm.num_classes, dm.in_chans, dm.image_size, dm.class_names) == (10, 3, (32, 32), tuple(names))
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 6, 6)
    planes = written["test_batch"].reshape(6, 3, 32, 32)
    # pixel (row 5, column 7) of image 2: one byte from each colour plane
    assert dm.test_set.images[2, 5, 7].tolist() == planes[2, :, 5, 7].tolist()
    x, y = next(iter(dm.test_dataloader()))
    assert x.shape == (6, 3, 32, 32) and y.tolist() == list(range(6))


def test_cifar100_fine_labels(tmp_path, no_system_copy):
    names = [f"class{i}" for i in range(100)]
    write_cifar(tmp_path, "cifar-100-python", ["train", "test"], "fine_labels", ("meta", "fine_label_names", names),
                per_file=10)
    dm = CIFAR100DataModule(data_dir=str(tmp_path), num_workers=0)
    dm.setup("test")
    assert dm.num_classes == 100 and dm.class_names[42] == "class42"
    assert dm.test_set.labels.tolist() == list(range(10))


def test_cifar_refuses_foreign_pickles(tmp_path, no_system_copy):
    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(tmp_path / "pwned"),)
    files = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    write_cifar(tmp_path, "cifar-10-batches-py", files, "labels", ("batches.meta", "label_names", ["a"] * 10))
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({"data": Payload()}, f)
    with pytest.raises(ValueError, match="test_batch is not a CIFAR batch file: refusing to load posix.mkdir"):
        CIFAR10DataModule(data_dir=str(tmp_path), num_workers=0).setup("test")
    assert not (tmp_path / "pwned").exists()


def test_cifar_missing(tmp_path, no_system_copy):
    with pytest.raises(FileNotFoundError, match="cifar-10-batches-py lacks .*download failed: RuntimeError"):
        CIFAR10DataModule(data_dir=str(tmp_path)).prepare_data()


# --------------------------------------------------------------------------------------------- image folders

@pytest.fixture
def bird_folder(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "birds"
    for label, name in enumerate(["wren", "robin"]):
        (root / name / "nested").mkdir(parents=True)
        for i in range(5):
            pixels = rng.integers(0, 256, (20 + i, 30, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"rgb{i}.png")
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8), mode="L").save(root / name / "gray.png")
        Image.fromarray(rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)).save(root / name / "nested" / "a.jpg")
        (root / name / "notes.txt").write_text("not an image")
    (root / ".ipynb_checkpoints").mkdir()
    return root


def test_image_folder(bird_folder):
    dm = ImageFolderDataModule(root=str(bird_folder), image_size=16, test_root=str(bird_folder), batch_size=4,
                               num_workers=0, val_fraction=0.25)
    assert dm.class_names == ("robin", "wren") and dm.num_classes == 2
    assert dm.image_size == (16, 16) and dm.mean == (0.485, 0.456, 0.406)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (10, 4, 14)
    labels = []
    for x, y in dm.test_dataloader():
        assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32
        labels += y.tolist()
    assert labels == [0] * 7 + [1] * 7
    gray = dm.test_set.images[dm.test_set.images.paths.index(bird_folder / "robin" / "gray.png")]
    assert gray.shape == (16, 16, 3) and torch.equal(gray[..., 0], gray[..., 2])


@pytest.mark.parametrize("name", ["garbage.jpg", "cut.png"])
def test_image_folder_broken_file_is_named(bird_folder, name):
    broken = bird_folder / "robin" / name
    if name == "garbage.jpg":
        broken.write_bytes(b"\xff\xd8 definitely not a jpeg")
    else:
        png = (bird_folder / "wren" / "rgb4.png").read_bytes()
        broken.write_bytes(png[: len(png) // 2])
    dm = ImageFolderDataModule(root=str(bird_folder), image_size=8, batch_size=4, num_workers=0)
    dm.setup("fit")
    with pytest.raises(ValueError, match=f"Cannot decode image {broken}: .*Remove or replace this file"):
        for dataset in (dm.train_set, dm.val_set):
            for index in range(len(dataset)):
                dataset[index]


def test_image_folder_errors(tmp_path, bird_folder):
    (tmp_path / "none").mkdir()
    with pytest.raises(FileNotFoundError, match="no class subfolders"):
        ImageFolderDataModule(root=str(tmp_path / "none"), image_size=8)
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"class subfolders \['cls'\] but no images"):
        ImageFolderDataModule(root=str(tmp_path / "empty"), image_size=8)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ImageFolderDataModule(root=str(tmp_path / "missing"), image_size=8)
    with pytest.raises(ValueError, match="image_size must be a positive integer"):
        ImageFolderDataModule(root=str(bird_folder), image_size=0)
    with pytest.raises(ValueError, match="no test split: set test_root"):
        ImageFolderDataModule(root=str(bird_folder), image_size=8, batch_size=4).setup("test")
    (tmp_path / "other" / "crow").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(tmp_path / "other" / "crow" / "a.png")
    with pytest.raises(ValueError, match=r"has classes \['crow'\].*same class subfolders"):
        ImageFolderDataModule(root=str(bird_folder), image_size=8, batch_size=4,
                              test_root=str(tmp_path / "other")).setup("test")


# ------------------------------------------------------------------------------------------------- canvases

def constant_images(values: list[int], size: int = 28, channels: int = 1) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.uint8).view(-1, 1, 1, 1).expand(-1, size, size, channels).contiguous()


def canvas_dataset(images: torch.Tensor, **kwargs) -> CanvasDataset:
    channels = images.shape[-1]
    return CanvasDataset(images, torch.arange(len(images)), (0.0,) * channels, (1.0,) * channels, **kwargs)


def test_translated_canvas_box_holds_the_object():
    images = torch.randint(1, 256, (3, 28, 28, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dataset = canvas_dataset(images, canvas_size=60)
    for index in range(3):
        x, y, box = dataset[index]
        x0, y0, x1, y1 = box.long().tolist()
        assert x.shape == (1, 60, 60) and y == index and (x1 - x0, y1 - y0) == (28, 28)
        torch.testing.assert_close(x[0, y0:y1, x0:x1], images[index, :, :, 0].float() / 255)
        x[0, y0:y1, x0:x1] = 0
        assert x.abs().sum() == 0  # a blank canvas around the object


def test_cluttered_canvas_adds_crops_of_other_images_then_clips():
    dataset = canvas_dataset(constant_images([10, 20]), canvas_size=60, num_distractors=4, distractor_size=8)
    canvas = (dataset[0][0] * 255).round()
    # No sum reaches 255 here: the total is the object plus 4 crops of image 1 (never image 0 itself).
    assert canvas.sum() == 28 * 28 * 10 + 4 * 8 * 8 * 20
    x0, y0, x1, y1 = dataset[0][2].long().tolist()
    canvas[0, y0:y1, x0:x1] -= 10
    assert set(canvas.unique().tolist()) <= {0.0, 20.0, 40.0, 60.0, 80.0}
    clipped = canvas_dataset(constant_images([200, 100]), canvas_size=30, num_distractors=8, distractor_size=8)
    values = set((clipped[0][0] * 255).round().unique().tolist())
    assert 255.0 in values and values <= {0.0, 100.0, 200.0, 255.0}  # 200 + 100 and more clip to 255


def test_canvas_three_channels_and_eval_is_fixed():
    images = torch.randint(0, 256, (4, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    evaluation = canvas_dataset(images, canvas_size=50, num_distractors=2, seed=3)
    x, _, box = evaluation[1]
    assert x.shape == (3, 50, 50)
    again = evaluation[(7, 1)]  # the epoch of a key is ignored outside training
    assert torch.equal(x, again[0]) and torch.equal(box, again[2])
    assert len({tuple(evaluation[i][2].tolist()) for i in range(4)}) > 1  # fixed, but not one position for all
    train = canvas_dataset(images, canvas_size=50, num_distractors=2, seed=3, train=True)
    assert torch.equal(train[(0, 1)][0], train[(0, 1)][0])
    assert not torch.equal(train[(0, 1)][0], train[(1, 1)][0])


@pytest.mark.parametrize("kwargs, message", [
    ({"canvas_size": 27}, "canvas_size=27 is smaller"),
    ({"canvas_size": 60, "num_distractors": -2}, "num_distractors must be >= 0"),
    ({"canvas_size": 60, "num_distractors": 1, "distractor_size": 0}, r"distractor_size=0 must be in \[1, 28\]"),
    ({"canvas_size": 60, "num_distractors": 1, "distractor_size": 30}, r"distractor_size=30 must be in \[1, 28\]"),
])
def test_canvas_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        canvas_dataset(constant_images([1, 2]), **kwargs)
    with pytest.raises(ValueError, match="at least 2 images"):
        canvas_dataset(constant_images([1]), canvas_size=60, num_distractors=1)


def test_canvas_datamodule_batches_carry_boxes(fmnist_dir):
    dm = FashionMNISTDataModule(data_dir=fmnist_dir, batch_size=8, num_workers=0, canvas_size=60, num_distractors=4)
    assert dm.image_size == (60, 60) and dm.mean == (0.0,) and dm.std == (1.0,)
    dm.setup("fit")
    x, y, boxes = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 1, 60, 60) and y.shape == (8,) and boxes.shape == (8, 4) and boxes.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert torch.all(boxes[:, 2:] - boxes[:, :2] == 28) and boxes.min() >= 0 and boxes.max() <= 60


# ---------------------------------------------------------------------------------------------- determinism

def test_epoch_sampler():
    sampler = EpochSampler(50, seed=1)
    first = list(sampler)
    assert first == list(sampler) and sorted(i for _, i in first) == list(range(50)) and {e for e, _ in first} == {0}
    sampler.set_epoch(1)
    assert [i for _, i in sampler] != [i for _, i in first]
    assert [i for _, i in EpochSampler(5, shuffle=False)] == list(range(5))


@pytest.mark.parametrize("canvas", [{}, {"canvas_size": 40, "num_distractors": 2}])
def test_train_batches_depend_only_on_seed_epoch_index(fmnist_dir, canvas):
    def train_batches(num_workers, epoch, draw_first=False):
        dm = FashionMNISTDataModule(data_dir=fmnist_dir, batch_size=16, num_workers=num_workers,
                                    train_transforms=AUGMENT, **canvas)
        dm.setup("fit")
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        if draw_first:  # randomness consumed elsewhere must not matter
            np.random.rand(5), torch.rand(5)
        return batches(loader)
    epoch0 = train_batches(0, epoch=0)
    assert_same_batches(epoch0, train_batches(0, epoch=0, draw_first=True))
    torch_state = torch.get_rng_state()
    train_batches(0, epoch=0)
    assert torch.equal(torch_state, torch.get_rng_state())  # loading draws nothing from torch's global RNG
    assert_same_batches(epoch0, train_batches(2, epoch=0))
    epoch1 = train_batches(0, epoch=1)
    assert not torch.equal(epoch0[0][0], epoch1[0][0])
    # the same images in another order and another augmentation: the labels of an epoch are a permutation
    assert sorted(torch.cat([b[1] for b in epoch0]).tolist()) == sorted(torch.cat([b[1] for b in epoch1]).tolist())


def test_augmentation_of_training_images_only_and_per_epoch(fmnist_dir):
    dm = FashionMNISTDataModule(data_dir=fmnist_dir, batch_size=16, num_workers=0,
                                train_transforms=[{"name": "VerticalFlip", "p": 1}])
    dm.setup("fit")
    image = dm.train_set.images[3]
    flipped = (image.flip(0).permute(2, 0, 1).float() / 255 - dm.mean[0]) / dm.std[0]
    torch.testing.assert_close(dm.train_set[3][0], flipped)
    plain = (dm.val_set.images[3].permute(2, 0, 1).float() / 255 - dm.mean[0]) / dm.std[0]
    torch.testing.assert_close(dm.val_set[3][0], plain)
    randomly = FashionMNISTDataModule(data_dir=fmnist_dir, batch_size=16, num_workers=0,
                                      train_transforms=[{"name": "Affine", "rotate": (-20, 20), "p": 1}])
    randomly.setup("fit")
    assert torch.equal(randomly.train_set[(4, 3)][0], randomly.train_set[(4, 3)][0])
    assert not torch.equal(randomly.train_set[(4, 3)][0], randomly.train_set[(5, 3)][0])  # new every epoch


class _Recorder(L.LightningModule):
    """Records the first training batch of each epoch."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(28 * 28, 10)
        self.first_batches: dict[int, torch.Tensor] = {}

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.first_batches.setdefault(self.current_epoch, x.clone())
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_sets_the_epoch(fmnist_dir, tmp_path):
    def fit():
        dm = FashionMNISTDataModule(data_dir=fmnist_dir, batch_size=16, num_workers=0, train_transforms=AUGMENT)
        module = _Recorder()
        trainer = L.Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=0, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path, accelerator="cpu")
        trainer.fit(module, datamodule=dm)
        return module.first_batches
    run = fit()
    assert not torch.equal(run[0], run[1])
    again = fit()
    assert torch.equal(run[0], again[0]) and torch.equal(run[1], again[1])
