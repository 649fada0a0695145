"""Speed of cvattn's ViT against timm's ``VisionTransformer``, and the cost of reading the attention.

For each configuration, in one run:
(a) a training step (forward, cross-entropy, backward, AdamW) of cvattn's ViT and of timm's model of the same
    configuration and weights; target: timm_time / cvattn_time ≥ 1.0;
(b) ``forward_attention(x)`` (every layer's maps) against the fused ``forward(x)`` in eval mode without
    gradients; target: forward_attention / forward ≤ 1.3.
The two sides run back to back in rounds (A B, then B A, ...); each round gives one ratio, and the median of those
ratios is reported: a slow phase of a shared machine then hits both sides of a ratio alike.

    python bench/bench_vit.py                  # CPU: vit_tiny_patch4_28 at batch 128, vit_tiny_patch16_224 at 8
    python bench/bench_vit.py --device cuda --warmup 5 --rounds 30 --batches 512 256 --autocast bfloat16
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer as TimmViT

from cvattn.models.vit import VisionTransformer

# (name, batch size, rounds, constructor arguments understood by both implementations); the cheaper case gets more
# rounds for a steadier median within the same two minutes on one CPU core.
CASES = [
    ("vit_tiny_patch4_28", 128, 5,
     dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=192, depth=12, num_heads=3)),
    ("vit_tiny_patch16_224", 8, 11,
     dict(img_size=224, patch_size=16, in_chans=3, num_classes=1000, embed_dim=192, depth=12, num_heads=3)),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(baseline: Callable[[], object], other: Callable[[], object], warmup: int, rounds: int,
            device: torch.device) -> tuple[float, float, float]:
    """(median seconds of ``baseline``, median seconds of ``other``, median over rounds of other / baseline)."""
    times: tuple[list[float], list[float]] = ([], [])
    for round_ in range(warmup + rounds):
        order = (0, 1) if round_ % 2 == 0 else (1, 0)
        for index in order:
            _sync(device)
            start = time.perf_counter()
            (baseline, other)[index]()
            _sync(device)
            if round_ >= warmup:
                times[index].append(time.perf_counter() - start)
    ratios = [b / a for a, b in zip(*times)]
    return statistics.median(times[0]), statistics.median(times[1]), statistics.median(ratios)


def training_step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=None, help="rounds per case (default: 5 and 11 on CPU)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 by default because on a machine shared with other work, threads "
                             "waiting for each other time the scheduler rather than the model")
    parser.add_argument("--batches", type=int, nargs=len(CASES), default=None, metavar="N",
                        help="batch size of each case (default: %s); a GPU needs larger ones to be measured rather "
                             "than its kernel launches" % " ".join(str(case[1]) for case in CASES))
    parser.add_argument("--autocast", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16: run both models under torch.autocast, as mixed-precision training does")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} CPU threads, "
          f"{args.warmup} warm-up round(s), autocast {args.autocast}; medians")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.autocast == "bfloat16")

    for case_index, (name, batch, rounds, config) in enumerate(CASES):
        rounds = args.rounds or rounds
        batch = args.batches[case_index] if args.batches else batch
        torch.manual_seed(0)
        ours = VisionTransformer(**config).to(device)
        theirs = TimmViT(**config).to(device)
        ours.load_state_dict(theirs.state_dict())
        images = torch.randn(batch, config["in_chans"], config["img_size"], config["img_size"], device=device)
        labels = torch.randint(0, config["num_classes"], (batch,), device=device)

        ours.train(), theirs.train()
        with autocast:
                t_ours, t_timm, ratio = compare(training_step(ours, images, labels),
                                            training_step(theirs, images, labels), args.warmup, rounds, device)
        print(f"{name} batch {batch}, {rounds} rounds, train step: cvattn {t_ours * 1e3:.1f} ms, timm {t_timm * 1e3:.1f} ms, "
              f"timm/cvattn {ratio:.3f} (target >= 1.0)")

        ours.eval()
        with torch.no_grad(), autocast:
            t_forward, t_attention, ratio = compare(lambda: ours(images), lambda: ours.forward_attention(images),
                                                    args.warmup, rounds, device)
        print(f"{name} batch {batch}, {rounds} rounds, inference: forward {t_forward * 1e3:.1f} ms, forward_attention "
              f"{t_attention * 1e3:.1f} ms, forward_attention/forward {ratio:.3f} (target <= 1.3)")


if __name__ == "__main__":
    main()
