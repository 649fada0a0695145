"""The recurrent attention model against its controls on cluttered 60×60 canvases, as a markdown table.

    python bench/ram_results.py --out docs/results_ram.md [--epochs 50] [--conv-epochs N] [--conv-width 64] [--seeds 0 1 2]
        [--limit-train-batches 1.0] [--limit-eval-batches 1.0] [--datasets fashion_mnist mnist] [--accelerator auto]
        [--jobs 1] [--num-scales 3] [--core rnn] [--conv-models conv_fc_baseline convnet2] [--reuse-finished]

Side by side on the same data (the same canvases for a given seed): RAM with 4, 6 and 8 glimpses, RAM with 8
random glimpses (the policy control: a trained policy must clearly beat it) and two conv baselines: the paper's
own (``conv_fc_baseline``: one 10×10 conv of stride 5 and 256 hidden units, about the RAM's size) and the much
stronger ``convnet2``. Mnih et al. 2014 (MNIST, docs/references.md): RAM 8 glimpses 4.04%, conv 8.09%, random
glimpses 14.4%. MNIST runs only where its IDX files are found; Fashion-MNIST always.

Every row is one ``train.py`` run of ``configs/ram_fashion_mnist_60_cluttered.yaml`` (RAM) or the conv model's
``configs/ram_fashion_mnist_60_cluttered_{conv_fc,convnet2}.yaml`` with the overrides the script prints, so any row
can be reproduced alone; with ``--reuse-finished`` a row whose run directory already holds a test result (a run
by this script, or the same ``train.py`` command run by hand) is read instead of trained again. The test error is
that of the best-validation checkpoint, looking at the policy mean (no Monte-Carlo averaging). "On object" is the
fraction of test images whose last glimpse is centred inside the object's box (``final_glimpse_hit_rate``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from _common import ROOT, hardware, newest_run, split_threads, test_accuracy
from cvattn.checkpoint import load_checkpoint
from cvattn.data import FashionMNISTDataModule, MNISTDataModule
from cvattn.lightning.ram import RAMModule
from cvattn.models import create_model
from cvattn.models.ram import final_glimpse_hit_rate

RAM_CONFIG = "configs/ram_fashion_mnist_60_cluttered.yaml"
CONV_CONFIGS = {"conv_fc_baseline": "configs/ram_fashion_mnist_60_cluttered_conv_fc.yaml",
                "convnet2": "configs/ram_fashion_mnist_60_cluttered_convnet2.yaml"}
DATASETS = {"fashion_mnist": FashionMNISTDataModule, "mnist": MNISTDataModule}
CANVAS_SIZE, NUM_DISTRACTORS = 60, 4


def runs(glimpses: list[int], num_scales: int, core: str, conv_models: list[str],
         conv_width: int) -> list[tuple[str, str, str, dict]]:
    """(label, config, model name, model_kwargs) of every compared model."""
    details = (f", {num_scales} scales" if num_scales != 3 else "") + (f", {core} core" if core != "rnn" else "")
    ram_kwargs = {"num_scales": num_scales, **({"core": core} if core != "rnn" else {})}
    conv_rows = {"conv_fc_baseline": ("conv_fc_baseline (the paper's)", {}),
                 "convnet2": (f"convnet2 (width {conv_width})", {"width": conv_width})}
    ram = [(f"RAM, {n} glimpses{details}", RAM_CONFIG, "ram_60", {"num_glimpses": n, **ram_kwargs})
           for n in glimpses]
    return ram + [
        (f"RAM, {max(glimpses)} random glimpses{details}", RAM_CONFIG, "ram_60",
         {"num_glimpses": max(glimpses), **ram_kwargs, "random_glimpses": True}),
    ] + [(conv_rows[name][0], CONV_CONFIGS[name], name, conv_rows[name][1]) for name in conv_models]


def finished_run(run_name: str) -> Path | None:
    """The newest ``runs/<run_name>/version_N`` that logged a test accuracy, if any."""
    try:
        run_dir = newest_run(run_name)
    except FileNotFoundError:
        return None
    finished = (run_dir / "metrics.csv").is_file() and not math.isnan(test_accuracy(run_dir))
    return run_dir if finished else None


def wall_minutes(run_dir: Path) -> float:
    """Minutes from the start of the fit (Lightning writes the run's config.yaml then) to its last metrics row."""
    return ((run_dir / "metrics.csv").stat().st_mtime - (run_dir / "config.yaml").stat().st_mtime) / 60


def dataset_found(name: str) -> bool:
    try:
        DATASETS[name](download=False).prepare_data()
    except FileNotFoundError:
        return False
    return True


def best_checkpoint(run_dir: Path) -> Path:
    return next(p for p in (run_dir / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")


def test_batches(dataset: str, seed: int, limit_batches: str):
    """The test canvases of ``dataset`` as (images, labels, boxes) batches, as many as train.py tested on."""
    datamodule = DATASETS[dataset](batch_size=256, num_workers=0, seed=seed, canvas_size=CANVAS_SIZE,
                                   num_distractors=NUM_DISTRACTORS, download=False)
    datamodule.setup("test")
    loader = datamodule.test_dataloader()
    # Lightning's convention: a fraction of the batches when written with a point, else a count.
    num_batches = max(1, int(float(limit_batches) * len(loader))) if "." in limit_batches else int(limit_batches)
    return itertools.islice(loader, num_batches)


@torch.no_grad()
def hit_rate(checkpoint_path: Path, dataset: str, seed: int, limit_batches: str) -> float:
    """Final-glimpse hit rate of a RAM checkpoint on the test canvases of ``dataset`` (policy mean)."""
    checkpoint = load_checkpoint(checkpoint_path)
    # LightningCLI adds its own keys (``_class_path``) to the saved hyperparameters.
    module = RAMModule(**{k: v for k, v in checkpoint["hyper_parameters"].items() if not k.startswith("_")})
    module.load_state_dict(checkpoint["state_dict"])
    module.eval()
    hits, count = 0.0, 0
    for images, _, boxes in test_batches(dataset, seed, limit_batches):
        _, trajectory = module.model(images, return_trajectory=True)
        hits += final_glimpse_hit_rate(trajectory, boxes, images.shape[-2:]) * len(images)
        count += len(images)
    return hits / count


def centre_hit_rate(dataset: str, seed: int, limit_batches: str) -> float:
    """The floor for the hit rate: how often the canvas centre itself lies in the object's box."""
    boxes = torch.cat([batch[2] for batch in test_batches(dataset, seed, limit_batches)]).float()
    centre = CANVAS_SIZE / 2
    return ((boxes[:, :2] <= centre) & (boxes[:, 2:] > centre)).all(1).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write the table to")
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--conv-epochs", type=int, help="epochs of the conv baseline (default: --epochs; 0: no conv row)")
    parser.add_argument("--conv-models", nargs="*", default=list(CONV_CONFIGS), choices=list(CONV_CONFIGS),
                        help="conv baselines to train beside the RAM (none: no conv row)")
    parser.add_argument("--conv-width", type=int, default=64, help="convnet2's; 64: about as many parameters as ram_60")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--glimpses", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--num-scales", type=int, default=3, help="patches per glimpse (the paper's 60×60: 3)")
    parser.add_argument("--core", default="rnn", choices=["rnn", "lstm", "gru"],
                        help="the RAM's core (the paper's: rnn, a ReLU RNN)")
    parser.add_argument("--reuse-finished", action="store_true",
                        help="read rows whose run already logged a test result instead of training them again")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--limit-train-batches", default="1.0", help="Lightning's limit_train_batches")
    parser.add_argument("--limit-eval-batches", default="1.0", help="limit_val_batches and limit_test_batches")
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--jobs", type=int, default=1, help="train.py runs at once, sharing the CPU cores")
    args = parser.parse_args()
    if args.jobs < 1 or args.num_scales < 1 or (args.conv_epochs is not None and args.conv_epochs < 0):
        parser.error(f"--jobs and --num-scales must be ≥ 1 and --conv-epochs ≥ 0; got --jobs {args.jobs}, "
                     f"--num-scales {args.num_scales}, --conv-epochs {args.conv_epochs}")

    datasets = [name for name in args.datasets if dataset_found(name)]
    skipped = sorted(set(args.datasets) - set(datasets))
    env, parallel = split_threads(args.jobs)
    jobs = [(dataset, seed, *run) for dataset in datasets for seed in args.seeds
            for run in runs(args.glimpses, args.num_scales, args.core, args.conv_models, args.conv_width)
            if run[2].startswith("ram") or args.conv_epochs != 0]

    def train(job: tuple) -> str:
        dataset, seed, label, config, model, model_kwargs = job
        epochs = args.epochs if model.startswith("ram") or args.conv_epochs is None else args.conv_epochs
        run_name = f"ram_results_{dataset}_{model}_{'_'.join(map(str, model_kwargs.values()))}_s{seed}"
        overrides = [
            "--config", config, "--seed_everything", str(seed), "--data.init_args.seed", str(seed),
            "--data.class_path", f"cvattn.data.{DATASETS[dataset].__name__}",
            "--model.init_args.model_kwargs", json.dumps(model_kwargs),
            "--trainer.max_epochs", str(epochs),
            "--trainer.limit_train_batches", args.limit_train_batches,
            "--trainer.limit_val_batches", args.limit_eval_batches,
            "--trainer.limit_test_batches", args.limit_eval_batches,
            "--trainer.accelerator", args.accelerator, "--trainer.enable_progress_bar", "false",
            "--data.init_args.num_workers", str(args.num_workers),
            "--trainer.logger.init_args.name", run_name,
        ]
        print("$ python train.py", " ".join(overrides), flush=True)
        run_dir = finished_run(run_name) if args.reuse_finished else None
        if run_dir is None:
            subprocess.run([sys.executable, "train.py", *overrides], cwd=ROOT, check=True, env=env,
                           stdout=subprocess.DEVNULL if args.jobs > 1 else None)
            run_dir = newest_run(run_name)
        else:
            print(f"reusing {run_dir.relative_to(ROOT)}", flush=True)
        error = 100 * (1 - test_accuracy(run_dir))
        on_object = "—"
        if model.startswith("ram"):
            on_object = f"{100 * hit_rate(best_checkpoint(run_dir), dataset, seed, args.limit_eval_batches):.1f}"
        params = sum(p.numel() for p in create_model(model, num_classes=10, in_chans=1, **model_kwargs).parameters())
        row = (f"| {dataset} | {label} | {params:,} | {error:.2f} | {on_object} | {epochs} | {seed} "
               f"| {wall_minutes(run_dir):.1f} |")
        print(row, flush=True)
        return row

    # Most glimpses first (the longest runs), so that parallel jobs end close together; the table keeps its order.
    order = sorted(range(len(jobs)), key=lambda i: -jobs[i][5].get("num_glimpses", 0))
    with ThreadPoolExecutor(args.jobs) as pool:
        done = dict(zip(order, pool.map(train, [jobs[i] for i in order])))
    rows = [done[i] for i in range(len(jobs))]

    lines = [
        f"Cluttered {CANVAS_SIZE}×{CANVAS_SIZE} canvases, {NUM_DISTRACTORS} distractors of 8×8; "
        f"limit_train_batches={args.limit_train_batches}, limit_val/test_batches={args.limit_eval_batches}; "
        f"hardware: {hardware(args.accelerator)}"
        + parallel
        + f"; torch {torch.__version__}.",
        f"Command: `python bench/ram_results.py {' '.join(sys.argv[1:])}`. Configs: `{RAM_CONFIG}`, "
        + ", ".join(f"`{CONV_CONFIGS[name]}`" for name in args.conv_models) + ".",
        "Paper (Mnih et al. 2014, cluttered 60×60 MNIST): RAM 8 glimpses 4.04%, conv baseline 8.09%, "
        "8 random glimpses 14.4% error.",
    ]
    for dataset in datasets:
        lines.append(f"{dataset}: the canvas centre lies in the object's box in "
                     f"{100 * centre_hit_rate(dataset, args.seeds[0], args.limit_eval_batches):.1f}% of the test "
                     "canvases (a model that always looks at the centre scores that on the glimpse column).")
    if skipped:
        lines.append(f"Not run (dataset files not found): {', '.join(skipped)}.")
    lines += [
        "",
        "| data | model | params | test error (%) | last glimpse on object (%) | epochs | seed | wall (min) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
