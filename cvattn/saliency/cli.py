"""Saliency maps from the command line, for a trained cvattn run or for your own photos with any timm model.

Your own photos (any timm model; the maps are for the model's top class):

  python -m cvattn.saliency --image bird.jpg [more files or folders] --model vit_base_patch16_224 --pretrained \\
      [--methods rollout gradcam] --out DIR

  Weights: --pretrained (timm's, downloaded once and cached; offline this fails with how to get them), --weights
  FILE (a state_dict, timm checkpoint or .safetensors, read with weights_only=True; a classifier of another size
  is taken as a fine-tuned model with that many classes), or --random-weights (maps of an untrained network, every
  title says so; for trying the command out). One of the three is required: a map of random weights is never
  shown by accident. --model takes any timm name (resnet50, convnext_tiny.fb_in22k, hf-hub:timm/...).
  Each photo goes through the model's own preprocessing (timm's data config: resize, centre crop, mean, std), and
  is drawn as the model saw it (the crop), then an overlay per method. Folders give their image files by extension
  (not recursively); other files in them are skipped with a note. A file that is not a readable image, or is over
  --max-pixels (default PIL's 89,478,485; checked from the header, before decoding), is an error. Written to DIR:
  NNN-<name>.png per photo and index.html (each photo with its top-5 classes; ImageNet names for 1k/21k-class
  models, else "class N").

A trained run (the model and data built from its train.py config, as train.py builds them):

  python -m cvattn.saliency --checkpoint CKPT --config CFG.yaml --out DIR [--methods ...] [--num-images 8]

  Written to DIR: image_000.png ... (a test image with its object box and predicted class, then map | overlay per
  method; at most the test set's size), metrics.json (evaluate over --max-batches test batches, every method beside
  the random, centre and brightness baselines) and index.html (the figures and the metrics table). Multi-object
  canvases: every object's box is drawn, and the title lists the classes on the canvas.

--methods defaults to the model's native maps (gates, attention, rollout, glimpses), gradcam and gradcam++; name
any other method of cvattn.saliency.available_methods (scorecam, occlusion, smoothgrad, ...) to add it.

Both modes check everything they can (files, model, weights, methods, DIR) before the work starts, then write each
figure as it is drawn into a hidden folder beside DIR that becomes DIR when everything is written: a failure, or
Ctrl-C, leaves no DIR at all. DIR must be new or empty (nothing is overwritten). Errors print one paragraph and
exit with status 2. The model runs on the first GPU if there is one (--device cpu, cuda or cuda:N to choose).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cvattn.checks import check_positive, did_you_mean
from cvattn.saliency.api import default_methods, saliency
from cvattn.saliency.gallery import Gallery, Table, check_new_output
from cvattn.saliency.overlay import saliency_grid
from cvattn.saliency.registry import METHODS, available_methods
from cvattn.saliency.runtime import objects_of, unwrap

RUN_OPTIONS = {"num_images": 8, "max_batches": 4, "pixels_per_step": None, "no_auc": False}
PHOTO_OPTIONS = {"model": None, "pretrained": False, "weights": None, "random_weights": False,
                 "max_pixels": None}


def resolve_device(name: str | None) -> torch.device:
    """``name`` as a device that exists here; None: the first GPU if there is one, else the CPU."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N.") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name!r}: this command runs on cpu or cuda (cuda:N), not on {device.type!r} "
                         f"devices; use --device cpu.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available here (torch {torch.__version__}); "
                         f"use --device cpu.")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"--device {name!r}: there are {torch.cuda.device_count()} GPUs here, "
                         f"cuda:0 to cuda:{torch.cuda.device_count() - 1}.")
    return device


