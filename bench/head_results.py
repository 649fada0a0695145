"""Attention-pooling heads against global average pooling on Fashion-MNIST, one short fixed recipe.

    OMP_NUM_THREADS=1 python bench/head_results.py train --runs gap attn:scaled_dot ... --results head_results.json
    OMP_NUM_THREADS=1 python bench/head_results.py bench [--steps 20]     # cost per training step, head vs GAP
    python bench/head_results.py table --results head_results.json       # the markdown table

Recipe (the same for every run): ``convnet2`` of ``--width`` channels (its two conv blocks are the backbone), one
head on the last map: global average pooling (``gap``, the plain ``convnet2``) or an attention-pooling head
``attn`` (one shared query), ``class_attn`` (one query per class), ``local_p`` (Luong's local-p window) with a
score function (``head:score``); the first ``--train-images`` of the 60 000 training images in a fixed shuffle
(seed 0), no augmentation, normalised by the dataset's mean and std; AdamW (lr 2e-3, weight decay 0.05), cosine
decay over the run's steps, batch 128, ``--epochs`` epochs, bf16 autocast (``--precision bf16``); accuracy on the
full 10 000-image test set. ``--seed`` sets the initial weights and the batch order. Each run appends one JSON line
to ``--results``; nothing is overwritten; ``table`` gives each run's accuracy per seed and their mean.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

import cvattn
from cvattn.data.idx import read_idx
from cvattn.data.mnist import FashionMNISTDataModule

RUNS = ["gap", "attn:dot", "attn:scaled_dot", "attn:general", "attn:additive", "class_attn:scaled_dot",
        "local_p:scaled_dot"]
HEAD_MODELS = {"attn": "attnpool_convnet2", "class_attn": "classattn_convnet2", "local_p": "localp_convnet2"}


def build(run: str, width: int) -> torch.nn.Module:
    """``gap`` → convnet2; ``head:score`` → that head on convnet2 with that score."""
    if run == "gap":
        return cvattn.create_model("convnet2", width=width)
    head, _, score = run.partition(":")
    if head not in HEAD_MODELS:
        raise SystemExit(f"error: unknown run {run!r}; use 'gap' or head:score with head in {list(HEAD_MODELS)}.")
    return cvattn.create_model(HEAD_MODELS[head], width=width, score=score or "scaled_dot")


def load(data_dir: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images (N, 1, 28, 28) and labels (N,) of ``split`` ('train' or 't10k')."""
    images = torch.from_numpy(read_idx(data_dir / f"{split}-images-idx3-ubyte.gz").copy()).float() / 255
    labels = torch.from_numpy(read_idx(data_dir / f"{split}-labels-idx1-ubyte.gz").copy()).long()
    mean, std = FashionMNISTDataModule.dataset_mean[0], FashionMNISTDataModule.dataset_std[0]
    return ((images - mean) / std)[:, None], labels


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()


