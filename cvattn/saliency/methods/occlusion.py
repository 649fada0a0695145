"""Occlusion (Zeiler & Fergus, ECCV 2014, §4.2): how much the target logit drops when a square of the image is
replaced by a constant.

A ``window`` × ``window`` square (all channels) slides over the image in steps of ``stride``, starting at 0 and
continuing until it reaches the far edge (the last square is clipped there, as Captum's ``Occlusion`` does); each
occluded image is set to ``baseline`` inside the square (0: the mean image for inputs normalised by the dataset's
mean and std). A pixel's attribution is the mean, over the squares that cover it, of y_c(x) − y_c(occluded x)
(Captum's weighting); ``occlusion_attribution`` returns it signed, the method its positive part (the evidence for
the class). Deviations from the paper: the logit rather than the softmax probability, as the gradient methods
here; default window 1/8 of the shorter side, stride half the window. Costs one forward per square and image,
``batch_size`` occluded images at a time; needs no gradient, so it applies to every model.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.checks import check_count
from cvattn.saliency.registry import any_model, register_method


def occlusion_attribution(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, window: int | None = None,
                          stride: int | None = None, baseline: float = 0.0, batch_size: int = 64) -> torch.Tensor:
    """(B, H, W): the mean drop of each image's target logit over the occluding squares covering each pixel."""
    batch, _, height, width = images.shape
    window = check_count("window", window if window is not None else max(1, min(height, width) // 8))
    stride = check_count("stride", stride if stride is not None else max(1, window // 2))
    check_count("batch_size", batch_size)
    if window > min(height, width):
        raise ValueError(f"window ({window} px) must fit in the image ({height}×{width}); pass a smaller window.")
    if stride > window:
        raise ValueError(f"stride ({stride}) must be at most window ({window}), or some pixels are never occluded.")
    if not isinstance(baseline, (int, float)) or isinstance(baseline, bool):
        raise ValueError(f"baseline must be a number (the value occluded pixels take), got {baseline!r}.")
    corners = [(top, left) for top in range(0, height - window + stride, stride)
               for left in range(0, width - window + stride, stride)]
    drop = torch.zeros(batch, height, width, device=images.device)
    count = torch.zeros(height, width, device=images.device)
    with torch.no_grad():
        clean = model(images).gather(1, targets[:, None])[:, 0]                           # (B,)
        for b in range(batch):
            for start in range(0, len(corners), batch_size):
                chunk = corners[start:start + batch_size]
                occluded = images[b].repeat(len(chunk), 1, 1, 1)                          # (k, C, H, W)
                for i, (top, left) in enumerate(chunk):
                    occluded[i, :, top:top + window, left:left + window] = baseline
                scores = clean[b] - model(occluded)[:, targets[b]]                        # (k,)
                for score, (top, left) in zip(scores, chunk):
                    drop[b, top:top + window, left:left + window] += score
        for top, left in corners:
            count[top:top + window, left:left + window] += 1
    return drop / count


@register_method("occlusion", any_model, "nothing (forwards only)")
def occlusion(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, window: int | None = None,
              stride: int | None = None, baseline: float = 0.0, batch_size: int = 64) -> torch.Tensor:
    return occlusion_attribution(model, images, targets, window, stride, baseline, batch_size).relu()
