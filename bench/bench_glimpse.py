"""Batched glimpse sensor vs a per-image Python loop (the target: ≥ 20× faster).

Batch 128 of 60×60 one-channel images, g=12, k=3 (the ram_60 sensor). The reference crops each patch from a
padded copy of each image and area-resizes it, one image and one scale at a time, patch i placed on the 2^i-pixel
grid nearest the centre as the sensor does. Locations are random, some near or past the borders; the script checks that both compute the
same glimpses (which also warms both up) before timing. The sensor is timed as it is (eager) and compiled with
``torch.compile`` (one fused kernel, as in a model compiled by the user). All run interleaved, on one CPU thread
(timed by its CPU time) or on a GPU, and the medians of the repeats are compared.

    python bench/bench_glimpse.py [--threads 1] [--repeats 20] [--device cpu]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from cvattn.models.ram import GlimpseSensor


def loop_glimpse(x: torch.Tensor, loc: torch.Tensor, glimpse_size: int, num_scales: int,
                 pad_value: float) -> torch.Tensor:
    """(B, k, C, g, g) glimpses cut one image and one scale at a time; patch i starts at the multiple of 2^i
    nearest to its centre minus half its width (the sensor's rule)."""
    _, _, height, width = x.shape
    centres = ((loc + 1) * loc.new_tensor([width, height]) / 2).tolist()   # in float32, as the sensor computes them
    glimpses = []
    for image, (cx, cy) in zip(x, centres):
        patches = []
        for i in range(num_scales):
            size = glimpse_size * 2 ** i
            x0 = round(cx / 2 ** i - glimpse_size / 2) * 2 ** i
            y0 = round(cy / 2 ** i - glimpse_size / 2) * 2 ** i
            padded = F.pad(image, (size, size, size, size), value=pad_value)
            crop = padded[:, y0 + size:y0 + 2 * size, x0 + size:x0 + 2 * size]
            patches.append(F.interpolate(crop[None], size=(glimpse_size, glimpse_size), mode="area")[0])
        glimpses.append(torch.stack(patches))
    return torch.stack(glimpses)


def seconds(fn, device: torch.device) -> float:
    """Wall time on a GPU; on the CPU this thread's CPU time, which time slices given to other processes on a
    busy machine do not inflate (both sides run on this one thread)."""
    if device.type == "cuda":
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - start
    start = time.thread_time()
    fn()
    return time.thread_time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)

    batch, size, glimpse_size, num_scales, pad_value = 128, 60, 12, 3, -0.42
    x = torch.randn(batch, 1, size, size, device=device)
    loc = (torch.rand(batch, 2, device=device) * 2.3 - 1.15)
    sensor = GlimpseSensor(glimpse_size, num_scales, in_chans=1, pad_value=pad_value).to(device)
    compiled_sensor = torch.compile(sensor, dynamic=False)

    def batched() -> torch.Tensor:
        return sensor(x, loc)

    def compiled() -> torch.Tensor:
        return compiled_sensor(x, loc)

    def loop() -> torch.Tensor:
        return loop_glimpse(x, loc, glimpse_size, num_scales, pad_value)

    with torch.no_grad():
        reference = loop()
        error = max((batched() - reference).abs().max().item(), (compiled() - reference).abs().max().item())
        if error > 1e-5:
            raise SystemExit(f"batched and loop glimpses differ by {error:.2e}")
        times = [(seconds(loop, device), seconds(batched, device), seconds(compiled, device))
                 for _ in range(args.repeats)]
    loop_time, batched_time, compiled_time = (statistics.median(column) for column in zip(*times))

    print(f"glimpse sensor, batch {batch}, {size}×{size}, g={glimpse_size}, k={num_scales}, {device}, "
          f"{args.threads} thread(s), torch {torch.__version__}; max |difference| {error:.1e}")
    print(f"per-image loop:    {loop_time * 1e3:8.2f} ms")
    print(f"batched:           {batched_time * 1e3:8.2f} ms   speed-up {loop_time / batched_time:5.1f}× (target ≥ 20×)")
    print(f"batched, compiled: {compiled_time * 1e3:8.2f} ms   speed-up {loop_time / compiled_time:5.1f}×")


if __name__ == "__main__":
    main()
