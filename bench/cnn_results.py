"""Train baseline / SE / ECA / CBAM ResNet-20 on Fashion-MNIST with one fixed recipe and tabulate the results.

    python bench/cnn_results.py --out docs/results_cnn.md [--epochs 30] [--models resnet20 se_resnet20 ...]
        [--limit-train-batches 1.0] [--accelerator auto]

Each model is trained by ``train.py`` with ``configs/resnet20_fashion_mnist.yaml`` (only the model name, the
epoch count and the run name change), so the table is reproducible with the single-model command it prints.
Columns: test accuracy of the best-validation checkpoint, parameters, training images/s, wall time, hardware.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


import cvattn
from _common import ROOT, hardware, newest_run, test_accuracy

CONFIG = "configs/resnet20_fashion_mnist.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--models", nargs="+", default=["resnet20", "se_resnet20", "eca_resnet20", "cbam_resnet20"])
    parser.add_argument("--limit-train-batches", default="1.0")
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()

    rows = []
    train_images = 54_000 * float(args.limit_train_batches) if "." in args.limit_train_batches else \
        int(args.limit_train_batches) * 128
    for name in args.models:
        run_name = f"results_{name}_e{args.epochs}"
        command = [sys.executable, "train.py", "--config", CONFIG, "--model.init_args.model", name,
                   "--trainer.max_epochs", str(args.epochs), "--trainer.limit_train_batches", args.limit_train_batches,
                   "--trainer.accelerator", args.accelerator, "--trainer.enable_progress_bar", "false",
                   "--trainer.logger.init_args.name", run_name]
        print("$", " ".join(command[1:]), flush=True)
        start = time.perf_counter()
        subprocess.run(command, cwd=ROOT, check=True)
        wall = time.perf_counter() - start
        run_dir = newest_run(run_name)
        params = sum(p.numel() for p in cvattn.create_model(name, num_classes=10, in_chans=1).parameters())
        rows.append((name, 100 * test_accuracy(run_dir), params, train_images * args.epochs / wall, wall / 60))
        print(rows[-1], flush=True)

    lines = [
        f"Fashion-MNIST, `{CONFIG}`, {args.epochs} epochs, seed 0, limit_train_batches={args.limit_train_batches}; "
        f"hardware: {hardware(args.accelerator)}.",
        f"Command: `python bench/cnn_results.py --out {args.out} --epochs {args.epochs}`. Images/s counts training "
        "images over the whole run's wall time (validation and test included).",
        "",
        "| model | test acc (%) | params | train img/s | wall (min) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ] + [f"| {n} | {acc:.2f} | {p:,} | {ips:.0f} | {w:.1f} |" for n, acc, p, ips, w in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
