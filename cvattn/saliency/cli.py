"""``python -m cvattn.saliency --checkpoint CKPT --config CFG.yaml --out DIR``: overlays and metrics of a trained model.

The model and datamodule are built from the training config exactly as ``train.py`` builds them (the same
``CvattnCLI``, so ``data.num_classes``/``in_chans`` are linked into the model), the weights come from a Lightning
checkpoint or a bare network ``state_dict`` (read with ``weights_only=True``). Written to DIR:

- ``image_000.png`` …: one per test image (``--num-images``): the image with its object box and predicted class,
  then map | overlay for every method;
- ``metrics.json``: ``evaluate`` over ``--max-batches`` test batches, every method beside the random and
  centre baselines.

Everything is checked (checkpoint, config, methods, DIR writable) and computed before the first file is written,
so a failure leaves no partial output; errors print one paragraph and exit with status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import lightning as L
import torch

from cvattn.checkpoint import load_weights
from cvattn.runs import unwritable_ancestor
from cvattn.config import build_from_config
from cvattn.saliency.api import default_methods, saliency
from cvattn.saliency.registry import available_methods
from cvattn.saliency.runtime import first_samples, unwrap
from cvattn.saliency.evaluate import evaluate
from cvattn.saliency.overlay import saliency_grid


def check_writable(out: Path) -> None:
    """Raise unless ``out`` is, or can become, a writable directory."""
    if problem := unwritable_ancestor(out):
        raise ValueError(f"Output directory {str(out)!r} cannot be created: {str(problem[0])!r} {problem[1]}; "
                         f"choose another --out.")


def resolve_device(name: str | None) -> torch.device:
    """``name`` as a device that exists here; None: the first GPU if there is one, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available here (torch {torch.__version__}); "
                         f"use --device cpu.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: there are {torch.cuda.device_count()} GPUs here, "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cvattn.saliency", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="Lightning .ckpt or a network state_dict")
    parser.add_argument("--config", required=True, help="the train.py YAML the checkpoint was trained with")
    parser.add_argument("--out", required=True, type=Path, help="output directory (created if needed)")
    parser.add_argument("--methods", nargs="+", help="saliency methods (default: every method for the model)")
    parser.add_argument("--num-images", type=int, default=8, help="test images to draw (default 8)")
    parser.add_argument("--max-batches", type=int, default=4, help="test batches for metrics.json (default 4)")
    parser.add_argument("--pixels-per-step", type=int, help="deletion/insertion step (default: one image row)")
    parser.add_argument("--no-auc", action="store_true", help="skip deletion/insertion AUC (the slow part)")
    parser.add_argument("--device", help="where the model runs: cpu, cuda or cuda:N (default: cuda if available)")
    args = parser.parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> None:
    """Build the run's model and data from ``args.config``, load ``args.checkpoint``, write the figures and scores
    to ``args.out``."""
    if args.num_images < 1 or args.max_batches < 1:
        raise ValueError(f"--num-images and --max-batches must be ≥ 1; got {args.num_images} and {args.max_batches}.")
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"Checkpoint {args.checkpoint!r} does not exist (or is not a file).")
    check_writable(args.out)
    device = resolve_device(args.device)
    module, datamodule = build_from_config(args.config)
    load_weights(module, args.checkpoint)
    model = unwrap(module).to(device)
    methods = args.methods or default_methods(model)
    unknown = [m for m in methods if m not in available_methods(model)]
    if unknown:
        raise ValueError(f"--methods {unknown} do not apply to {type(model).__name__}; methods that do: "
                         f"{', '.join(available_methods(model))}.")

    datamodule.setup("test")
    images, labels, *boxes = first_samples(datamodule.test_dataloader(), args.num_images)
    images = images.to(device)
    model.eval()
    with torch.no_grad():
        probs, predicted = model(images).softmax(1).max(1)
    maps = {method: saliency(model, images, method) for method in methods}
    figures = [saliency_grid(images[i:i + 1], {m: v[i:i + 1] for m, v in maps.items()}, predicted[i:i + 1],
                             probs[i:i + 1], getattr(datamodule, "class_names", None),
                             boxes[0][i:i + 1] if boxes else None, datamodule.mean, datamodule.std)
               for i in range(len(images))]
    metrics = evaluate(model, datamodule, methods, max_batches=args.max_batches,
                       pixels_per_step=args.pixels_per_step, auc=not args.no_auc) if boxes else {}

    args.out.mkdir(parents=True, exist_ok=True)
    for index, figure in enumerate(figures):
        figure.savefig(args.out / f"image_{index:03d}.png", dpi=100)
    summary = {"checkpoint": str(args.checkpoint), "config": str(args.config), "methods": metrics,
               "note": "" if boxes else "no object boxes in this dataset: use a canvas to get metrics"}
    (args.out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
