"""ViT variants on Fashion-MNIST with one short recipe: position encodings, and single- against multi-head attention.

    python bench/vit_variants.py [--out docs/vit_variants.md] [--rows learned sinusoidal none heads1 ...]
        [--epochs 4] [--limit-train-batches 25] [--limit-val-batches 12] [--warmup-epochs 0.4]
        [--seeds 0 1 2] [--jobs 2] [--precision 32-true] [--reuse-finished]

Every row is one ``train.py`` run of ``configs/vit_fashion_mnist.yaml`` (width 128, depth 6, 4 heads, MLP 256,
mean-pooled head; AdamW, cosine with warm-up, label smoothing, shifts and flips) shortened to ``--epochs`` epochs of
``--limit-train-batches`` batches of 128, with only the model's keyword arguments changed; the script prints each
run's command, so a row can be reproduced alone. Rows:

- (a) ``learned`` / ``sinusoidal`` / ``none``: the ``pos_embed`` argument, nothing else changed;
- (b) ``heads1``: 1 head of width 128 against ``learned`` (4 heads of 32): the same depth, width and parameters
  (the Q/K/V and output projections do not depend on the number of heads);
- (b) ``heads4_depth2`` / ``heads1_depth8``: the same number of parameters and of heads in total (8): 4 heads ×
  2 blocks of width 128 against 1 head × 8 blocks of width 64 (a block has 8·width² weights), the comparison of
  Liu et al. 2021, "Multi-head or Single-head? An Empirical Comparison for Transformer Training" (docs/references.md).

Validation accuracy after every epoch is read on the first ``--limit-val-batches`` batches of the validation split
(the same images every time); the test accuracy is that of the best-validation checkpoint on the whole test split.
Every row is trained once per ``--seeds`` value (``seed_everything``), and with several seeds a second table gives
each row's mean and standard deviation. Every run is one process with one thread (``OMP_NUM_THREADS=1``),
``--jobs`` of them at once; each run's wall time and its own CPU time are recorded.
"""
from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

from _common import ROOT, newest_run, test_accuracy
from cvattn.data import FashionMNISTDataModule
from cvattn.models import create_model

CONFIG = "configs/vit_fashion_mnist.yaml"
BASE = dict(embed_dim=128, depth=6, num_heads=4, mlp_ratio=2.0, global_pool="avg")
# name → (comparison, model_kwargs on top of BASE)
ROWS = {
    "learned": ("(a) position encoding", dict(pos_embed="learned")),
    "sinusoidal": ("(a) position encoding", dict(pos_embed="sinusoidal")),
    "none": ("(a) position encoding", dict(pos_embed="none")),
    "heads1": ("(b) heads at equal depth and width", dict(num_heads=1)),
    "heads4_depth2": ("(b) deeper single head, same parameters and total heads", dict(depth=2)),
    "heads1_depth8": ("(b) deeper single head, same parameters and total heads",
                      dict(embed_dim=64, depth=8, num_heads=1)),
}


def _flow(kwargs: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in kwargs.items()) + "}"


