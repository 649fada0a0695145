"""Floors for every metric: maps that know nothing about the image.

- ``'random'``: uniform noise, seeded (``seed``), one independent map per image.
- ``'center'``: a Gaussian centred on the image, std ``sigma`` × the image side. Its argmax is the centre, so its
  pointing game is the centre-point baseline of Zhang et al. (ECCV 2016, "Top-down Neural Attention by
  Excitation Backprop"), which the pointing game must always be reported beside.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.saliency.registry import any_model, register_method


@register_method("random", any_model, "nothing")
def random_map(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(images.shape[0], *images.shape[-2:], generator=generator).to(images.device)


@register_method("center", any_model, "nothing")
def center_map(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, sigma: float = 0.25) -> torch.Tensor:
    if not sigma > 0:
        raise ValueError(f"sigma (the Gaussian's std as a fraction of the image side) must be > 0, got {sigma}.")
    height, width = images.shape[-2:]
    ys = (torch.arange(height, device=images.device) + 0.5 - height / 2) / (sigma * height)
    xs = (torch.arange(width, device=images.device) + 0.5 - width / 2) / (sigma * width)
    gaussian = torch.exp(-0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2))          # (H, W)
    return gaussian.expand(images.shape[0], -1, -1)
