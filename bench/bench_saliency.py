"""Speed of cvattn's Grad-CAM against pytorch-grad-cam's ``GradCAM`` and Captum's ``LayerGradCam``.

One model (timm ``resnet50``, random weights, eval mode), one batch, layer ``layer4``; each side explains the
predicted class of every image and returns (B, H, W) maps in [0, 1] at the input's size:
- cvattn: ``saliency(model, images, 'gradcam', layer='layer4')``;
- pytorch-grad-cam: ``with GradCAM(model, [model.layer4]) as cam: cam(images, None)`` (numpy maps);
- Captum: the predicted classes from a forward without gradients, ``LayerGradCam(...).attribute(...,
  relu_attributions=True)``, bilinear ``LayerAttribution.interpolate``, per-image min-max.
With ``--given-class`` every side is handed the classes instead (no side needs its own prediction).
Target: theirs / cvattn ≥ 1.0 for both. The sides run back to back in rounds, in a rotating order; each round
gives one ratio per library, and the median and the range of those ratios are reported (a slow phase of a shared
machine then hits both sides of a ratio alike). Also printed: the largest difference between the maps (after
each library's own normalisation), whether a side left ``.grad`` on the parameters, and on CUDA the peak memory.

    python bench/bench_saliency.py                              # CPU, batch 8 at 224 px, 1 thread, 5 rounds
    python bench/bench_saliency.py --device cuda --batch 8 --rounds 20 --warmup 3
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from cvattn.saliency import saliency
from cvattn.saliency.runtime import normalise


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sides(model: nn.Module, images: torch.Tensor, given: torch.Tensor | None) -> dict[str, Callable[[], object]]:
    """name -> a call returning (B, H, W) maps in [0, 1] on the CPU."""
    layer = model.layer4

    def cvattn_gradcam():
        return saliency(model, images, "gradcam", target=given, layer="layer4").cpu()

    def pytorch_grad_cam():
        targets = None if given is None else [ClassifierOutputTarget(int(t)) for t in given]
        with GradCAM(model, [layer]) as cam:
            return torch.from_numpy(cam(images, targets))

    def captum():
        targets = given
        if targets is None:
            with torch.no_grad():
                targets = model(images).argmax(1)
        maps = LayerGradCam(model, layer).attribute(images, target=targets, relu_attributions=True)
        maps = LayerAttribution.interpolate(maps, tuple(images.shape[-2:]), interpolate_mode="bilinear")
        return normalise(maps.detach()[:, 0]).cpu()

    return {"cvattn": cvattn_gradcam, "pytorch-grad-cam": pytorch_grad_cam, "captum": captum}


def measure(calls: dict[str, Callable[[], object]], warmup: int, rounds: int,
            device: torch.device) -> dict[str, list[float]]:
    """Seconds per call of every side, ``rounds`` of them after ``warmup`` rounds, in a rotating order."""
    names = list(calls)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            _sync(device)
            start = time.perf_counter()
            calls[name]()
            _sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def side_effects(model: nn.Module, call: Callable[[], object], device: torch.device) -> tuple[bool, float | None]:
    """(whether ``call`` left ``.grad`` on a parameter, its peak CUDA memory in GiB or None on the CPU)."""
    model.zero_grad(set_to_none=True)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    call()
    _sync(device)
    peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30 if device.type == "cuda" else None
    wrote_grad = any(p.grad is not None for p in model.parameters())
    model.zero_grad(set_to_none=True)
    return wrote_grad, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 by default: on a machine shared with other work, threads waiting "
                             "for each other time the scheduler rather than the method")
    parser.add_argument("--given-class", action="store_true",
                        help="hand every side the classes to explain instead of the predicted ones")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    torch.manual_seed(0)
    model = timm.create_model("resnet50").to(device).eval()
    images = torch.randn(args.batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(0)).to(device)
    given = None
    if args.given_class:
        with torch.no_grad():
            given = model(images).argmax(1)
    calls = sides(model, images, given)

    maps = {name: call() for name, call in calls.items()}
    effects = {name: side_effects(model, call, device) for name, call in calls.items()}
    times = measure(calls, args.warmup, args.rounds, device)
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"Grad-CAM, timm resnet50 (random weights), layer4, batch {args.batch} at {args.size} px, {hardware}, "
          f"{'given' if given is not None else 'predicted'} classes, {args.rounds} rounds after {args.warmup} warm-up")
    print(f"| side | median s | min-max s | theirs / cvattn (median, min-max over rounds) | max |map - cvattn| "
          f"| writes .grad | peak CUDA GiB |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in calls:
        ratios = [theirs / ours for theirs, ours in zip(times[name], times["cvattn"])]
        ratio = "" if name == "cvattn" else f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
        difference = (maps[name].float() - maps["cvattn"]).abs().max().item()
        wrote_grad, peak = effects[name]
        print(f"| {name} | {statistics.median(times[name]):.3f} | {min(times[name]):.3f}-{max(times[name]):.3f} | "
              f"{ratio} | {difference:.1e} | {'yes' if wrote_grad else 'no'} | "
              f"{'n/a' if peak is None else f'{peak:.2f}'} |")


if __name__ == "__main__":
    main()
