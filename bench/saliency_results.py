"""Do the maps explain the model? The saliency benchmark on cluttered 100×100 Fashion-MNIST (or MNIST), as markdown.

    python bench/saliency_results.py --out results_saliency.md [--models convnet4 cbam_convnet4 vit ...]
        [--train-objects 3 1] [--eval-batches 4] [--auc-batches 2] [--skip-training] [--accelerator auto]
        [--train-args "--data.init_args.num_workers 4"] [--dataset mnist] [--methods gradcam scorecam occlusion]
    # smoke run (minutes on a CPU): --models convnet4 --train-objects 3 --max-steps 20 --eval-batches 1
    #     --auc-batches 0
    # a longer budget than the configs': --models convnet4 --max-steps 7500

``--max-steps N`` trains (and scores) its own runs, ``runs/saliency100_<model>_k<objects>_<N>steps``, so a smoke run
or a longer one never becomes the benchmark's model. ``--dataset mnist`` puts digits on the canvases instead of
garments (multi-object models only, ``configs/saliency_mnist_100_multi.yaml``, runs ``saliency100_mnist_...``): the
same small networks recognise a digit far more reliably than a garment, so their maps can be judged on models that
reach a high exact top-3 accuracy.

Every model is trained by one ``train.py`` run (``train_command`` prints it, so any row can be reproduced alone):

- **multi-object** (``--train-objects 3``): ``configs/saliency_fashion_mnist_100_multi.yaml``, three garments of
  three different classes per canvas, multi-label classification. The same model is scored on canvases with 1, 2
  and 3 garments; on k garments the map for each garment's class is judged against that garment's box
  (class-conditional), so a map that ignores the class points at the right garment about 1/k of the time.
- **single-object** (``--train-objects 1``): ``configs/saliency_fashion_mnist_100.yaml``, one garment per canvas,
  softmax classification; scored on one-garment canvases only.

For each model and each number of garments k, ``cvattn.saliency.evaluate`` scores the model's default methods (its
native maps, gradcam and gradcam++; ``--methods`` names others) beside the model-free baselines (random, centre,
brightness) on the first ``--eval-batches`` test batches of 64, and scores every method again on
``randomised_copy(model, seed)`` (every layer re-initialised) for each of ``--seeds`` (mean and range: one random
network can keep a bright garment in its map far more than another): a method whose score does not drop there is
not explaining the model on that metric. Training and scoring run on the GPU when there is one (``--accelerator``).
Accuracy is measured on the same canvases: top-1 on one garment, exact top-k (the k highest logits are the k
classes present) on k garments. Deletion and insertion AUC (RISE) only on one-garment canvases (``--auc-batches``;
they cost about H·W / pixels-per-step forwards per image and method).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

import cvattn
from _common import ROOT, hardware
from cvattn.checkpoint import load_weights
from cvattn.checks import did_you_mean
from cvattn.config import build_from_config
from cvattn.data import FashionMNISTDataModule, MNISTDataModule
from cvattn.lightning import MultiLabelClassifier
from cvattn.saliency import BASELINES, available_methods, evaluate, randomised_copy
from cvattn.saliency.registry import METHODS
from cvattn.saliency.runtime import objects_of, unwrap

CONFIGS = {"fashion_mnist": {1: "configs/saliency_fashion_mnist_100.yaml",
                              3: "configs/saliency_fashion_mnist_100_multi.yaml"},
           "mnist": {3: "configs/saliency_mnist_100_multi.yaml"}}
DATAMODULES = {"fashion_mnist": FashionMNISTDataModule, "mnist": MNISTDataModule}
MODELS = ["convnet4", "se_convnet4", "eca_convnet4", "cbam_convnet4", "vit", "ram"]
# Non-local attention only in the last block (12×12 positions): in the first block of a 100×100 convnet4 it would be
# a 10 000 × 10 000 attention per image; Wang et al. 2018 place one block in a 14×14 stage.
ATTN_KWARGS = {"nl": {"attn_blocks": [3]}}
# convnet4 with an attention-pooling head instead of global average pooling (cvattn.models.attnpool)
POOL_HEAD_MODELS = ["attnpool_convnet4", "classattn_convnet4", "localp_convnet4"]
# The ViT of the benchmark: 10×10 patches of the 100×100 canvas (100 tokens), small enough to train on a CPU, with
# a two-convolution stem (Xiao et al. 2021): with the plain patch projection it barely learned in 1,300 steps.
VIT_KWARGS = dict(img_size=100, patch_size=10, embed_dim=64, depth=4, num_heads=4, stem_channels=[16, 32])
VIT_STEPS = 3000


def trained_objects(objects: int) -> int:
    """The garments per canvas of the model that is scored on ``objects`` garments: 1 → the single-object model
    when asked for it, else the multi-object model (trained on 3)."""
    if objects not in (1, 2, 3):
        raise ValueError(f"objects must be 1, 2 or 3 (garments per canvas), got {objects!r}.")
    return objects if objects == 1 else 3


def run_name(model: str, objects: int, steps: int | None = None, dataset: str = "fashion_mnist") -> str:
    """The ``runs/<name>`` of ``model`` trained on canvases of ``objects`` (1 or 3) items of ``dataset``, for the
    config's steps or for ``steps``."""
    prefix = "saliency100_" if dataset == "fashion_mnist" else f"saliency100_{dataset}_"
    return f"{prefix}{model}_k{objects}" + (f"_{steps}steps" if steps else "")


