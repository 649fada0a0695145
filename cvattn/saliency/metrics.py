"""Does the map point at the object? Per-image scores for (B, H, W) maps and (B, 4) object boxes.

Boxes are ``(x0, y0, x1, y1)`` in pixels with exclusive ends (docs/design.md, "Batches"); pixel (row r, column c)
lies in the box when x0 ≤ c < x1 and y0 ≤ r < y1. The pointing game and the energy also take (B, k, H, W) maps and
(B, k, 4) boxes, one map per object (the map for object j's class judged against object j's box: the
class-conditional scores of multi-object canvases). Definitions (docs/references.md, "Saliency evaluation"):

- ``pointing_game`` (Zhang et al., ECCV 2016): a hit when the map's maximum lies within ``tolerance`` pixels of
  the box (15 px at 224 px, scaled with the image side); ties between maxima are broken by a seeded random choice.
- ``energy_in_box`` (the "energy-based pointing game" of Score-CAM, Wang et al., CVPR-W 2020): the share of the
  map's mass inside the box; an all-zero map counts as uniform.
- ``deletion_auc`` / ``insertion_auc`` (Petsiuk, Das, Saenko, BMVC 2018, "RISE"): pixels in order of decreasing
  saliency (ties in a seeded random order), ``pixels_per_step`` at a time (default: one image row), are set to the
  normalised mean, 0 (deletion), or copied into a blurred copy of the image (insertion); the softmax probability
  of the clean image's top-1 class is tracked, and the area under it on [0, 1] (trapezoid) is the score. Lower
  deletion and higher insertion are better. A per-image AUC averages to the area under the mean curve.
- ``road`` (Rong, Leemann, Borisov, Kasneci, Kasneci, ICML 2022, "A Consistent and Efficient Evaluation Strategy
  for Attribution Methods"): the most (``'morf'``) or least (``'lerf'``) salient ``p``% of the pixels are removed
  and filled by noisy linear imputation, each removed pixel the weighted mean of its 8 neighbours (weight 1/6
  for the 4 direct, 1/12 for the diagonal ones; removed neighbours are unknowns too, so the fill is the solution of
  a sparse linear system), plus Gaussian noise of std ``noise`` (0.01, the paper's); the curve is the probability
  of the target class, and whether it is still the top-1, at each ``p``. MoRF should fall fast, LeRF stay high.
  Deviation: the system is solved by Jacobi-preconditioned conjugate gradients in float64, on the images'
  device, to a relative residual of 1e-6, instead of scipy's direct ``spsolve``.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torchvision.transforms.functional as TF

from cvattn.saliency.boxes import box_masks
from cvattn.checks import check_choice
from cvattn.saliency.runtime import TargetType, inspection_mode, resolve_targets, unwrap

REFERENCE_TOLERANCE = 15    # pixels at REFERENCE_SIZE, Zhang et al.
REFERENCE_SIZE = 224
REFERENCE_BLUR_SIGMA = 5    # pixels at REFERENCE_SIZE, RISE's insertion blur


def _check_maps_and_boxes(maps: torch.Tensor, boxes: torch.Tensor) -> None:
    if maps.ndim not in (3, 4):
        raise ValueError(f"maps must be (B, H, W), or (B, k, H, W) with one map per object; got shape "
                         f"{tuple(maps.shape)}.")
    if boxes.shape != (*maps.shape[:-2], 4):
        expected = "(B, 4)" if maps.ndim == 3 else "(B, k, 4)"
        raise ValueError(f"boxes must be {expected} = {(*maps.shape[:-2], 4)} (x0, y0, x1, y1) in pixels, one per "
                         f"map; got shape {tuple(boxes.shape)}.")


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
    """Hits (B,) bool, or (B, k) for (B, k, H, W) maps: is the maximum of each map within ``tolerance`` px of its
    box? (see module docstring)"""
    _check_maps_and_boxes(maps, boxes)
    tolerance = default_tolerance(maps.shape[-2:]) if tolerance is None else tolerance
    if tolerance < 0:
        raise ValueError(f"tolerance is a distance in pixels and must be ≥ 0, got {tolerance}.")
    rows, cols = argmax_pixels(maps.flatten(0, -3), seed).to(boxes).unbind(1)  # one (row, col) per map
    x0, y0, x1, y1 = boxes.reshape(-1, 4).unbind(1)
    # Pixel-index distance to the nearest pixel of the box (0 inside); x1/y1 are exclusive.
    dx = torch.clamp(torch.maximum(x0 - cols, cols - (x1 - 1)), min=0)
    dy = torch.clamp(torch.maximum(y0 - rows, rows - (y1 - 1)), min=0)
    return (torch.hypot(dx, dy) <= tolerance).view(boxes.shape[:-1])


def energy_in_box(maps: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """Share (B,) (or (B, k)) of each map's mass inside its box, in [0, 1]; maps must be non-negative."""
    _check_maps_and_boxes(maps, boxes)
    if (maps < 0).any():
        raise ValueError("energy_in_box needs non-negative maps (saliency() returns maps in [0, 1]).")
    inside = box_masks(boxes, maps.shape[-2:])
    flat = torch.where((maps.sum((-2, -1)) > 0)[..., None, None], maps, torch.ones_like(maps))
    return (flat * inside).sum((-2, -1)) / flat.sum((-2, -1))


