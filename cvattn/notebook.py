"""What the notebooks in ``notebooks/`` share: their settings, the cluttered-canvas data, train-or-load, and drawing.

Settings come from the environment, read once at import:

- ``CVATTN_NOTEBOOK_FAST=1``: fast mode, as the test suite executes the notebooks: every model trains for seconds
  in the notebook and the evaluations use a few batches. Unset (full mode), :func:`fit` and :func:`canvas_data`
  use the models ``bench/saliency_results.py`` trained (its best checkpoints, ``objects=1``) where they exist, and
  train the others for the same seconds as fast mode, printing the command that trains them properly.
- ``CVATTN_CHECKPOINTS``: a folder of ``<name>.ckpt`` (Lightning checkpoints or bare ``state_dict``s of the
  notebook's own architecture) that :func:`fit` loads instead of training, in either mode.
- ``CVATTN_IMAGE_FOLDER`` (one subfolder per class) or ``CVATTN_DATA_DIR`` (CIFAR-10 when it holds
  ``cifar-10-batches-py``, else Fashion-MNIST, which is also found in its system copy): the images of
  :func:`canvas_data`. ``CVATTN_DATA_DIR`` defaults to ``../data``, the repository's ``data/`` seen from
  ``notebooks/``.

``notebooks/execute.py`` runs the notebooks in either mode and stores them with their outputs.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

# tqdm warns "IProgress not found" when it is imported in a Jupyter kernel without ipywidgets, and Lightning imports
# it: the filter has to be in place before that import.
warnings.filterwarnings("ignore", message="IProgress not found")

import lightning as L  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from cvattn.checkpoint import load_weights  # noqa: E402
from cvattn.checks import check_positive  # noqa: E402

FAST = os.environ.get("CVATTN_NOTEBOOK_FAST") == "1"
CHECKPOINTS = os.environ.get("CVATTN_CHECKPOINTS")
DATA_DIR = os.environ.get("CVATTN_DATA_DIR", "../data")
BENCHMARK = Path(__file__).resolve().parents[1] / "bench" / "saliency_results.py"   # in a source checkout only

__all__ = ["CHECKPOINTS", "DATA_DIR", "FAST", "benchmark_checkpoint", "canvas_data", "draw_box", "fast_or_full", "fit",
           "quiet", "scale_to_unit"]


def quiet(seed: int = 0) -> None:
    """Seed everything and silence what Lightning and tqdm print in a notebook besides the results."""
    warnings.filterwarnings("ignore", module="lightning")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    L.seed_everything(seed, verbose=False)


def fast_or_full(fast: int, full: int) -> int:
    """``fast`` in fast mode (``CVATTN_NOTEBOOK_FAST=1``), else ``full``: a step or batch count."""
    return fast if FAST else full


def _benchmark():
    """``bench/saliency_results.py`` as a module, or None outside a source checkout (or before it trains models)."""
    if not BENCHMARK.is_file():
        return None
    if str(BENCHMARK.parent) not in sys.path:       # the script imports its neighbour bench/_common.py
        sys.path.insert(0, str(BENCHMARK.parent))
    bench = importlib.import_module(BENCHMARK.stem)
    return bench if hasattr(bench, "best_checkpoint") else None


def benchmark_checkpoint(model: str, objects: int = 1) -> tuple[Path | None, str]:
    """The best checkpoint ``bench/saliency_results.py`` trained for ``model`` (one of its ``MODELS``) on canvases of
    ``objects`` objects, or None when it has not trained it yet; and the command that trains it (``''`` outside a
    source checkout, where there is no benchmark)."""
    bench = _benchmark()
    if bench is None:
        return None, ""
    words = [word for word in bench.train_command(model, objects) if word != sys.executable]
    return bench.best_checkpoint(model, objects), " ".join(["python", *words])


def _run_config(checkpoint: Path) -> Path:
    """The ``config.yaml`` of the ``train.py`` run that wrote ``checkpoint`` (``runs/<name>/version_N/``)."""
    for folder in checkpoint.parents:
        if (folder / "config.yaml").is_file():
            return folder / "config.yaml"
    raise FileNotFoundError(f"No config.yaml in the run folders above {checkpoint}: train.py writes one per run.")


def _shown(path: Path) -> str:
    """``path`` relative to the repository, so that a stored notebook names no folder of the machine it ran on."""
    try:
        return str(path.resolve().relative_to(BENCHMARK.parents[1]))
    except ValueError:
        return path.name


def canvas_data(canvas_size: int = 60, num_distractors: int = 4, batch_size: int = 32) -> L.LightningDataModule:
    """The notebooks' datamodule, set up for fitting: your own images (``CVATTN_IMAGE_FOLDER``), else CIFAR-10 when
    it is in ``DATA_DIR``, else Fashion-MNIST; each object on a black ``canvas_size`` canvas among
    ``num_distractors`` distractor patches, so every batch is ``(images, labels, boxes)`` with the object's box.

    In full mode, when the benchmark has trained a model (and neither your images nor CIFAR-10 are asked for): the
    data that model was trained on, its canvas and clutter instead of ``canvas_size`` and ``num_distractors``, with
    one object per canvas (a model trained on several is drawn on one).
    """
    from cvattn.config import build_from_config
    from cvattn.data import CIFAR10DataModule, FashionMNISTDataModule, ImageFolderDataModule

    canvas = dict(canvas_size=canvas_size, num_distractors=num_distractors, batch_size=batch_size, num_workers=0)
    trained = None
    if not FAST and not os.environ.get("CVATTN_IMAGE_FOLDER") and not Path(DATA_DIR, "cifar-10-batches-py").is_dir():
        bench = _benchmark()
        models = bench.MODELS if bench else []
        trained = next(filter(None, (bench.best_checkpoint(model, 1) for model in models)), None)
    if trained is not None:
        data = build_from_config(_run_config(trained))[1]
        data.batch_size, data.num_workers = batch_size, 0
        data.num_objects = 1          # the notebooks' batches are (images, labels, boxes) of one object each
        # train.py ran in the repository's root, so its data_dir is relative to it, not to notebooks/
        data.data_dir = str(BENCHMARK.parents[1] / data.data_dir)
        source = f"the benchmark's data ({_shown(_run_config(trained))})"
    elif os.environ.get("CVATTN_IMAGE_FOLDER"):
        data = ImageFolderDataModule(root=os.environ["CVATTN_IMAGE_FOLDER"], image_size=32, **canvas)
    elif Path(DATA_DIR, "cifar-10-batches-py").is_dir():
        data = CIFAR10DataModule(data_dir=DATA_DIR, download=False, **canvas)
    else:
        data = FashionMNISTDataModule(data_dir=DATA_DIR, download=False, **canvas)
    data.setup("fit")
    print(f"{type(data).__name__}: {data.image_size} canvases, {data.in_chans} channel(s), "
          f"classes {data.class_names}" + (f"; {source}" if trained is not None else ""))
    return data


def fit(module: L.LightningModule, data: L.LightningDataModule, name: str, steps: int,
        benchmark: str | None = None) -> L.LightningModule:
    """A trained ``module`` (or the benchmark's) in eval mode, and one line that says where its weights come from.

    In order: the weights of ``CVATTN_CHECKPOINTS/<name>.ckpt`` when that file exists; in full mode, the benchmark's
    best checkpoint of the model ``benchmark`` (a ``bench/saliency_results.py`` model name) when it was trained on
    canvases like ``data``'s, as the module the benchmark built (its architecture, not ``module``'s); else
    ``module`` trained here for ``steps`` optimizer steps on ``data`` (no validation, logging or checkpoints).
    """
    from cvattn.config import build_from_config

    check_positive("steps", steps)
    checkpoint = Path(CHECKPOINTS or "", f"{name}.ckpt")
    if CHECKPOINTS and checkpoint.is_file():
        load_weights(module, checkpoint)
        print(f"{name}: weights from CVATTN_CHECKPOINTS/{checkpoint.name}")
        return module.eval()
    trained, command = benchmark_checkpoint(benchmark) if benchmark and not FAST else (None, "")
    if trained is not None:
        trained_module, trained_data = build_from_config(_run_config(trained))
        shape = (data.image_size, data.in_chans, data.num_classes)
        if (trained_data.image_size, trained_data.in_chans, trained_data.num_classes) == shape:
            load_weights(trained_module, trained)
            print(f"{name}: the benchmark's {benchmark} ({_shown(trained)})")
            return trained_module.eval()
        command = f"the benchmark's {benchmark} was trained on other canvases than this data's"
    L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
              enable_model_summary=False, limit_val_batches=0).fit(module, datamodule=data)
    if FAST or not benchmark:
        print(f"{name}: trained here for {steps} steps" + (" (fast mode)" if FAST else ""))
    else:
        print(f"{name}: no trained benchmark checkpoint, so trained here for {steps} steps only (rough maps); "
              + (f"train it with: {command}" if command.startswith("python") else command or "no benchmark here"))
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