def train_step(model, optimizer, images, labels, precision: str) -> float:
    with autocast(precision):
        loss = F.cross_entropy(model(images), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def train(run: str, args) -> dict:
    torch.manual_seed(args.seed)                                                      # the initial weights
    images, labels = load(args.data_dir, "train")
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:args.train_images]
    images, labels = images[order], labels[order]
    model = build(run, args.width)
    steps = args.epochs * math.ceil(len(images) / args.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    model.train()
    start, start_cpu = time.perf_counter(), time.process_time()
    for epoch in range(args.epochs):
        shuffle = torch.Generator().manual_seed(1000 * args.seed + epoch)
        batches = torch.randperm(len(images), generator=shuffle).split(args.batch_size)
        for batch in batches:
            loss = train_step(model, optimizer, images[batch], labels[batch], args.precision)
            scheduler.step()
    train_s, train_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    test_images, test_labels = load(args.data_dir, "t10k")
    model.eval()
    correct = 0
    with torch.no_grad(), autocast(args.precision):
        for batch in torch.arange(len(test_images)).split(500):
            correct += int((model(test_images[batch]).argmax(1) == test_labels[batch]).sum())
    return dict(run=run, width=args.width, epochs=args.epochs, train_images=len(images), precision=args.precision,
                seed=args.seed, test_acc=100 * correct / len(test_images), last_loss=loss,
                params=sum(p.numel() for p in model.parameters()), train_s=train_s, train_cpu_s=train_cpu_s,
                train_img_s=args.epochs * len(images) / train_s, threads=torch.get_num_threads(),
                cpu=platform.processor() or platform.machine(), date=time.strftime("%Y-%m-%d"),
                command=f"python bench/head_results.py train --runs {run} --width {args.width} --epochs {args.epochs} "
                        f"--train-images {args.train_images} --precision {args.precision} --seed {args.seed}")


def bench(args) -> list[dict]:
    """Median seconds per training step (batch ``--batch-size``) of every run's model, GAP measured in the same
    process and interleaved with the heads so load changes hit both alike."""
    torch.manual_seed(0)
    images, labels = torch.randn(args.batch_size, 1, 28, 28), torch.randint(0, 10, (args.batch_size,))
    models = {run: build(run, args.width).train() for run in RUNS}
    optimizers = {run: torch.optim.AdamW(m.parameters(), lr=1e-3) for run, m in models.items()}
    times = {run: [] for run in RUNS}
    for run in RUNS:                                                                 # warm-up
        train_step(models[run], optimizers[run], images, labels, args.precision)
    for _ in range(args.steps):
        for run in RUNS:
            start = time.perf_counter()
            train_step(models[run], optimizers[run], images, labels, args.precision)
            times[run].append(time.perf_counter() - start)
    gap = statistics.median(times["gap"])
    return [dict(run=run, step_ms=1000 * statistics.median(times[run]), ratio=statistics.median(times[run]) / gap)
            for run in RUNS]


def table(rows: list[dict], steps: list[dict] | None) -> str:
    """One line per run (in ``RUNS`` order): accuracy per seed and mean, parameters, training images per CPU second
    (the process's own CPU time, so other jobs on the machine do not count), and the step cost against GAP from
    ``bench``."""
    step = {row["run"]: row for row in steps or []}
    by_run: dict[str, list[dict]] = {}
    order = {run: index for index, run in enumerate(RUNS)}
    for row in sorted(rows, key=lambda row: (order.get(row["run"], len(RUNS)), row["seed"])):
        by_run.setdefault(row["run"], []).append(row)
    lines = ["| Head | Score | Test acc. (%) per seed | Mean | Params | Train img / CPU s | Step (ms) | Step / GAP |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run, runs in by_run.items():
        head, _, score = run.partition(":")
        accuracies = [row["test_acc"] for row in runs]
        timed = [row["train_images"] * row["epochs"] / row["train_cpu_s"] for row in runs if "train_cpu_s" in row]
        speed = f"{statistics.mean(timed):.0f}" if timed else "–"
        cost = step.get(run)
        cost = f"{cost['step_ms']:.0f} | {cost['ratio']:.2f}×" if cost else "– | –"
        lines.append(f"| {'GAP' if head == 'gap' else head} | {score or '–'} | "
                     f"{' / '.join(f'{a:.2f}' for a in accuracies)} | {statistics.mean(accuracies):.2f} | "
                     f"{runs[0]['params']:,} | {speed} | {cost} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["train", "bench", "table"])
    parser.add_argument("--runs", nargs="+", default=RUNS)
    parser.add_argument("--results", type=Path, default=Path("head_results.json"))
    parser.add_argument("--data-dir", type=Path, default=Path(FashionMNISTDataModule.system_dir))
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--seed", type=int, default=0, help="train: initial weights and batch order (the subset "
                        "of training images is the same for every seed)")
    parser.add_argument("--steps", type=int, default=20, help="bench: timed steps per model")
    args = parser.parse_args()
    if args.action == "train":
        for run in args.runs:
            build(run, args.width)                                                   # fail fast on a bad name
        for run in args.runs:
            row = train(run, args)
            print(json.dumps(row), flush=True)
            with open(args.results, "a") as file:
                file.write(json.dumps(row) + "\n")
    elif args.action == "bench":
        rows = bench(args)
        for row in rows:
            print(json.dumps(row), flush=True)
        with open(args.results.with_suffix(".bench.json"), "a") as file:
            file.write(json.dumps(dict(steps=rows, batch_size=args.batch_size, width=args.width,
                                       precision=args.precision, threads=torch.get_num_threads())) + "\n")
    else:
        rows = [json.loads(line) for line in open(args.results)]
        bench_file = args.results.with_suffix(".bench.json")
        steps = json.loads(bench_file.read_text().splitlines()[-1])["steps"] if bench_file.exists() else None
        print(table(rows, steps))
        print("\nCommands (each with OMP_NUM_THREADS=1):")
        for command in dict.fromkeys(row["command"] for row in rows):
            print(f"    {command}")
        if steps:
            print(f"    python bench/head_results.py bench --width {rows[0]['width']} --precision {rows[0]['precision']}")


if __name__ == "__main__":
    main()