def train_command(model: str, objects: int, steps: int | None = None, dataset: str = "fashion_mnist") -> list[str]:
    """The ``train.py`` command (without the interpreter) that trains ``model`` for scoring on ``objects``
    items of ``dataset`` per canvas, for the config's steps or for ``steps``."""
    attn = model.removesuffix("convnet4").rstrip("_")
    if model not in MODELS + POOL_HEAD_MODELS and not (model.endswith("_convnet4") and attn in cvattn.list_attn()):
        raise ValueError(f"Unknown model {model!r}; accepted: {', '.join(MODELS + POOL_HEAD_MODELS)}, or "
                         f"<attention>_convnet4 for any name of cvattn.list_attn().")
    trained = trained_objects(objects)
    if dataset not in CONFIGS:
        raise ValueError(f"Unknown dataset {dataset!r}; accepted: {', '.join(CONFIGS)}.")
    if trained not in CONFIGS[dataset] or (model == "ram" and dataset != "fashion_mnist"):
        raise ValueError(f"The benchmark on {dataset} has multi-object models only (trained on 3 items), and no "
                         f"RAM; asked for {model} trained on {trained}. Use --train-objects 3 with a CNN or the ViT, "
                         f"or --dataset fashion_mnist.")
    if model == "ram":
        if trained != 1:
            raise ValueError("The RAM classifies one object per canvas: there is no multi-object RAM; use objects=1.")
        extra = ["--config", "configs/ram_fashion_mnist_100_cluttered.yaml"] + (
            ["--trainer.max_epochs", "-1", "--trainer.max_steps", str(steps)] if steps else [])
        return ["train.py", *extra, "--trainer.logger.init_args.name", run_name(model, 1, steps)]
    if model == "vit":
        extra = ["--model.init_args.model", "vit_tiny_patch4_28", "--model.init_args.model_kwargs",
                 json.dumps(VIT_KWARGS), "--model.init_args.lr", "1.0e-3", "--model.init_args.weight_decay", "0.05",
                 "--model.init_args.scheduler", "onecycle",    # its warm-up; warmup_epochs needs a sized loader
                 "--trainer.max_steps", str(steps or VIT_STEPS),
                 "--trainer.precision", "32-true"]   # bf16 autocast makes this small ViT slower on a CPU
    elif model in POOL_HEAD_MODELS:
        extra = ["--model.init_args.model", model, "--model.init_args.model_kwargs", "{}"]
    else:
        kwargs = {"attn_layer": attn, **ATTN_KWARGS.get(attn, {})} if attn else {}
        extra = ["--model.init_args.model_kwargs", json.dumps(kwargs)]
    if steps and model != "vit":
        extra += ["--trainer.max_steps", str(steps)]
    return ["train.py", "--config", CONFIGS[dataset][trained], *extra,
            "--trainer.logger.init_args.name", run_name(model, trained, steps, dataset)]


def check_methods(model: str, objects: int, methods: list[str] | None, dataset: str = "fashion_mnist") -> None:
    """Raise ValueError, before anything is trained, when one of ``methods`` is unknown or does not apply to the
    network that ``train_command`` trains (built untrained from the same config and overrides)."""
    if methods is None:
        return
    for method in methods:
        if method not in METHODS:
            raise ValueError(f"Unknown saliency method {method!r}.{did_you_mean(method, METHODS)} Accepted: "
                             f"{', '.join(METHODS)}.")
    command = train_command(model, objects, dataset=dataset)
    options = dict(zip(command[1::2], command[2::2]))                # train.py --flag value --flag value ...
    init_args = yaml.safe_load((ROOT / options["--config"]).read_text())["model"]["init_args"]
    kwargs = json.loads(options.get("--model.init_args.model_kwargs", "null")) or init_args.get("model_kwargs") or {}
    if "in_chans" in init_args:
        kwargs["in_chans"] = init_args["in_chans"]
    applicable = available_methods(cvattn.create_model(options.get("--model.init_args.model", init_args["model"]),
                                                       **kwargs))
    unfit = [method for method in methods if method not in applicable]
    if unfit:
        raise ValueError(f"Saliency method(s) {', '.join(unfit)} do not apply to {model}; its methods: "
                         f"{', '.join(applicable)}.")


