"""Boxes as pixel masks: ``(x0, y0, x1, y1)`` in pixels with exclusive ends (docs/design.md, "Batches")."""
from __future__ import annotations

import torch


def box_masks(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(..., H, W) bool: which pixels have their centre inside each box of ``boxes`` (..., 4); for whole-pixel boxes,
    the pixels (r, c) with x0 ≤ c < x1 and y0 ≤ r < y1."""
    height, width = image_size
    cols = torch.arange(width, device=boxes.device) + 0.5                       # pixel centres
    rows = torch.arange(height, device=boxes.device) + 0.5
    inside_x = (cols >= boxes[..., 0:1]) & (cols < boxes[..., 2:3])              # (..., W)
    inside_y = (rows >= boxes[..., 1:2]) & (rows < boxes[..., 3:4])              # (..., H)
    return inside_y[..., :, None] & inside_x[..., None, :]
