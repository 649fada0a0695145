"""Hostile input to `python train.py`: each case ends with ONE `error:` paragraph on stderr, no traceback, exit code
≠ 0, and no run directory left behind; a grayscale image in an RGB folder just trains.

All cases run as concurrent subprocesses from one fixture (each pays the ~6 s import of torch and Lightning); the
variants of these cases (zero lr, negative batch size, a corrupt rather than truncated image, a missing image folder)
run in-process in test_cli."""
from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from PIL import Image
from helpers import error_lines, tiny_config, train, write_config, write_image_folder

pytestmark = pytest.mark.slow


class Payload:
    """Unpickling this would run ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _config(case: Path, images: Path, **edits) -> list[str]:
    config = tiny_config(images)
    for dotted, value in edits.items():
        *parents, key = dotted.split(".")
        section = config
        for name in parents:
            section = section[name]
        section[key] = value
    return ["--config", str(write_config(case / "tiny.yaml", config))]


def _image_folder(case: Path) -> Path:
    return write_image_folder(case / "images", per_class=6)


def malformed_yaml(case: Path) -> list[str]:
    (case / "tiny.yaml").write_text("trainer: {max_epochs: 1\nmodel: [\n")
    return ["--config", "tiny.yaml"]


def key_typo(case: Path) -> list[str]:
    return _config(case, _image_folder(case), **{"model.init_args.lrr": 0.1})


def negative_lr(case: Path) -> list[str]:
    return _config(case, _image_folder(case), **{"model.init_args.lr": -0.1})


def zero_batch_size(case: Path) -> list[str]:
    return _config(case, _image_folder(case), **{"data.init_args.batch_size": 0})


def truncated_image(case: Path) -> list[str]:
    images = _image_folder(case)
    data = (images / "cat" / "0.png").read_bytes()
    (images / "cat" / "0.png").write_bytes(data[: len(data) // 2])
    return _config(case, images, **{"data.init_args.num_workers": 1})   # the error crosses a worker process


def grayscale_image(case: Path) -> list[str]:
    images = _image_folder(case)
    Image.new("L", (16, 16), 128).save(images / "cat" / "0.png")
    return _config(case, images)


def foreign_checkpoint(case: Path) -> list[str]:
    from cvattn.lightning import ImageClassifier
    other = ImageClassifier("resnet20", num_classes=2, in_chans=3)
    torch.save({"state_dict": other.state_dict(), "hyper_parameters": dict(other.hparams), "global_step": 0},
               case / "other.ckpt")
    return [*_config(case, _image_folder(case)), "--ckpt_path", "other.ckpt"]


def not_a_checkpoint(case: Path) -> list[str]:
    (case / "notes.ckpt").write_text("these are my notes, not weights")
    return [*_config(case, _image_folder(case)), "--ckpt_path", "notes.ckpt"]


def pickle_payload(case: Path) -> list[str]:
    torch.save({"state_dict": {}, "payload": Payload(case / "pwned")}, case / "evil.ckpt")
    return [*_config(case, _image_folder(case)), "--ckpt_path", "evil.ckpt"]


def missing_checkpoint(case: Path) -> list[str]:
    return [*_config(case, _image_folder(case)), "--ckpt_path", "nowhere/last.ckpt"]


def unwritable_runs(case: Path) -> list[str]:
    (case / "runs").write_text("a file where the runs directory should be")   # root ignores permission bits
    return _config(case, _image_folder(case))


def empty_dataset(case: Path) -> list[str]:
    images = _image_folder(case)
    for image in images.rglob("*.png"):
        image.unlink()
    return _config(case, images)


# case → (the error paragraph must contain this; None: the run must succeed)
CASES = {
    malformed_yaml: "The config is not valid YAML",
    key_typo: "Unknown key 'lrr' in model.init_args (cvattn.lightning.ImageClassifier). Did you mean 'lr'?",
    negative_lr: "lr must be > 0, got -0.1",
    zero_batch_size: "batch_size must be a positive integer, got 0",
    truncated_image: "Cannot decode image",
    grayscale_image: None,
    foreign_checkpoint: "does not fit the configured model (it was trained as 'resnet20')",
    not_a_checkpoint: "is not a readable PyTorch checkpoint",
    pickle_payload: "weights_only=True refuses",
    missing_checkpoint: "nowhere/last.ckpt' does not exist",
    unwritable_runs: "Cannot create the run directory runs/tiny/version_0: runs is not a directory",
    empty_dataset: "but no images in them",
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    def run(case) -> tuple[Path, subprocess.CompletedProcess]:
        directory = tmp_path_factory.mktemp(case.__name__)
        process = train(directory, *case(directory))
        stdout, stderr = process.communicate(timeout=300)
        return directory, subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return dict(zip((case.__name__ for case in CASES), pool.map(run, CASES)))


@pytest.mark.parametrize("case", [case for case, expected in CASES.items() if expected], ids=lambda c: c.__name__)
def test_one_clear_error_and_nothing_left_behind(results, case):
    directory, result = results[case.__name__]
    lines = error_lines(result.stderr)
    assert result.returncode == 1, result.stderr[-3000:]
    assert len(lines) == 1 and CASES[case] in lines[0], result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    runs = directory / "runs"
    assert not runs.exists() or runs.is_file(), sorted(map(str, runs.rglob("*")))


def test_pickle_payload_never_runs(results):
    directory, _ = results["pickle_payload"]
    assert (directory / "evil.ckpt").exists() and not (directory / "pwned").exists()


def test_grayscale_image_in_an_rgb_folder_trains(results):
    directory, result = results["grayscale_image"]
    assert result.returncode == 0, result.stderr[-3000:]
    assert (directory / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt").is_file()