def best_checkpoint(model: str, objects: int, steps: int | None = None,
                    dataset: str = "fashion_mnist") -> Path | None:
    """The best-validation checkpoint of the newest trained run of ``model`` (for ``steps``, or the config's) for
    scoring on ``objects`` garments, or None if there is none. On one garment: the single-object model when it has been trained, else the
    multi-object one (which is scored on one-garment canvases too)."""
    candidates = [trained_objects(objects)] + ([3] if objects == 1 and model != "ram" else [])
    for trained in candidates:
        runs = sorted((ROOT / "runs" / run_name(model, trained, steps, dataset)).glob("version_*"),
                      key=lambda path: int(path.name.split("_")[1]))
        for run in reversed(runs):
            checkpoints = sorted((run / "checkpoints").glob("epoch=*.ckpt"))
            if checkpoints:
                return checkpoints[-1]
    return None


def load(model: str, objects: int, steps: int | None = None,
         dataset: str = "fashion_mnist") -> tuple[torch.nn.Module, bool]:
    """(the trained LightningModule in eval mode, whether it is multi-label)."""
    checkpoint = best_checkpoint(model, objects, steps, dataset)
    if checkpoint is None:
        raise FileNotFoundError(f"{model} (objects={objects}, {dataset}) is not trained: "
                                f"python {' '.join(train_command(model, objects, steps, dataset))}")
    module, _ = build_from_config(checkpoint.parents[1] / "config.yaml")
    load_weights(module, checkpoint)
    return module.eval(), isinstance(module, MultiLabelClassifier)


def test_data(objects: int, dataset: str = "fashion_mnist") -> FashionMNISTDataModule | MNISTDataModule:
    data = DATAMODULES[dataset](data_dir=str(ROOT / "data"), batch_size=64, num_workers=0, canvas_size=100,
                                num_distractors=8, num_objects=objects)
    data.prepare_data()
    data.setup("test")
    return data


@torch.no_grad()
def accuracy(model: torch.nn.Module, data, max_batches: int) -> float:
    """Top-1 on one garment, exact top-k on k garments: the k highest logits are the k classes present."""
    correct = total = 0
    device = next(model.parameters()).device
    for index, batch in enumerate(data.test_dataloader()):
        if index >= max_batches:
            break
        images, classes, _ = objects_of(batch)                                  # (B, C, H, W), (B, k), (B, k, 4)
        top = unwrap(model)(images.to(device)).topk(classes.shape[1], dim=1).indices.cpu()   # (B, k)
        correct += (top.sort(1).values == classes.sort(1).values).all(1).sum().item()
        total += len(images)
    return correct / total


def score(model: str, trained: int, args) -> list[dict]:
    module, multi_label = load(model, trained, args.max_steps, args.dataset)
    if args.accelerator != "cpu" and torch.cuda.is_available():   # score where it trained
        module = module.cuda()
    rows = []
    for objects in ([1, 2, 3] if multi_label else [1]):
        data = test_data(objects, args.dataset)
        start = time.perf_counter()
        acc = accuracy(module, data, args.eval_batches)
        auc = objects == 1 and args.auc_batches > 0
        trained_scores = evaluate(module, data, methods=args.methods,
                                  max_batches=args.eval_batches if not auc else args.auc_batches,
                                  pixels_per_step=args.pixels_per_step, auc=auc)
        if auc and args.eval_batches != args.auc_batches:   # the pointing game on all eval batches, AUCs on fewer
            pointing = evaluate(module, data, methods=args.methods, max_batches=args.eval_batches, auc=False)
            for method, values in trained_scores.items():
                values.update({k: pointing[method][k] for k in ("pointing_game", "energy_in_box", "num_images")})
        methods = [method for method in trained_scores if method not in BASELINES]
        randomised = {method: [] for method in methods}       # pointing game on each seed's randomised copy
        for seed in args.seeds:
            random_scores = evaluate(randomised_copy(module, seed=seed), data, methods=methods,
                                     max_batches=args.eval_batches, auc=False)
            for method in methods:
                randomised[method].append(random_scores[method]["pointing_game"])
        print(f"{model} (trained on {trained}) on {objects} item(s): acc {acc:.4f}, scored in "
              f"{time.perf_counter() - start:.0f} s", flush=True)
        for method, values in trained_scores.items():
            rows.append(dict(model=model, trained=trained, objects=objects, acc=acc, method=method, **values,
                             randomised=randomised.get(method)))
    return rows