def _curve(run_dir: Path) -> tuple[list[float], float]:
    """(validation accuracy after each epoch, last epoch's training loss) from the run's metrics.csv."""
    with open(run_dir / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    val = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    train_loss = [float(r["train/loss_epoch"]) for r in rows if r.get("train/loss_epoch")]
    return val, train_loss[-1] if train_loss else float("nan")


def _train(overrides: list[str], env: dict) -> dict:
    """Run ``train.py`` once; its wall time and its own CPU time (``wait4``: right even with several runs at once)."""
    start = time.perf_counter()
    child = subprocess.Popen([sys.executable, "train.py", *overrides], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, child.args)
    return dict(wall_s=time.perf_counter() - start, cpu_s=usage.ru_utime + usage.ru_stime)


def training_split() -> tuple[int, int]:
    """(training images, batch size) of the config: Fashion-MNIST's 60 000 training images less the datamodule's
    validation share, and the config's batch size. An epoch is ceil(images / batch) batches (the last one short)."""
    data = yaml.safe_load((ROOT / CONFIG).read_text())["data"]["init_args"]
    default = inspect.signature(FashionMNISTDataModule).parameters["val_fraction"].default
    val_fraction = data.get("val_fraction", default)
    return 60_000 - round(60_000 * val_fraction), data["batch_size"]


def _mean_sd(values: list[float]) -> str:
    mean = statistics.fmean(values)
    return f"{mean:.2f} ± {statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this markdown file")
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="train every row once per seed; with several, a second table gives mean ± sd")
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs at once, one thread each (no more than the CPU cores, or every run slows down)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--limit-train-batches", type=int, default=25)
    parser.add_argument("--limit-val-batches", type=int, default=12)
    parser.add_argument("--warmup-epochs", type=float, default=0.4)
    parser.add_argument("--precision", default="32-true",
                        help="Lightning's precision (bf16-mixed was slower than float32 for this model on one thread)")
    parser.add_argument("--reuse-finished", action="store_true",
                        help="read a row whose run already has a test result instead of training it again")
    args = parser.parse_args()
    if not 1 <= args.jobs <= (os.cpu_count() or 1):
        parser.error(f"--jobs must be between 1 and the {os.cpu_count()} CPU cores; got {args.jobs}")

    train_images, batch_size = training_split()
    per_epoch = math.ceil(train_images / batch_size)
    if not 1 <= args.limit_train_batches <= per_epoch:
        parser.error(f"--limit-train-batches must be between 1 and the {per_epoch} batches of one epoch of "
                     f"{CONFIG} (a larger limit trains {per_epoch}, and the runs' names and step counts would be "
                     f"wrong); got {args.limit_train_batches}. For more steps raise --epochs.")

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    steps = args.epochs * args.limit_train_batches

    def run(name: str, seed: int) -> dict:
        comparison, extra = ROWS[name]
        kwargs = {**BASE, **extra}
        run_name = f"vit_variants_{name}_{steps}steps_seed{seed}"
        overrides = ["--config", CONFIG, "--seed_everything", str(seed),
                     "--model.init_args.model_kwargs", _flow(kwargs),
                     "--model.init_args.warmup_epochs", str(args.warmup_epochs),
                     "--trainer.max_epochs", str(args.epochs),
                     "--trainer.limit_train_batches", str(args.limit_train_batches),
                     "--trainer.limit_val_batches", str(args.limit_val_batches),
                     "--trainer.accelerator", "cpu", "--trainer.precision", args.precision,
                     "--trainer.enable_progress_bar", "false", "--data.init_args.num_workers", "0",
                     "--trainer.logger.init_args.name", run_name]
        command = "OMP_NUM_THREADS=1 python train.py " + " ".join(
            f"'{o}'" if " " in o or "{" in o else o for o in overrides)
        print("$", command, flush=True)
        finished = list((ROOT / "runs" / run_name).glob("version_*/vit_variants_timing.json"))  # written on success
        if args.reuse_finished and finished:
            run_dir = max((f.parent for f in finished), key=lambda p: int(p.name.split("_")[1]))
        else:
            timing = _train(overrides, env)
            run_dir = newest_run(run_name)
            (run_dir / "vit_variants_timing.json").write_text(json.dumps(timing))
        timing = json.loads((run_dir / "vit_variants_timing.json").read_text())
        val, train_loss = _curve(run_dir)
        with torch.device("meta"):
            params = sum(p.numel() for p in create_model("vit_tiny_patch4_28", **kwargs).parameters())
        result = dict(name=name, seed=seed, comparison=comparison, params=params, val=val,
                      test=100 * test_accuracy(run_dir), train_loss=train_loss,
                      shape=f"{kwargs['num_heads']} × {kwargs['depth']} × {kwargs['embed_dim']}",
                      pos_embed=kwargs.get("pos_embed", "learned"), **timing)
        result["row"] = (f"| {comparison} | `{name}` | {seed} | {result['pos_embed']} | {result['shape']} | "
                         f"{params:,} | {' / '.join(f'{100 * v:.1f}' for v in val)} | {result['test']:.2f} | "
                         f"{train_loss:.3f} | {timing['wall_s'] / 60:.1f} | {timing['cpu_s'] / 60:.1f} |")
        print(result["row"], flush=True)
        return result

    # seeds outermost: a sweep stopped early has every row at the seeds it finished
    tasks = [(name, seed) for seed in args.seeds for name in args.rows]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda task: run(*task), tasks))

    header = [
        f"Fashion-MNIST, `{CONFIG}` shortened to {args.epochs} epochs × {args.limit_train_batches} batches of "
        f"{batch_size} ({steps} steps, {steps * batch_size:,} images, {steps * batch_size / train_images:.2f} passes "
        f"over the {train_images:,} training images), warm-up {args.warmup_epochs} epoch then cosine; validation on "
        f"the first {args.limit_val_batches * batch_size:,} "
        f"validation images after each epoch; test: best-validation checkpoint on the 10,000 test images. "
        f"Seeds {', '.join(map(str, args.seeds))}, precision {args.precision}; hardware: "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.jobs} run(s) at once with "
        f"OMP_NUM_THREADS=1 each; torch {torch.__version__}.",
        f"Command: `python bench/vit_variants.py {' '.join(sys.argv[1:])}`.",
        "",
        "| comparison | row | seed | pos_embed | heads × depth × width | params | val acc (%) per epoch | test acc (%) "
        "| final train loss | wall (min) | CPU (min) |",
        "| --- | --- | ---: | --- | --- | ---: | --- | ---: | ---: | ---: | ---: |",
    ]
    lines = header + [r["row"] for r in results]
    if len(args.seeds) > 1:
        lines += ["", "| comparison | row | heads × depth × width | test acc (%) per seed | test acc (%), mean ± sd "
                  "| val acc (%) per epoch, mean over seeds | CPU (min), mean |",
                  "| --- | --- | --- | --- | ---: | --- | ---: |"]
        for name in args.rows:
            runs = [r for r in results if r["name"] == name]
            tests = [r["test"] for r in runs]
            curve = [statistics.fmean(epoch) for epoch in zip(*(r["val"] for r in runs))]
            lines.append(f"| {runs[0]['comparison']} | `{name}` | {runs[0]['shape']} | "
                         f"{' / '.join(f'{test:.2f}' for test in tests)} | {_mean_sd(tests)} | "
                         f"{' / '.join(f'{100 * v:.1f}' for v in curve)} | "
                         f"{statistics.fmean(r['cpu_s'] for r in runs) / 60:.1f} |")
    table = "\n".join(lines) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table)
    print(table)


if __name__ == "__main__":
    main()
