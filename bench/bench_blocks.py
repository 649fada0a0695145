"""Forward+backward time of each cvattn attention block against timm's equivalent, in one run.

    python bench/bench_blocks.py [--batch 64 --channels 64 --size 32 --repeats 30 --device cpu]

Prints the median time of both and the ratio timm/cvattn (≥ 1.0 means cvattn is no slower). The two sides run
interleaved on the same input, alternating which goes first, so that machine noise hits both alike.
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm.layers
import timm.layers.cbam
import torch

from cvattn.layers import create_attn

PAIRS = {
    "se_timm": lambda c: timm.layers.SEModule(c),
    "eca": lambda c: timm.layers.EcaModule(c),
    "channel_timm": lambda c: timm.layers.cbam.ChannelAttn(c),
    "spatial_timm": lambda c: timm.layers.cbam.SpatialAttn(),
    "cbam_timm": lambda c: timm.layers.cbam.CbamModule(c),
}


def step_time(module: torch.nn.Module, x: torch.Tensor) -> float:
    if x.grad is not None:
        x.grad = None
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    module(x).sum().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=args.device, requires_grad=True)
    print(f"input {tuple(x.shape)} on {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'block':<14}{'cvattn ms':>11}{'timm ms':>11}{'timm/cvattn':>13}")
    for name, make_timm in PAIRS.items():
        ours = create_attn(name, args.channels).to(args.device).train()
        theirs = make_timm(args.channels).to(args.device).train()
        theirs.load_state_dict(ours.state_dict())
        for _ in range(3):
            step_time(ours, x), step_time(theirs, x)
        ours_times, timm_times = [], []
        for repeat in range(args.repeats):
            # Alternate which side runs first, so that cache and allocator effects favour neither.
            if repeat % 2:
                timm_times.append(step_time(theirs, x))
                ours_times.append(step_time(ours, x))
            else:
                ours_times.append(step_time(ours, x))
                timm_times.append(step_time(theirs, x))
        ours_ms, timm_ms = 1e3 * statistics.median(ours_times), 1e3 * statistics.median(timm_times)
        print(f"{name:<14}{ours_ms:>11.3f}{timm_ms:>11.3f}{timm_ms / ours_ms:>13.2f}")


if __name__ == "__main__":
    main()
