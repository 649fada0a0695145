"""Forward+backward time of each cvattn attention block against timm's equivalent, in one run.

    python bench/bench_blocks.py [--batch 64 --channels 64 --size 32 --repeats 30 --device cpu]
    python bench/bench_blocks.py --share [--batch 32 --size 100 --width 16 --repeats 5] [--blocks bam triplet]

Prints the median time of both and the ratio timm/cvattn (≥ 1.0 means cvattn is no slower). The two sides run
interleaved on the same input, alternating which goes first, so that machine noise hits both alike. Blocks timm
lacks (BAM, triplet attention) get a cvattn time only. A block whose attention matrix would not fit (non-local at
large sizes: (B, H·W, H·W) floats) is skipped with the reason.

``--share``: the median time of one training step (forward, backward, SGD step) of the ConvNet (``convnet2``,
``width``, one input channel) with each block as its ``attn_layer``, and the block's share of that step,
1 − plain / with block. ``--blocks st``: the same for a spatial transformer in front of the ConvNet
(``st_convnet2``), e.g. ``--share --blocks st --size 42``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm.layers
import timm.layers.cbam
import timm.layers.coord_attn
import torch
import torch.nn.functional as F

import cvattn
from cvattn.layers import create_attn

PAIRS = {
    "se_timm": lambda c: timm.layers.SEModule(c),
    "eca": lambda c: timm.layers.EcaModule(c),
    "channel_timm": lambda c: timm.layers.cbam.ChannelAttn(c),
    "spatial_timm": lambda c: timm.layers.cbam.SpatialAttn(),
    "cbam_timm": lambda c: timm.layers.cbam.CbamModule(c),
    "ese": lambda c: timm.layers.EffectiveSEModule(c),
    "ceca": lambda c: timm.layers.CecaModule(c),
    "ge": lambda c: timm.layers.GatherExcite(c, use_mlp=False),   # timm 1.0.31 cannot build use_mlp=True
    "gc_timm": lambda c: timm.layers.GlobalContext(c),
    "gca_timm": lambda c: timm.layers.GlobalContext(c, fuse_add=True, fuse_scale=False),
    "coord_timm": lambda c: timm.layers.coord_attn.CoordAttn(c),
    "nl_timm": lambda c: timm.layers.NonLocalAttn(c),
    "sk_timm": lambda c: timm.layers.SelectiveKernel(c),
    "lcbam": lambda c: timm.layers.cbam.LightCbamModule(c),
    "bam": None,        # timm has no BAM
    "triplet": None,    # nor triplet attention
}
MAX_ATTENTION_BYTES = 2 ** 31   # skip a non-local block whose (B, N, N) attention would pass 2 GiB


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


def median_ms(fn, repeats: int) -> float:
    for _ in range(2):
        fn()
    return 1e3 * statistics.median(fn() for _ in range(repeats))


def make_training_step(model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor):
    """A function that runs one training step and returns its time in seconds."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

    def step() -> float:
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), target).backward()
        optimizer.step()
        if x.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start
    return step


def shares(args) -> None:
    x = torch.randn(args.batch, 1, args.size, args.size, device=args.device)
    target = torch.randint(0, 10, (args.batch,), device=args.device)
    print(f"convnet2 width {args.width}, input {tuple(x.shape)} on {args.device}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}; training step = forward + backward + SGD step")
    print(f"{'attn_layer':<14}{'plain ms':>10}{'with ms':>10}{'block share':>13}")

    def convnet(attn_layer: str) -> torch.nn.Module:
        return cvattn.create_model("convnet2", num_classes=10, in_chans=1, width=args.width,
                                   attn_layer=attn_layer).to(args.device).train()

    plain_step = make_training_step(convnet("none"), x, target)
    for name in args.blocks:
        positions = args.size * args.size
        if name.startswith("nl") and 4 * args.batch * positions ** 2 > MAX_ATTENTION_BYTES:
            print(f"{name:<14}skipped: its attention would be {args.batch}×{positions}×{positions} floats")
            continue
        model = (cvattn.create_model("st_convnet2", num_classes=10, in_chans=1, width=args.width).to(args.device)
                 if name == "st" else convnet(name))
        block_step = make_training_step(model.train(), x, target)
        plain_step(), block_step()
        plain_times, block_times = [], []
        for repeat in range(args.repeats):   # interleaved, alternating which goes first, as in main()
            first, second = (plain_step, block_step) if repeat % 2 else (block_step, plain_step)
            a, b = first(), second()
            plain_times.append(a if first is plain_step else b)
            block_times.append(b if first is plain_step else a)
        plain_ms, block_ms = 1e3 * statistics.median(plain_times), 1e3 * statistics.median(block_times)
        print(f"{name:<14}{plain_ms:>10.1f}{block_ms:>10.1f}{1 - plain_ms / block_ms:>12.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--share", action="store_true", help="each block's share of a ConvNet training step")
    parser.add_argument("--width", type=int, default=16, help="ConvNet width for --share")
    parser.add_argument("--blocks", nargs="+", choices=[*PAIRS, "st"], default=list(PAIRS),
                        help="rows to run ('st': a spatial transformer in front, --share only)")
    args = parser.parse_args()
    if args.share:
        return shares(args)
    torch.manual_seed(0)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=args.device, requires_grad=True)
    print(f"input {tuple(x.shape)} on {args.device}, torch {torch.__version__}, threads {torch.get_num_threads()}")
    print(f"{'block':<14}{'cvattn ms':>11}{'timm ms':>11}{'timm/cvattn':>13}")
    for name in args.blocks:
        if name == "st":
            print(f"{name:<14}an input-side transformer, not a block: its cost is measured with --share")
            continue
        make_timm = PAIRS[name]
        positions = args.size * args.size
        if name.startswith("nl") and 4 * args.batch * positions ** 2 > MAX_ATTENTION_BYTES:
            print(f"{name:<14}skipped: its attention would be {args.batch}×{positions}×{positions} floats")
            continue
        ours = create_attn(name, args.channels).to(args.device).train()
        if make_timm is None:
            ours_ms = median_ms(lambda: step_time(ours, x), args.repeats)
            print(f"{name:<14}{ours_ms:>11.3f}{'-':>11}{'-':>13}")
            continue
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
