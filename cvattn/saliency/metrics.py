"""Does the map point at the object? Per-image scores for (B, H, W) maps and (B, 4) object boxes.

Boxes are ``(x0, y0, x1, y1)`` in pixels with exclusive ends (docs/design.md, "Batches"); pixel (row r, column c)
lies in the box when x0 ≤ c < x1 and y0 ≤ r < y1. Definitions (docs/references.md, "Saliency evaluation"):

- ``pointing_game`` (Zhang et al., ECCV 2016): a hit when the map's maximum lies within ``tolerance`` pixels of
  the box (15 px at 224 px, scaled with the image side); ties between maxima are broken by a seeded random choice.
- ``energy_in_box`` (the "energy-based pointing game" of Score-CAM, Wang et al., CVPR-W 2020): the share of the
  map's mass inside the box; an all-zero map counts as uniform.
- ``deletion_auc`` / ``insertion_auc`` (Petsiuk, Das, Saenko, BMVC 2018, "RISE"): pixels in order of decreasing
  saliency (ties in a seeded random order), ``pixels_per_step`` at a time (default: one image row), are set to the
  normalised mean, 0 (deletion), or copied into a blurred copy of the image (insertion); the softmax probability
  of the clean image's top-1 class is tracked, and the area under it on [0, 1] (trapezoid) is the score. Lower
  deletion and higher insertion are better. A per-image AUC averages to the area under the mean curve.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torchvision.transforms.functional as TF

from cvattn.saliency.boxes import box_masks
from cvattn.saliency.runtime import inspection_mode, unwrap

REFERENCE_TOLERANCE = 15    # pixels at REFERENCE_SIZE, Zhang et al.
REFERENCE_SIZE = 224
REFERENCE_BLUR_SIGMA = 5    # pixels at REFERENCE_SIZE, RISE's insertion blur


def _check_maps_and_boxes(maps: torch.Tensor, boxes: torch.Tensor) -> None:
    if maps.ndim != 3:
        raise ValueError(f"maps must be (B, H, W); got shape {tuple(maps.shape)}.")
    if boxes.shape != (maps.shape[0], 4):
        raise ValueError(f"boxes must be (B, 4) = ({maps.shape[0]}, 4) (x0, y0, x1, y1) in pixels; got shape "
                         f"{tuple(boxes.shape)}.")


def default_tolerance(image_size: tuple[int, int]) -> float:
    """Zhang et al.'s 15 px at 224 px, scaled to the longer side of ``image_size``."""
    return REFERENCE_TOLERANCE * max(image_size) / REFERENCE_SIZE