def check_methods(model: torch.nn.Module, methods: list[str] | None) -> list[str]:
    """``methods`` if all apply to ``model``; none given: ``default_methods(model)`` (its native maps, gradcam and
    gradcam++)."""
    applicable = available_methods(model)
    if not methods:
        return default_methods(model)
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"--methods: unknown method {method!r}.{did_you_mean(method, METHODS)} Methods for "
                             f"{type(model).__name__}: {', '.join(applicable)}.")
    if unknown := [m for m in methods if m not in applicable]:
        raise ValueError(f"--methods {unknown} do not apply to {type(model).__name__}; methods that do: "
                         f"{', '.join(applicable)}.")
    return list(dict.fromkeys(methods))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cvattn.saliency", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    common = parser.add_argument_group("both modes")
    common.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder, new or empty (created)")
    common.add_argument("--methods", nargs="+", help="saliency methods (default: the model's native maps, gradcam and "
                                                     "gradcam++; the others, e.g. scorecam or occlusion, by name)")
    common.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda if available)")
    photos = parser.add_argument_group("your own photos")
    photos.add_argument("--image", nargs="+", metavar="PATH", help="image files or folders of them")
    photos.add_argument("--model", help="a timm model name, e.g. vit_base_patch16_224, resnet50.a1_in1k, hf-hub:...")
    weights = photos.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", action="store_true", default=None, help="timm's pretrained weights")
    weights.add_argument("--weights", metavar="FILE", help="a local state_dict, timm checkpoint or .safetensors")
    weights.add_argument("--random-weights", action="store_true", default=None,
                         help="an untrained network (labelled so in every title)")
    photos.add_argument("--max-pixels", type=int, metavar="N", help="refuse larger images (default 89,478,485, PIL's)")
    run = parser.add_argument_group("a trained run")
    run.add_argument("--checkpoint", help="Lightning .ckpt or a network state_dict")
    run.add_argument("--config", help="the train.py YAML the checkpoint was trained with")
    run.add_argument("--num-images", type=int, help="test images to draw (default 8, at most the test set)")
    run.add_argument("--max-batches", type=int, help="test batches for metrics.json (default 4)")
    run.add_argument("--pixels-per-step", type=int, help="deletion/insertion step (default: one image row)")
    run.add_argument("--no-auc", action="store_true", default=None, help="skip deletion/insertion AUC (the slow part)")
    return parser   # mode options default to None ("not given"), so those of the other mode can be refused


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run_photos(args) if args.image is not None else run(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def _mode_options(args: argparse.Namespace, mine: dict, theirs: dict, mode: str) -> None:
    """Refuse options of the other mode; fill in the defaults of this one."""
    if given := [f"--{name.replace('_', '-')}" for name in theirs if getattr(args, name) is not None]:
        raise ValueError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} not for {mode}; see "
                         f"python -m cvattn.saliency --help.")
    for name, default in mine.items():
        if getattr(args, name) is None:
            setattr(args, name, default)


def run_photos(args: argparse.Namespace) -> None:
    """Your own photos with a timm model: check everything, then draw each photo into the gallery ``args.out``."""
    from cvattn.saliency import photos

    _mode_options(args, PHOTO_OPTIONS, {"checkpoint": 0, "config": 0, **RUN_OPTIONS}, "--image")
    if args.model is None:
        raise ValueError("--image needs --model NAME (a timm model, e.g. vit_base_patch16_224 or resnet50).")
    if not (args.pretrained or args.weights or args.random_weights):
        raise ValueError(f"--model {args.model} needs weights: --pretrained (timm's), --weights FILE (your own), or "
                         f"--random-weights to try the command on an untrained network.")
    max_pixels = photos.DEFAULT_MAX_PIXELS if args.max_pixels is None else check_positive("--max-pixels",
                                                                                          args.max_pixels)
    check_new_output(args.out)
    files, notes = photos.find_photos(args.image)
    for path in files:
        photos.check_photo(path, max_pixels)
    photos.check_model_name(args.model)
    device = resolve_device(args.device)
    if args.pretrained:
        print(f"Loading timm's pretrained weights of {args.model} (downloaded on first use) ...", file=sys.stderr)
    model = photos.create_timm_model(args.model, pretrained=bool(args.pretrained), weights=args.weights)
    methods = check_methods(model, args.methods)
    source = ("timm's pretrained weights" if args.pretrained else f"weights {args.weights}" if args.weights
              else "random weights")
    for note in notes:
        print(f"note: {note}", file=sys.stderr)

    with Gallery(args.out, f"Saliency of {args.model} on {len(files)} photo{'s' * (len(files) != 1)}") as gallery:
        gallery.notes += [f"{args.model} with {source}; methods: {', '.join(methods)}; maps for the top class, "
                          f"on the crop the model saw (timm's data config).", *notes]
        if args.random_weights:
            gallery.notes.append("Random weights: the classes and maps show an untrained network, nothing learnt.")
        photos.explain_photos(model, files, methods, gallery, device, max_pixels,
                              label="random weights" if args.random_weights else "")
    print(f"Wrote {len(files)} figure{'s' * (len(files) != 1)} and index.html to {args.out}", file=sys.stderr)


