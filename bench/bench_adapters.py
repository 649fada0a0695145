"""The cost of reading a timm ViT's attention through ``cvattn.saliency.adapters``.

For each configuration, in one run, on the same weights, eval mode, no gradients:
(a) the attention view's ``forward_attention(x)`` (fused attention switched off for one forward, the softmax read
    by hooks) against timm's own fused ``forward(x)``; target: forward_attention / forward ≤ 1.3;
(b) the anchor: cvattn's ``VisionTransformer.forward_attention`` holding the same weights against the view's, so a
    slow machine shows as both sides slowing alike; expected ratio ≈ 1.
The sides run back to back in rounds (A B, then B A, ...); each round gives one ratio; the median of those ratios
is reported with their range (min–max).

    python bench/bench_adapters.py                    # CPU: vit_tiny_patch16_224 and vit_small_patch16_224, batch 8
    python bench/bench_adapters.py --device cuda --rounds 30 --batch 256
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import timm
import torch

from cvattn.models.vit import VisionTransformer
from cvattn.saliency.adapters import adapt

# (timm name, cvattn constructor arguments of the same configuration)
CASES = [
    ("vit_tiny_patch16_224", dict(img_size=224, patch_size=16, embed_dim=192, depth=12, num_heads=3)),
    ("vit_small_patch16_224", dict(img_size=224, patch_size=16, embed_dim=384, depth=12, num_heads=6)),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def ratios(baseline: Callable[[], object], other: Callable[[], object], warmup: int, rounds: int,
           device: torch.device) -> tuple[float, float, list[float]]:
    """(median seconds of ``baseline``, median seconds of ``other``, per-round ratios other / baseline)."""
    times: tuple[list[float], list[float]] = ([], [])
    for round_ in range(warmup + rounds):
        for index in ((0, 1) if round_ % 2 == 0 else (1, 0)):
            _sync(device)
            start = time.perf_counter()
            (baseline, other)[index]()
            _sync(device)
            if round_ >= warmup:
                times[index].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1]), [b / a for a, b in zip(*times)]


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (range {min(values):.3f}–{max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 by default: on a shared machine, threads waiting for each other "
                             "time the scheduler rather than the model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, timm {timm.__version__}, device {device}, {torch.get_num_threads()} CPU "
          f"threads, batch {args.batch}, {args.rounds} rounds after {args.warmup} warm-up")

    for name, config in CASES:
        torch.manual_seed(0)
        theirs = timm.create_model(name, pretrained=False).to(device).eval()
        ours = VisionTransformer(**config).to(device).eval()
        ours.load_state_dict(theirs.state_dict())
        view = adapt(theirs)
        images = torch.randn(args.batch, 3, 224, 224, device=device)
        with torch.no_grad():
            t_fused, t_view, view_over_fused = ratios(lambda: theirs(images), lambda: view.forward_attention(images),
                                                      args.warmup, args.rounds, device)
            _, t_ours, ours_over_view = ratios(lambda: view.forward_attention(images),
                                               lambda: ours.forward_attention(images), args.warmup, args.rounds,
                                               device)
        assert all(block.attn.fused_attn for block in theirs.blocks)
        print(f"{name}: timm fused forward {t_fused * 1e3:.1f} ms, view forward_attention {t_view * 1e3:.1f} ms, "
              f"ratio {_summary(view_over_fused)} (target <= 1.3); anchor cvattn forward_attention "
              f"{t_ours * 1e3:.1f} ms, cvattn/view {_summary(ours_over_view)}")


if __name__ == "__main__":
    main()
