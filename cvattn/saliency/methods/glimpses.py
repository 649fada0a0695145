"""The recurrent attention model's map (Mnih et al., NIPS 2014): where it looked, later glimpses heavier.

Glimpse t of T adds weight (t + 1) / T to every pixel whose centre lies inside its patch of scale ``scale``
(0: the finest, g×g pixels), so the last glimpse, the one the classification rests on most, weighs 1. The policy
mean is used (the model runs in eval mode), so the map is deterministic. Target-independent: the RAM decides where
to look before it decides the class.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.saliency.boxes import box_masks
from cvattn.saliency.registry import register_method, takes_glimpses


def glimpse_map(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Step-weighted box indicators: boxes (B, T, 4) (x0, y0, x1, y1) in pixels → (B, H, W)."""
    steps = boxes.shape[1]
    weights = torch.arange(1, steps + 1, device=boxes.device, dtype=boxes.dtype) / steps          # (T,)
    return (box_masks(boxes, image_size) * weights[:, None, None]).sum(1)                        # (B, H, W)


@register_method("glimpses", takes_glimpses, "a recurrent attention model (cvattn.models.ram)")
def glimpses(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, scale: int = 0) -> torch.Tensor:
    from cvattn.models.ram import glimpse_boxes

    num_scales = model.sensor.num_scales
    if not 0 <= scale < num_scales:
        raise ValueError(f"scale={scale} is not a patch of this model's glimpses: use 0 (finest) to {num_scales - 1}.")
    with torch.no_grad():
        _, trajectory = model(images, return_trajectory=True)
    boxes = glimpse_boxes(trajectory, tuple(images.shape[-2:]))[:, :, scale]    # (B, T, 4)
    return glimpse_map(boxes, tuple(images.shape[-2:]))