def saliency_order(maps: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Flat pixel indices (B, H·W) by decreasing saliency; equal values in a seeded random order."""
    flat = maps.flatten(1)
    shuffle = torch.randperm(flat.shape[1], generator=torch.Generator().manual_seed(seed)).to(flat.device)
    ranked = flat[:, shuffle].argsort(dim=1, descending=True, stable=True)
    return shuffle[ranked]


def _check_maps_for_images(maps: torch.Tensor, images: torch.Tensor) -> None:
    if maps.shape != (images.shape[0], *images.shape[-2:]):
        raise ValueError(f"maps must be (B, H, W) = {(images.shape[0], *images.shape[-2:])} to match the images; "
                         f"got {tuple(maps.shape)}.")


def _perturbation_auc(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, start: torch.Tensor,
                      finish: torch.Tensor, pixels_per_step: int | None, seed: int,
                      target: TargetType = None) -> torch.Tensor:
    """AUC (B,) of the target's probability (default: the clean top-1 class) while pixels move from ``start`` to
    ``finish`` in saliency order."""
    _check_maps_for_images(maps, images)
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
        classes = resolve_targets(target, model(images))[:, None]                # (B, 1)
        current = start.clone()
        for done, count in zip([0] + counts, counts):
            index = order[:, done:count][:, None].expand(-1, chans, -1)          # (B, C, n)
            current.scatter_(2, index, finish.gather(2, index))
            logits = model(current.view(batch, chans, height, width))
            probs.append(logits.softmax(1).gather(1, classes)[:, 0])
    x = torch.tensor(counts, dtype=torch.float32, device=images.device) / num_pixels
    return torch.trapezoid(torch.stack(probs, 1), x, dim=1)


def deletion_auc(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, pixels_per_step: int | None = None,
                 seed: int = 0, target: TargetType = None) -> torch.Tensor:
    """RISE deletion (B,): remove the most salient pixels first (set to 0, the normalised mean); lower is better.
    ``target``: the class whose probability is tracked (default: the clean image's top-1)."""
    images = images.detach()
    return _perturbation_auc(model, images, maps, images, torch.zeros_like(images), pixels_per_step, seed, target)


def insertion_auc(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, pixels_per_step: int | None = None,
                  seed: int = 0, blur_sigma: float | None = None, target: TargetType = None) -> torch.Tensor:
    """RISE insertion (B,): restore the most salient pixels first into a blurred copy; higher is better.

    ``blur_sigma`` (pixels) defaults to RISE's 5 px at 224 px scaled to the image side, at least 1 px; ``target``
    as for ``deletion_auc``.
    """
    images = images.detach()
    sigma = blur_sigma or max(1.0, REFERENCE_BLUR_SIGMA * max(images.shape[-2:]) / REFERENCE_SIZE)
    kernel = 2 * math.ceil(2 * sigma) + 1
    blurred = TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])
    return _perturbation_auc(model, images, maps, blurred, images, pixels_per_step, seed, target)


# ROAD's neighbour weights: 1/6 for the 4 direct neighbours, 1/12 for the 4 diagonal ones (they sum to 1).
ROAD_WEIGHTS = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))
ROAD_PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)


def noisy_linear_imputation(images: torch.Tensor, removed: torch.Tensor, noise: float = 0.01, seed: int = 0,
                            tolerance: float = 1e-6, max_iterations: int | None = None) -> torch.Tensor:
    """``images`` (B, C, H, W) with the ``removed`` (B, H, W) pixels refilled as in ROAD (module docstring).

    Every removed pixel x_i satisfies d_i·x_i = Σ_j w_ij·x_j over its in-image neighbours j (d_i = Σ_j w_ij), removed
    neighbours being unknowns too; each connected hole touches a kept pixel, so the system is symmetric positive
    definite whenever one pixel is kept. Then Gaussian noise of std ``noise`` (seeded) is added to the filled pixels.
    """
    if removed.shape != (images.shape[0], *images.shape[-2:]) or removed.dtype != torch.bool:
        raise ValueError(f"removed must be a bool mask (B, H, W) = {(images.shape[0], *images.shape[-2:])}; got "
                         f"{tuple(removed.shape)} of {removed.dtype}.")
    if removed.flatten(1).all(1).any():
        raise ValueError("noisy_linear_imputation needs at least one kept pixel per image to fill the others from; "
                         "remove less than 100%.")
    batch, chans, height, width = images.shape
    x = images.detach().to(torch.float64).reshape(batch * chans, 1, height, width)
    unknown = removed.to(torch.float64).repeat_interleave(chans, 0)[:, None]      # (B·C, 1, H, W)
    degree = _neighbour_sum(torch.ones_like(x[:1]))                                # (1, 1, H, W), d_i
    rhs = unknown * _neighbour_sum((1 - unknown) * x)                              # the kept neighbours' share

    def system(v: torch.Tensor) -> torch.Tensor:                                   # d_i·v_i − Σ_unknown j w_ij·v_j
        return unknown * (degree * v - _neighbour_sum(unknown * v))

    filled = _conjugate_gradient(system, rhs, degree, tolerance, max_iterations or 20 * (height + width))
    generator = torch.Generator().manual_seed(seed)
    jitter = noise * torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x.device)
    out = torch.where(unknown.bool(), filled + jitter, x)
    return out.view(batch, chans, height, width).to(images.dtype)


