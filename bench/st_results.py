"""ST-CNN against the same CNN without the transformer, on RTS 42×42 and cluttered 60×60 MNIST, as a markdown table.

    python bench/st_results.py [--tasks rts cluttered] [--steps 1500] [--width 16] [--dataset mnist] [--seed 0]
        [--transform affine] [--out-size N] [--loc-norm] [--val-every 500] [--limit-val-batches 20] [--limit-test-batches N] [--precision bf16-mixed]
        [--reuse-finished] [--train-args "--data.init_args.num_workers 2"]

Every row is one ``train.py`` run of ``configs/st_cnn_mnist_rts.yaml`` or ``configs/st_cnn_mnist_60_cluttered.yaml``
with the overrides the script prints (the control: ``--model.init_args.model convnet2``; ``--models
conv_fc_baseline st_conv_fc_baseline`` compares a CNN with a fully connected head instead of global average pooling,
Mnih et al. 2014's conv baseline, alone and behind the transformer), so any row can be
reproduced alone; ``--reuse-finished`` reads a run that already logged a test result instead of training again
(runs of both models share the config's run folder: a row is matched by its model, its keyword arguments and its
seed in the run's ``config.yaml``). ``--transform`` and ``--out-size`` are the ST-CNN's (``SpatialTransformer``'s
constraint on θ and output size: ``--out-size 30`` on 60×60 canvases makes the network see half the resolution
unless the transformer zooms in). ``--seed`` sets ``seed_everything`` (the initial weights); the data keep the config's seed, so
every seed is trained and tested on the same canvases in the same order. The test error is that of the
best-validation checkpoint on the test split (its first ``--limit-test-batches`` batches of 64 when given).

Where the transformer looks, on the test split: "centre in box", the share of images whose sampled region
(``SpatialTransformer.sampled_boxes``, the bounding box of the sampled grid's corners) contains the object's centre
(the centre of the datamodule's box); "IoU", the mean intersection over union of the sampled box (clipped to the
image) with the object's box; "offset", the mean distance in pixels from the sampled region's centre to the object's
centre; "outside", the share of images whose sampling grid fell entirely outside the image (the transformer's
``last_outside``: its output is then all padding). The row "identity θ" is the untrained transformer's box, the whole image: what a transformer that never
moves or zooms scores.
"""
from __future__ import annotations

import argparse
import json
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from _common import ROOT, hardware, test_accuracy
from cvattn.checkpoint import load_checkpoint
from cvattn.data import DistortedFashionMNISTDataModule, DistortedMNISTDataModule, FashionMNISTDataModule, \
    MNISTDataModule
from cvattn.lightning import ImageClassifier
from cvattn.layers.spatial_transformer import TRANSFORMS, SpatialTransformer

CONFIGS = {"rts": "configs/st_cnn_mnist_rts.yaml", "cluttered": "configs/st_cnn_mnist_60_cluttered.yaml"}
DATA = {("rts", "mnist"): ("cvattn.data.DistortedMNISTDataModule", DistortedMNISTDataModule, {"distortion": "rts"}),
        ("rts", "fashion_mnist"): ("cvattn.data.DistortedFashionMNISTDataModule", DistortedFashionMNISTDataModule,
                                   {"distortion": "rts"}),
        ("cluttered", "mnist"): ("cvattn.data.MNISTDataModule", MNISTDataModule,
                                 {"canvas_size": 60, "num_distractors": 4}),
        ("cluttered", "fashion_mnist"): ("cvattn.data.FashionMNISTDataModule", FashionMNISTDataModule,
                                         {"canvas_size": 60, "num_distractors": 4})}
CANVAS = {"rts": 42, "cluttered": 60}
# Each CNN and the same CNN behind a transformer: convnet2 ends in global average pooling, conv_fc_baseline (Mnih et
# al. 2014's conv baseline) in a fully connected layer over every position of its map.
MODELS = ("convnet2", "st_convnet2", "conv_fc_baseline", "st_conv_fc_baseline")


def overrides(task: str, dataset: str, model: str, args) -> list[str]:
    class_path = DATA[task, dataset][0]
    return ["--config", CONFIGS[task], "--model.init_args.model", model,
            "--model.init_args.model_kwargs", json.dumps(model_kwargs(model, args, task)),
            "--data.class_path", class_path, "--data.init_args.num_workers", "0",
            "--trainer.max_epochs", "-1", "--trainer.max_steps", str(args.steps),
            "--trainer.val_check_interval", str(args.val_every), "--trainer.check_val_every_n_epoch", "null",
            "--trainer.limit_val_batches", str(args.limit_val_batches), "--trainer.precision", args.precision,
            "--trainer.enable_progress_bar", "false", "--seed_everything", str(args.seed)] + (
        ["--trainer.limit_test_batches", str(args.limit_test_batches)] if args.limit_test_batches else [])


def model_kwargs(model: str, args, task: str) -> dict:
    """The model's keyword arguments: convnet2's width, or conv_fc_baseline's input size; for an ST model also the
    transform, the output size and the localisation net's norm."""
    is_st = model.startswith("st_")
    if model.endswith("convnet2"):
        cnn = {"width": args.width}
    elif is_st and args.out_size:
        cnn = {}                                  # st_conv_fc_baseline sizes its CNN for the transformer's output
    else:
        cnn = {"img_size": CANVAS[task]}
    if not is_st:
        return cnn
    return {"transform": args.transform, **cnn, **({"out_size": args.out_size} if args.out_size else {}),
            **({"loc_norm": True} if args.loc_norm else {})}


def run_config(run_dir: Path) -> tuple[str, dict, str, int]:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    init = config["model"]["init_args"]
    return init["model"], init["model_kwargs"], config["data"]["class_path"], config["seed_everything"]