def argmax_pixels(maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(row, column) of each map's maximum, (B, 2); among equal maxima a seeded random one."""
    flat = maps.flatten(1)                                                       # (B, H·W)
    is_max = flat == flat.amax(1, keepdim=True)
    noise = torch.rand(flat.shape, generator=torch.Generator().manual_seed(seed)).to(flat.device)
    index = torch.where(is_max, noise, torch.full_like(noise, -1.0)).argmax(1)  # (B,)
    return torch.stack([index // maps.shape[-1], index % maps.shape[-1]], dim=1)


def pointing_game(maps: torch.Tensor, boxes: torch.Tensor, tolerance: float | None = None,
                  seed: int = 0) -> torch.Tensor:
    """Hits (B,) bool: is the maximum of each map within ``tolerance`` px of its box? (see module docstring)"""
    _check_maps_and_boxes(maps, boxes)
    tolerance = default_tolerance(maps.shape[-2:]) if tolerance is None else tolerance
    if tolerance < 0:
        raise ValueError(f"tolerance is a distance in pixels and must be ≥ 0, got {tolerance}.")
    rows, cols = argmax_pixels(maps, seed).to(boxes).unbind(1)
    x0, y0, x1, y1 = boxes.unbind(1)
    # Pixel-index distance to the nearest pixel of the box (0 inside); x1/y1 are exclusive.
    dx = torch.clamp(torch.maximum(x0 - cols, cols - (x1 - 1)), min=0)
    dy = torch.clamp(torch.maximum(y0 - rows, rows - (y1 - 1)), min=0)
    return torch.hypot(dx, dy) <= tolerance


def energy_in_box(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Share (B,) of each map's mass inside its box, in [0, 1]; maps must be non-negative."""
    _check_maps_and_boxes(maps, boxes)
    if (maps < 0).any():
        raise ValueError("energy_in_box needs non-negative maps (saliency() returns maps in [0, 1]).")
    inside = box_masks(boxes, maps.shape[-2:])
    flat = torch.where((maps.sum((1, 2)) > 0)[:, None, None], maps, torch.ones_like(maps))
    return (flat * inside).sum((1, 2)) / flat.sum((1, 2))


def saliency_order(maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Flat pixel indices (B, H·W) by decreasing saliency; equal values in a seeded random order."""
    flat = maps.flatten(1)
    shuffle = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed)).to(flat.device)
    ranked = flat[:, shuffle].argsort(dim=1, descending=True, stable=True)
    return shuffle[ranked]


def _perturbation_auc(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, start: torch.Tensor,
                      finish: torch.Tensor, pixels_per_step: int | None, seed: int) -> torch.Tensor:
    """AUC (B,) of the clean top-1 probability while pixels move from ``start`` to ``finish`` in saliency order."""
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps must be (B, H, W) = {(images.shape[0], *images.shape[-2:])} to match the images; "
                         f"got {tuple(maps.shape)}.")
    batch, chans, height, width = images.shape
    num_pixels = height * width
    pixels_per_step = width if pixels_per_step is None else pixels_per_step
    if not 1 <= pixels_per_step <= num_pixels:
        raise ValueError(f"pixels_per_step must be in [1, {num_pixels}] (the image's pixels), got {pixels_per_step}.")
    model = unwrap(model)
    order = saliency_order(maps, seed)                                           # (B, H·W)
    start, finish = start.flatten(2), finish.flatten(2)                          # (B, C, H·W)
    steps = math.ceil(num_pixels / pixels_per_step)
    counts = [min(step * pixels_per_step, num_pixels) for step in range(steps + 1)]
    probs = []
    with inspection_mode(model), torch.no_grad():
        classes = model(images).argmax(1, keepdim=True)                          # (B, 1)
        current = start.clone()
        for done, count in zip([0] + counts, counts):
            index = order[:, done:count][:, None].expand(-1, chans, -1)          # (B, C, n)
            current.scatter_(2, index, finish.gather(2, index))
            logits = model(current.view(batch, chans, height, width))
            probs.append(logits.softmax(1).gather(1, classes)[:, 0])
    x = torch.tensor(counts, dtype=torch.float32, device=images.device) / num_pixels
    return torch.trapezoid(torch.stack(probs, 1), x, dim=1)


def deletion_auc(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, pixels_per_step: int | None = None,
                 seed: int = 0) -> torch.Tensor:
    """RISE deletion (B,): remove the most salient pixels first (set to 0, the normalised mean); lower is better."""
    images = images.detach()
    return _perturbation_auc(model, images, maps, images, torch.zeros_like(images), pixels_per_step, seed)


def insertion_auc(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, pixels_per_step: int | None = None,
                  seed: int = 0, blur_sigma: float | None = None) -> torch.Tensor:
    """RISE insertion (B,): restore the most salient pixels first into a blurred copy; higher is better.

    ``blur_sigma`` (pixels) defaults to RISE's 5 px at 224 px scaled to the image side, at least 1 px.
    """
    images = images.detach()
    sigma = blur_sigma or max(1.0, REFERENCE_BLUR_SIGMA * max(images.shape[-2:]) / REFERENCE_SIZE)
    kernel = 2 * math.ceil(2 * sigma) + 1
    blurred = TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])
    return _perturbation_auc(model, images, maps, blurred, images, pixels_per_step, seed)