def run(args: argparse.Namespace) -> None:
    """Build the run's model and data from ``args.config``, load ``args.checkpoint``, write the figures, scores
    and gallery to ``args.out``."""
    from cvattn.checkpoint import load_weights
    from cvattn.config import build_from_config
    from cvattn.saliency.evaluate import evaluate

    _mode_options(args, RUN_OPTIONS, PHOTO_OPTIONS, "--checkpoint/--config")
    if args.checkpoint is None or args.config is None:
        raise ValueError("Give --checkpoint CKPT --config CFG.yaml (a trained run) or --image PATH --model NAME "
                         "(your own photos); see python -m cvattn.saliency --help.")
    if args.num_images < 1 or args.max_batches < 1:
        raise ValueError(f"--num-images and --max-batches must be ≥ 1; got {args.num_images} and {args.max_batches}.")
    if not Path(args.checkpoint).is_file():
        raise FileNotFoundError(f"Checkpoint {args.checkpoint!r} does not exist (or is not a file).")
    check_new_output(args.out)
    device = resolve_device(args.device)
    module, datamodule = build_from_config(args.config)
    load_weights(module, args.checkpoint)
    model = unwrap(module).to(device).eval()
    methods = check_methods(model, args.methods)
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    available = len(loader.dataset)
    if args.num_images > available:
        raise ValueError(f"--num-images {args.num_images} is more than the {available} test images of this "
                         f"dataset; give at most {available}.")

    names = getattr(datamodule, "class_names", None)
    with Gallery(args.out, f"Saliency of {Path(args.checkpoint).name}") as gallery:
        gallery.notes.append(f"config {args.config}; methods: {', '.join(methods)}; maps for the predicted class.")
        has_boxes = draw_test_images(model, loader, methods, args.num_images, gallery, names, datamodule.mean,
                                     datamodule.std)
        metrics = evaluate(model, datamodule, methods, max_batches=args.max_batches,
                           pixels_per_step=args.pixels_per_step, auc=not args.no_auc) if has_boxes else {}
        summary = {"checkpoint": str(args.checkpoint), "config": str(args.config), "methods": metrics,
                   "note": "" if has_boxes else "no object boxes in this dataset: use a canvas to get metrics"}
        gallery.add_text("metrics.json", json.dumps(summary, indent=2) + "\n")
        if metrics:
            columns = list(next(iter(metrics.values())))
            gallery.tables.append(Table(f"Metrics over {args.max_batches} test batches (metrics.json)",
                                        ["method", *columns], [[m, *scores.values()] for m, scores in metrics.items()]))
        else:
            gallery.notes.append(summary["note"])


def draw_test_images(model, loader, methods, count, gallery, names, mean, std) -> bool:
    """The first ``count`` test images, a batch of the loader at a time: maps, then each image's figure saved (every
    object's box; on multi-object canvases the title lists the objects' classes). Returns whether the loader gives
    object boxes."""
    device = next(model.parameters()).device
    width = max(3, len(str(count - 1)))
    index, boxes = 0, None
    for batch in loader:
        images, classes, boxes = (None if t is None else t[:count - index] for t in objects_of(batch))
        images = images.to(device)                                        # classes (B, k), boxes (B, k, 4) or None
        with torch.no_grad():
            probs, predicted = model(images).softmax(1).max(1)
        maps = {method: saliency(model, images, method) for method in methods}        # (B, H, W) each
        listed = classes if len(batch) > 3 else None
        for row in range(len(images)):
            one = slice(row, row + 1)
            figure = saliency_grid(images[one], {m: v[one] for m, v in maps.items()}, predicted[one], probs[one],
                                   names, None if boxes is None else boxes[one], mean, std,
                                   object_classes=None if listed is None else listed[one])
            name, *truth = (names[int(c)] if names is not None else f"class {int(c)}"
                            for c in (predicted[row], *classes[row]))
            gallery.add_figure(figure, f"image_{index:0{width}d}.png",
                               caption=f"predicted {name} {float(probs[row]):.0%}, true {', '.join(truth)}")
            index += 1
        if index >= count:
            break
    return boxes is not None