def finished_run(task: str, dataset: str, model: str, kwargs: dict, seed: int) -> Path | None:
    """The newest run of this config for (model, kwargs, dataset, seed) that logged a test accuracy."""
    folder = ROOT / "runs" / Path(CONFIGS[task]).stem
    for run_dir in sorted(folder.glob("version_*"), key=lambda p: -int(p.name.split("_")[1])):
        if (run_dir / "config.yaml").is_file() and (run_dir / "metrics.csv").is_file():
            if run_config(run_dir) == (model, kwargs, DATA[task, dataset][0], seed) and test_accuracy(run_dir) == \
                    test_accuracy(run_dir):
                return run_dir
    return None


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of matching boxes (B, 4) (x0, y0, x1, y1)."""
    inter = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0).prod(1)
    area = lambda box: (box[:, 2:] - box[:, :2]).clamp(min=0).prod(1)  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@torch.no_grad()
def where_it_looks(checkpoint_path: Path | None, task: str, dataset: str,
                   limit_images: int | None = None) -> tuple[float, float, float, float]:
    """(centre-in-box %, mean IoU, mean centre offset, grid-outside %) of the transformer's sampled regions on the
    test split (its first ``limit_images``); the identity θ's when ``checkpoint_path`` is None."""
    _, datamodule_class, data_kwargs = DATA[task, dataset]
    datamodule = datamodule_class(batch_size=64, num_workers=0, download=False, **data_kwargs)
    datamodule.setup("test")
    transformer = SpatialTransformer(1)
    if checkpoint_path is not None:
        checkpoint = load_checkpoint(checkpoint_path)
        module = ImageClassifier(**{k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")})
        module.load_state_dict(checkpoint["state_dict"])
        transformer = module.model.transformer
    transformer.eval()
    hits, ious, offsets, outside, count = 0.0, 0.0, 0.0, 0, 0
    for images, _, boxes in datamodule.test_dataloader():
        if limit_images is not None and count >= limit_images:
            break
        transformer(images)
        size = tuple(images.shape[-2:])
        sampled = transformer.sampled_boxes(size)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        hits += ((centre >= sampled[:, :2]) & (centre < sampled[:, 2:])).all(1).sum().item()
        clipped = torch.cat([sampled[:, :2].clamp(min=0), sampled[:, 2:].clamp(max=size[-1])], 1)
        ious += box_iou(clipped, boxes).sum().item()
        offsets += ((sampled[:, :2] + sampled[:, 2:]) / 2 - centre).norm(dim=1).sum().item()
        outside += int(transformer.last_outside.sum())
        count += len(images)
    return 100 * hits / count, ious / count, offsets / count, 100 * outside / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", choices=sorted(CONFIGS), default=["rts"])
    parser.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist")
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0, help="seed_everything: the initial weights")
    parser.add_argument("--transform", choices=TRANSFORMS, default="affine", help="the ST-CNN's")
    parser.add_argument("--out-size", type=int, default=None, help="the ST-CNN's output size (default: the input's)")
    parser.add_argument("--loc-norm", action="store_true", help="BatchNorm in the ST-CNN's localisation net")
    parser.add_argument("--val-every", type=int, default=500)
    parser.add_argument("--limit-val-batches", type=int, default=20)
    parser.add_argument("--limit-test-batches", type=int, default=None)
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--reuse-finished", action="store_true")
    parser.add_argument("--train-args", default="", help="more train.py overrides, one string; they come last, so "
                        "they win, e.g. '--data.init_args.num_workers 2'")
    args = parser.parse_args()
    rows = []
    limit = 64 * args.limit_test_batches if args.limit_test_batches else None
    for task in args.tasks:
        for model in args.models:
            kwargs = model_kwargs(model, args, task)
            run_dir = finished_run(task, args.dataset, model, kwargs, args.seed) if args.reuse_finished else None
            minutes = cpu_minutes = float("nan")
            if run_dir is None:
                command = overrides(task, args.dataset, model, args) + shlex.split(args.train_args)
                print("$ python train.py", " ".join(command), flush=True)
                start, cpu_start = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
                subprocess.run([sys.executable, "train.py", *command], cwd=ROOT, check=True)
                minutes = (time.perf_counter() - start) / 60
                cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpu_minutes = (cpu.ru_utime + cpu.ru_stime - cpu_start.ru_utime - cpu_start.ru_stime) / 60
                # Not the config's newest run: another st_results.py running beside this one may own that.
                run_dir = finished_run(task, args.dataset, model, kwargs, args.seed)
            error = 100 * (1 - test_accuracy(run_dir))
            if model.startswith("st_"):
                best = next(p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
                centre, iou, offset, outside = where_it_looks(best, task, args.dataset, limit)
                looks = f"{centre:.1f} | {iou:.3f} | {offset:.1f} | {outside:.2f}"
            else:
                looks = "– | – | – | –"
            described = ", ".join(f"{key} {value}" for key, value in kwargs.items())
            rows.append(f"| {task} | {model} ({described}, seed {args.seed}) | {error:.2f} | {looks} | "
                        f"{minutes:.1f} | {cpu_minutes:.1f} | {run_dir.relative_to(ROOT)} |")
            print(rows[-1], flush=True)
        centre, iou, offset, outside = where_it_looks(None, task, args.dataset, limit)
        rows.append(f"| {task} | identity θ (whole image) | – | {centre:.1f} | {iou:.3f} | {offset:.1f} | "
                    f"{outside:.2f} | – | – | – |")
    print(f"\n{args.dataset}, {args.steps} steps of batch 64, {args.precision}, on {hardware('auto')}\n")
    print("| Task | Model | Test error % | Centre in box % | IoU | Offset px | Outside % | Wall min | CPU min | Run |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
