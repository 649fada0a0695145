"""Do the models look at the object? Saliency metrics of trained models on cluttered Fashion-MNIST, as markdown.

    python bench/saliency_results.py --out docs/results_saliency.md [--epochs 30] [--models convnet2 cbam_convnet2 ...]
        [--canvas-size 60] [--eval-batches 10] [--pixels-per-step 120] [--limit-train-batches 1.0]
        [--limit-eval-batches 1.0] [--skip-training] [--accelerator auto]
    # smoke run (minutes on a CPU): --epochs 1 --limit-train-batches 5 --limit-eval-batches 2 --eval-batches 1
    #     --pixels-per-step 900 --models convnet2 vit ram

Each model is one ``train.py`` run (the command is printed, so any row can be reproduced alone) of
``configs/ram_fashion_mnist_60_cluttered_convnet2.yaml`` (the CNNs, with ``attn_layer`` set, and the ViT) or
``configs/ram_fashion_mnist_60_cluttered.yaml`` (the RAM); ``--skip-training`` reuses the newest run of each.
The best-validation checkpoint is then loaded and ``cvattn.saliency.evaluate`` scores the model's default methods
(``default_methods``: its native maps, gradcam and gradcam++) on the first ``--eval-batches`` test batches, beside
the random, centre and brightness baselines: pointing game
(mean over classes; tolerance 15 px at 224 px, scaled), energy in the box, deletion and insertion AUC (RISE).
Definitions: docs/saliency.md. The AUCs dominate the scoring time: (H·W / pixels-per-step + 1) forwards per image,
method and curve; the default 120 (two rows of a 60-pixel canvas) gives 31-point curves.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


from _common import ROOT, hardware, newest_run, test_accuracy
from cvattn.saliency import evaluate
from cvattn.checkpoint import load_weights
from cvattn.config import build_from_config

CONV_CONFIG = "configs/ram_fashion_mnist_60_cluttered_convnet2.yaml"
RAM_CONFIG = "configs/ram_fashion_mnist_60_cluttered.yaml"
MODELS = ["convnet2", "se_convnet2", "eca_convnet2", "cbam_convnet2", "vit", "ram"]


def overrides(name: str, canvas: int, width: int) -> tuple[str, list[str]]:
    """(config, train.py overrides) of a model name for a ``canvas``-pixel canvas; ``width``: the CNNs' first block."""
    data = ["--data.init_args.canvas_size", str(canvas), "--data.init_args.num_distractors",
            str(4 if canvas <= 60 else 8)]
    if name == "ram":
        return RAM_CONFIG, data + ["--model.init_args.model", "ram_60" if canvas <= 60 else "ram_100"]
    if name == "vit":
        kwargs = dict(img_size=canvas, patch_size=canvas // 10, embed_dim=128, depth=6, num_heads=4)
        return CONV_CONFIG, data + ["--model.init_args.model", "vit_tiny_patch4_28",
                                    "--model.init_args.model_kwargs", json.dumps(kwargs),
                                    "--model.init_args.weight_decay", "0.05"]
    attn, _, base = name.rpartition("_")
    if base != "convnet2":
        raise ValueError(f"Unknown model {name!r}; accepted: {', '.join(MODELS)}.")
    kwargs = {"width": width, **({"attn_layer": attn} if attn else {})}
    return CONV_CONFIG, data + ["--model.init_args.model_kwargs", json.dumps(kwargs)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--canvas-size", type=int, default=60, choices=[60, 100])
    parser.add_argument("--width", type=int, default=64, help="convnet2 width (64: about the RAM's size)")
    parser.add_argument("--eval-batches", type=int, default=10, help="test batches of 64 scored per model")
    parser.add_argument("--pixels-per-step", type=int, default=120, help="deletion/insertion step")
    parser.add_argument("--limit-train-batches", default="1.0")
    parser.add_argument("--limit-eval-batches", default="1.0", help="train.py's validation and test batches")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()

    rows = []
    for name in args.models:
        config, extra = overrides(name, args.canvas_size, args.width)
        run_name = f"saliency_{name}_{args.canvas_size}_e{args.epochs}"
        command = [sys.executable, "train.py", "--config", config, *extra, "--trainer.max_epochs", str(args.epochs),
                   "--trainer.limit_train_batches", args.limit_train_batches,
                   "--trainer.limit_val_batches", args.limit_eval_batches,
                   "--trainer.limit_test_batches", args.limit_eval_batches,
                   "--trainer.accelerator", args.accelerator, "--trainer.enable_progress_bar", "false",
                   "--trainer.logger.init_args.name", run_name]
        if not args.skip_training:
            print("$", " ".join(command[1:]), flush=True)
            subprocess.run(command, cwd=ROOT, check=True)
        run_dir = newest_run(run_name)
        checkpoints = sorted((run_dir / "checkpoints").glob("epoch=*.ckpt")) or [run_dir / "checkpoints" / "last.ckpt"]
        module, data = build_from_config(run_dir / "config.yaml")
        load_weights(module, checkpoints[-1])
        start = time.perf_counter()
        scores = evaluate(module, data, max_batches=args.eval_batches, pixels_per_step=args.pixels_per_step)
        print(f"{name}: scored in {time.perf_counter() - start:.0f} s", json.dumps(scores, indent=1), flush=True)
        rows += [(name, test_accuracy(run_dir), method, s) for method, s in scores.items()]

    num_images = rows[0][3]["num_images"]
    lines = [
        f"Cluttered {args.canvas_size}×{args.canvas_size} Fashion-MNIST, {args.epochs} epochs "
        f"(limit_train_batches={args.limit_train_batches}), best-validation checkpoint, {num_images} test images; "
        f"hardware: {hardware(args.accelerator)}.",
        f"Command: `python bench/saliency_results.py --out {args.out} --epochs {args.epochs} --canvas-size "
        f"{args.canvas_size} --width {args.width} --limit-train-batches {args.limit_train_batches} "
        f"--limit-eval-batches {args.limit_eval_batches} --eval-batches {args.eval_batches} "
        f"--pixels-per-step {args.pixels_per_step}`. "
        "Maps for the true class; pointing game averaged "
        "over classes; deletion (lower is better) and insertion (higher is better) track the clean top-1 class.",
        "",
        "| model | test acc (%) | method | pointing game (%) | energy in box | deletion AUC ↓ | insertion AUC ↑ |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ] + [f"| {name} | {100 * acc:.2f} | {method} | {100 * s['pointing_game']:.1f} | {s['energy_in_box']:.3f} | "
         f"{s['deletion_auc']:.3f} | {s['insertion_auc']:.3f} |" for name, acc, method, s in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