def spread(values: list[float]) -> str:
    """Percentages ``mean (min–max)``, or the one value alone."""
    mean = 100 * sum(values) / len(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ({100 * min(values):.1f}–{100 * max(values):.1f})"


def table(rows: list[dict]) -> list[str]:
    lines = ["| model (trained on) | objects | acc (%) | method | pointing game (%) | randomised models (%) | "
             "energy in box | deletion AUC ↓ | insertion AUC ↑ |",
             "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        randomised = "—" if row["randomised"] is None else spread(row["randomised"])
        aucs = [f"{row[key]:.3f}" if key in row else "" for key in ("deletion_auc", "insertion_auc")]
        lines.append(f"| {row['model']} ({row['trained']}) | {row['objects']} | {100 * row['acc']:.1f} | "
                     f"{row['method']} | {100 * row['pointing_game']:.1f} | {randomised} | "
                     f"{row['energy_in_box']:.3f} | {' | '.join(aucs)} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=MODELS[:-1],
                        help=f"{', '.join(MODELS + POOL_HEAD_MODELS)}, or <attention>_convnet4 for any block of "
                             f"cvattn.list_attn()")
    parser.add_argument("--train-objects", nargs="+", type=int, default=[3], choices=[1, 3],
                        help="3: the multi-object models (scored on 1, 2 and 3 garments); 1: single-object models")
    parser.add_argument("--eval-batches", type=int, default=4, help="test batches of 64 scored per model")
    parser.add_argument("--auc-batches", type=int, default=2, help="of those, how many get deletion/insertion")
    parser.add_argument("--pixels-per-step", type=int, default=500, help="deletion/insertion step (21 points)")
    parser.add_argument("--max-steps", type=int,
                        help="train for this many steps instead of the configs', into runs of their own")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                        help="one randomised model per seed; the table gives their mean (min–max)")
    parser.add_argument("--skip-training", action="store_true", help="score the newest trained run of each")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--dataset", choices=list(CONFIGS), default="fashion_mnist",
                        help="what the canvases hold: garments, or (multi-object models only) MNIST digits")
    parser.add_argument("--methods", nargs="+",
                        help="saliency methods to score (default: each model's own, gradcam and gradcam++); the "
                             "baselines are always added")
    parser.add_argument("--train-args", default="", help="more train.py overrides for every run, one string, e.g. "
                        "'--data.init_args.num_workers 4 --trainer.max_time 00:00:08:00'")
    args = parser.parse_args()
    runs = [(model, trained) for trained in args.train_objects for model in args.models
            if not (model == "ram" and trained != 1)]
    for model, trained in runs:           # every name and combination checked before anything is trained
        try:
            train_command(model, trained, args.max_steps, args.dataset)
            check_methods(model, trained, args.methods, args.dataset)
        except ValueError as error:
            parser.error(str(error))

    rows = []
    for model, trained in runs:
        if not args.skip_training:
            command = train_command(model, trained, args.max_steps, args.dataset) + [
                "--trainer.accelerator", args.accelerator, "--trainer.enable_progress_bar", "false",
                *shlex.split(args.train_args)]
            print("$ python", " ".join(command), flush=True)
            subprocess.run([sys.executable, *command], cwd=ROOT, check=True)
        rows += score(model, trained, args)

    lines = [f"Cluttered 100×100 {DATAMODULES[args.dataset].torchvision_name} (8 distractors), "
             f"{rows[0]['num_images']} test canvases per row; "
             f"hardware: {hardware(args.accelerator)}. Randomised models: `randomised_copy(model, seed=s)` for s in "
             f"{args.seeds}, mean (min–max). "
             f"Command: `python bench/saliency_results.py --out {args.out} --models {' '.join(args.models)} "
             f"--train-objects {' '.join(map(str, args.train_objects))} --eval-batches {args.eval_batches} "
             f"--auc-batches {args.auc_batches} --pixels-per-step {args.pixels_per_step} "
             f"--seeds {' '.join(map(str, args.seeds))}"
             + (f" --max-steps {args.max_steps}" if args.max_steps else "")
             + (f" --dataset {args.dataset}" if args.dataset != "fashion_mnist" else "")
             + (f" --methods {' '.join(args.methods)}" if args.methods else "")
             + (f" --train-args {shlex.quote(args.train_args)}" if args.train_args else "") + "`.", ""] + table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
