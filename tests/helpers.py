"""Helpers shared by the tests that run ``train.py`` (test_cli, test_hostile, test_resume, test_distributed,
test_precision, test_compat): a tiny image folder and config, and ``train.py`` in a subprocess.

Plain functions, not fixtures, because module-scoped fixtures (a set of runs made once per module) call them with
arguments; the function-scoped fixtures built on them are in conftest.py. pytest puts ``tests/`` on ``sys.path``
(conftest.py lives there), so test modules import this one as ``helpers``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def write_image_folder(root: Path, per_class: int = 20, size: int = 16, seed: int = 0) -> Path:
    """``root/{cat,dog}/<i>.png``: seeded random RGB images, a dataset that loads in milliseconds."""
    rng = np.random.default_rng(seed)
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def tiny_config(image_root: Path, max_epochs: int = 1, num_workers: int = 0, **trainer) -> dict:
    """convnet2 of width 8 on 16×16 images, 32 training images in batches of 4 (8 steps an epoch), 8 for validation."""
    return {
        "seed_everything": 0,
        "trainer": {"max_epochs": max_epochs, "deterministic": True, "enable_progress_bar": False,
                    "enable_model_summary": False, "log_every_n_steps": 1, **trainer},
        "model": {"class_path": "cvattn.lightning.ImageClassifier",
                  "init_args": {"model": "convnet2", "model_kwargs": {"width": 8}, "lr": 0.05}},
        "data": {"class_path": "cvattn.data.ImageFolderDataModule",
                 "init_args": {"root": str(image_root), "test_root": str(image_root), "image_size": 16,
                               "batch_size": 4, "num_workers": num_workers, "val_fraction": 0.2,
                               "train_transforms": [{"name": "HorizontalFlip", "p": 0.5}]}},
    }


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def train(cwd: Path, *args: str, pythonpath: tuple[Path, ...] = (), env_extra: dict | None = None) -> subprocess.Popen:
    """Start ``python train.py *args`` in ``cwd``, capturing text output. One thread each: the tests run several at
    once on few cores, and oversubscribed OpenMP threads spin-wait."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (*pythonpath, REPO))), "OMP_NUM_THREADS": "1",
           **(env_extra or {})}
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def error_lines(stderr: str) -> list[str]:
    """The ``error: ...`` lines of a ``train.py`` run's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def randomise(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights and BN statistics (in eval mode), so that a parity test is no coincidence of the default
    initialisation."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(module.parameters()) + [b for b in module.buffers() if b.is_floating_point()]:
            tensor.copy_(torch.randn(tensor.shape, generator=gen) * 0.5)
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
    return module.eval()
