"""Images/s of the Fashion-MNIST training loader against images/s of a ResNet-20 training step, in one run.

    python bench/bench_dataloader.py [--batches 100 --steps 10 --batch-size 128 --device auto]

Loaders: the default workers with a typical albumentations pipeline (flip + affine), and the same on a 60×60
cluttered canvas with 4 distractors. Anchor: forward + backward + SGD step of
``create_model("resnet20", num_classes=10, in_chans=1)`` on 28×28 inputs of the same batch size (the cheapest
input, so the stricter anchor for the canvas). Prints both rates and loader/step; the target is ≥ 2, i.e. the
loader can feed training twice over. Loader rates are taken after a warm-up that starts the workers and drains
their prefetched batches.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import cvattn
from cvattn.data import FashionMNISTDataModule

AUGMENT = [{"name": "HorizontalFlip", "p": 0.5}, {"name": "Affine", "translate_percent": [-0.1, 0.1]}]
LOADERS = {
    "flip+affine 28x28": {},
    "flip+affine canvas 60, 4 distractors": {"canvas_size": 60, "num_distractors": 4},
}
WARMUP_BATCHES = 10


def loader_rate(datamodule: FashionMNISTDataModule, batches: int) -> float:
    datamodule.setup("fit")
    iterator = iter(datamodule.train_dataloader())
    for _ in range(WARMUP_BATCHES):
        next(iterator)
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        images += len(next(iterator)[0])
    return images / (time.perf_counter() - start)


def step_rate(batch_size: int, steps: int, device: str) -> float:
    model = cvattn.create_model("resnet20", num_classes=10, in_chans=1).to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch_size, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (batch_size,), device=device)
    times = []
    for step in range(steps + 2):  # the first two steps warm up allocators and kernels
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=100, help="timed loader batches per configuration")
    parser.add_argument("--steps", type=int, default=10, help="timed training steps (median)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=None, help="default: the datamodule's default")
    parser.add_argument("--device", default="auto", help="device of the training step: auto, cpu or cuda")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    workers = {} if args.num_workers is None else {"num_workers": args.num_workers}

    step = step_rate(args.batch_size, args.steps, device)
    datamodules = {name: FashionMNISTDataModule(batch_size=args.batch_size, train_transforms=AUGMENT,
                                                **workers, **extra) for name, extra in LOADERS.items()}
    num_workers = next(iter(datamodules.values())).num_workers
    print(f"torch {torch.__version__}, step on {device} ({torch.get_num_threads()} threads), "
          f"batch {args.batch_size}, loader workers {num_workers}")
    print(f"resnet20 training step (28x28): {step:9.0f} img/s")
    print(f"{'loader':<40}{'img/s':>9}{'loader/step':>13}")
    for name, datamodule in datamodules.items():
        rate = loader_rate(datamodule, args.batches)
        print(f"{name:<40}{rate:>9.0f}{rate / step:>13.2f}")


if __name__ == "__main__":
    main()