def _neighbour_sum(x: torch.Tensor) -> torch.Tensor:
    """Σ_j w_ij·x_j over the 8 neighbours of every pixel of (N, 1, H, W) ``x``, nothing from outside the image."""
    kernel = torch.tensor(ROAD_WEIGHTS, dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    return torch.nn.functional.conv2d(x, kernel, padding=1)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum((1, 2, 3), keepdim=True)


def _safe_div(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a / b, 0 where b is 0 (a system already solved exactly, or with a zero right-hand side)."""
    return torch.where(b != 0, a / torch.where(b != 0, b, torch.ones_like(b)), torch.zeros_like(a))


def _conjugate_gradient(apply, rhs: torch.Tensor, diagonal: torch.Tensor, tolerance: float,
                        max_iterations: int) -> torch.Tensor:
    """Solve apply(x) = rhs for each (1, H, W) system of the batch; Jacobi preconditioner ``diagonal``."""
    x = torch.zeros_like(rhs)
    residual = rhs.clone()
    z = residual / diagonal
    direction = z.clone()
    rz = _dot(residual, z)
    goal = tolerance * rhs.flatten(1).norm(dim=1)
    for _ in range(max_iterations):
        if (residual.flatten(1).norm(dim=1) <= goal).all():
            return x
        step = apply(direction)
        alpha = _safe_div(rz, _dot(direction, step))
        x = x + alpha * direction
        residual = residual - alpha * step
        z = residual / diagonal
        rz, rz_old = _dot(residual, z), rz
        direction = z + _safe_div(rz, rz_old) * direction
    warnings.warn(f"ROAD imputation: conjugate gradients stopped after {max_iterations} iterations above the "
                  f"relative residual {tolerance}.", RuntimeWarning, stacklevel=3)
    return x


@dataclass(frozen=True)
class RoadCurve:
    """ROAD's curve: at each of ``percentages`` (P,) removed, the target's ``probability`` (B, P) and whether it is
    still the model's top-1 class, ``correct`` (B, P) bool (accuracy when the target is the true label)."""
    percentages: torch.Tensor
    probability: torch.Tensor
    correct: torch.Tensor


def road(model: nn.Module, images: torch.Tensor, maps: torch.Tensor, order: str = "morf",
         percentages: Sequence[float] = ROAD_PERCENTAGES, target: TargetType = None, noise: float = 0.01,
         seed: int = 0) -> RoadCurve:
    """ROAD (module docstring): remove the ``order`` ('morf': most relevant first, 'lerf': least) ``percentages`` of
    pixels of ``images`` (B, C, H, W) by ``maps`` (B, H, W), fill them by noisy linear imputation, and read the
    model. ``target``: the class tracked (default: the clean image's top-1); ties in the maps in a seeded order."""
    check_choice("ROAD order", order, ("morf", "lerf"))
    _check_maps_for_images(maps, images)
    if not percentages or not all(0 <= p < 100 for p in percentages):
        raise ValueError(f"percentages must be pixel shares in [0, 100) (100% leaves nothing to impute from); got "
                         f"{list(percentages)}.")
    model = unwrap(model)
    images = images.detach()
    num_pixels = maps[0].numel()
    ranked = saliency_order(maps, seed)                                          # (B, H·W), most salient first
    if order == "lerf":
        ranked = ranked.flip(1)
    probability, correct = [], []
    with inspection_mode(model), torch.no_grad():
        classes = resolve_targets(target, model(images))                         # (B,)
        for step, share in enumerate(percentages):
            count = round(share / 100 * num_pixels)
            removed = torch.zeros_like(ranked, dtype=torch.bool).scatter_(1, ranked[:, :count], True)
            imputed = noisy_linear_imputation(images, removed.view_as(maps), noise, seed + step)
            probs = model(imputed).softmax(1)
            probability.append(probs.gather(1, classes[:, None])[:, 0])
            correct.append(probs.argmax(1) == classes)
    return RoadCurve(torch.tensor([float(p) for p in percentages]), torch.stack(probability, 1),
                     torch.stack(correct, 1))
