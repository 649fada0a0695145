"""The spatial transformer's map (Jaderberg et al., NIPS 2015): the input region it samples, drawn on the input.

A model with a spatial transformer (any module meeting ``cvattn.contracts.RegionSampler``, e.g. ``st_convnet2`` or
a ``SpatialTransformerNet`` around a timm model) decides, per image, which region of its input the rest of the
network sees. The map is that region's box (``sampled_boxes``: for an affine θ, the bounding box of the sampled
parallelogram), each pixel weighted by the part of its area inside the box, so a box with fractional ends is drawn
to the sub-pixel. A box that covers the whole image (the untrained, identity θ) is a flat map, which the saliency
API normalises to zeros: the transformer then singles nothing out. Target-independent, like the RAM's glimpses:
the transformer looks before the class is decided.

``transformer``: which transformer, by module path, when a model has several; by default the first, the one nearest
the input, whose boxes are in input pixels (a later one's boxes are the same normalised region drawn at the input's
size, exact only if its input is aligned with the image).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.contracts import RegionSampler
from cvattn.saliency.registry import register_method


def spatial_transformers(model: nn.Module) -> dict[str, nn.Module]:
    """The model's spatial transformers (``cvattn.contracts.RegionSampler``), by module path, input side first."""
    return {path: module for path, module in model.named_modules() if isinstance(module, RegionSampler)}


def has_spatial_transformer(model: nn.Module) -> bool:
    return bool(spatial_transformers(model))


def transformer_boxes(model: nn.Module, images: torch.Tensor, transformer: str | None = None) -> torch.Tensor:
    """The pixel boxes (B, 4) ``(x0, y0, x1, y1)`` of the input regions that ``model``'s spatial transformer
    samples from ``images`` (B, C, H, W), from one forward without gradients; not clipped to the image."""
    found = spatial_transformers(model)
    if not found:
        raise ValueError(f"{type(model).__name__} has no spatial transformer (a module with last_theta and "
                         "sampled_boxes, e.g. cvattn.layers.SpatialTransformer).")
    if transformer is None:
        transformer = next(iter(found))
    elif transformer not in found:
        raise ValueError(f"transformer={transformer!r} is not one of this model's spatial transformers: "
                         f"{list(found)}.")
    with torch.no_grad():
        model(images)
    return found[transformer].sampled_boxes(tuple(images.shape[-2:]))


def box_coverage(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W): the part of each pixel's area inside the box (B, 4), in [0, 1]."""
    height, width = image_size

    def cover(low: torch.Tensor, high: torch.Tensor, size: int) -> torch.Tensor:     # (B,) ends → (B, size)
        edges = torch.arange(size, device=boxes.device, dtype=boxes.dtype)
        return (torch.minimum(high[:, None], edges + 1) - torch.maximum(low[:, None], edges)).clamp(0, 1)

    return cover(boxes[:, 1], boxes[:, 3], height)[:, :, None] * cover(boxes[:, 0], boxes[:, 2], width)[:, None, :]


@register_method("transformer", has_spatial_transformer, "a spatial transformer (cvattn.layers.SpatialTransformer, "
                 "e.g. st_convnet2 or a SpatialTransformerNet)")
def transformer_region(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                       transformer: str | None = None) -> torch.Tensor:
    boxes = transformer_boxes(model, images, transformer).float()                # (B, 4)
    return box_coverage(boxes, tuple(images.shape[-2:]))
