"""Floors for every metric: maps that know nothing about the image.

- ``'random'``: uniform noise, seeded (``seed``), one independent map per image.
- ``'center'``: a Gaussian centred on the image, std ``sigma`` × the image side. Its argmax is the centre, so its
  pointing game is the centre-point baseline of Zhang et al. (ECCV 2016, "Top-down Neural Attention by
  Excitation Backprop"), which the pointing game must always be reported beside.
- ``'brightness'``: the input itself, no model: the channel mean of the image as given (the model's normalised
  input), box-blurred with a ``window`` × ``window`` mean (default the odd number nearest 0.21 × the longer side
  from below, 2·⌊0.105·side⌋ + 1: 21 px at 100 px, 13 at 60, 5 at 28; image borders average the pixels inside
  only). On a single-object canvas the object is the largest bright thing, so this map already points at it
  (cvattn's construction: a floor for "the map finds the object", which a map that explains the model must beat).
  For one channel the normalised input is an increasing affine function of the brightness, so after min-max the
  map is that of the raw brightness; for several channels it is the mean of the per-channel standardised values.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

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


def brightness_window(image_size: tuple[int, int]) -> int:
    """The default blur window of ``'brightness'``: 2·⌊0.105·side⌋ + 1 for the longer side (21 at 100 px)."""
    return 2 * int(0.105 * max(image_size)) + 1


@register_method("brightness", any_model, "nothing")
def brightness_map(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                   window: int | None = None) -> torch.Tensor:
    window = brightness_window(images.shape[-2:]) if window is None else window
    if not isinstance(window, int) or isinstance(window, bool) or window < 1 or window % 2 == 0:
        raise ValueError(f"window (the side of the box blur, in pixels) must be a positive odd integer, got "
                         f"{window!r}.")
    intensity = images.detach().mean(1, keepdim=True)                           # (B, 1, H, W)
    blurred = F.avg_pool2d(intensity, window, stride=1, padding=window // 2, count_include_pad=False)
    return blurred[:, 0]                                                         # (B, H, W)
