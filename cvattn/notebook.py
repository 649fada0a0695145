"""What the notebooks in ``notebooks/`` share: their settings, the cluttered-canvas data, train-or-load, and drawing.

Settings come from the environment, read once at import:

- ``CVATTN_NOTEBOOK_FAST=1``: short training runs (seconds), as the test suite executes the notebooks; unset, the
  notebooks train for minutes and their maps mean something.
- ``CVATTN_CHECKPOINTS``: a folder of ``<name>.ckpt`` (Lightning checkpoints or bare ``state_dict``s) that
  :func:`fit` loads instead of training.
- ``CVATTN_IMAGE_FOLDER`` (one subfolder per class) or ``CVATTN_DATA_DIR`` (CIFAR-10 when it holds
  ``cifar-10-batches-py``, else Fashion-MNIST, which is also found in its system copy): the images of
  :func:`canvas_data`. ``CVATTN_DATA_DIR`` defaults to ``../data``, the repository's ``data/`` seen from
  ``notebooks/``.
"""
from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Sequence

import lightning as L
import torch
from matplotlib.axes import Axes
from matplotlib.patches import Rectangle

from cvattn.checkpoint import load_weights
from cvattn.checks import check_positive

FAST = os.environ.get("CVATTN_NOTEBOOK_FAST") == "1"
CHECKPOINTS = os.environ.get("CVATTN_CHECKPOINTS")
DATA_DIR = os.environ.get("CVATTN_DATA_DIR", "../data")

__all__ = ["CHECKPOINTS", "DATA_DIR", "FAST", "canvas_data", "draw_box", "fast_or_full", "fit", "quiet",
           "scale_to_unit"]


def quiet(seed: int = 0) -> None:
    """Seed everything and silence what Lightning and tqdm print in a notebook besides the results."""
    warnings.filterwarnings("ignore", message="IProgress not found")   # tqdm's notice when ipywidgets is absent
    warnings.filterwarnings("ignore", module="lightning")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    L.seed_everything(seed, verbose=False)


def fast_or_full(fast: int, full: int) -> int:
    """``fast`` in fast mode (``CVATTN_NOTEBOOK_FAST=1``), else ``full``: a step or batch count."""
    return fast if FAST else full


def canvas_data(canvas_size: int = 60, num_distractors: int = 4, batch_size: int = 32) -> L.LightningDataModule:
    """The notebooks' datamodule, set up for fitting: your own images (``CVATTN_IMAGE_FOLDER``), else CIFAR-10 when
    it is in ``DATA_DIR``, else Fashion-MNIST; each object on a black ``canvas_size`` canvas among
    ``num_distractors`` distractor patches, so every batch is ``(images, labels, boxes)`` with the object's box."""
    from cvattn.data import CIFAR10DataModule, FashionMNISTDataModule, ImageFolderDataModule

    canvas = dict(canvas_size=canvas_size, num_distractors=num_distractors, batch_size=batch_size, num_workers=0)
    if os.environ.get("CVATTN_IMAGE_FOLDER"):
        data = ImageFolderDataModule(root=os.environ["CVATTN_IMAGE_FOLDER"], image_size=32, **canvas)
    elif Path(DATA_DIR, "cifar-10-batches-py").is_dir():
        data = CIFAR10DataModule(data_dir=DATA_DIR, download=False, **canvas)
    else:
        data = FashionMNISTDataModule(data_dir=DATA_DIR, download=False, **canvas)
    data.setup("fit")
    print(f"{type(data).__name__}: {data.image_size} canvases, {data.in_chans} channel(s), "
          f"classes {data.class_names}")
    return data


def fit(module: L.LightningModule, data: L.LightningDataModule, name: str, steps: int) -> L.LightningModule:
    """``module`` in eval mode, with the weights of ``CVATTN_CHECKPOINTS/<name>.ckpt`` when that file exists, else
    trained for ``steps`` optimizer steps on ``data`` (no validation, logging or checkpoints)."""
    check_positive("steps", steps)
    checkpoint = Path(CHECKPOINTS or "", f"{name}.ckpt")
    if CHECKPOINTS and checkpoint.is_file():
        load_weights(module, checkpoint)
    else:
        L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, limit_val_batches=0).fit(module, datamodule=data)
    return module.eval()


def draw_box(ax: Axes, box: Sequence[float] | torch.Tensor, color: str = "lime", lw: float = 1.0) -> Rectangle:
    """Outline ``box`` ``(x0, y0, x1, y1)`` (pixels, exclusive ends, as the datamodules give them) on an ``imshow``
    of the image: pixel centres sit on integers, so the outline runs along the pixels' outer edges."""
    x0, y0, x1, y1 = (float(v) for v in (box.tolist() if isinstance(box, torch.Tensor) else box))
    return ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color=color, lw=lw))


def scale_to_unit(maps: torch.Tensor) -> torch.Tensor:
    """(N, H, W) maps each scaled to [0, 1] by its own minimum and maximum; a constant map becomes zeros."""
    if maps.ndim != 3:
        raise ValueError(f"scale_to_unit takes (N, H, W) maps, got shape {tuple(maps.shape)}; index or reshape the "
                         f"maps to three dimensions first.")
    low = maps.amin((1, 2), keepdim=True)
    span = maps.amax((1, 2), keepdim=True) - low
    return (maps - low) / torch.where(span > 0, span, torch.ones_like(span))
