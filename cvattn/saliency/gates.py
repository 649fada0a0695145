"""Native maps of the gated CNNs: what the attention blocks themselves computed, no gradients.

- ``'spatial_gate'``: the spatial gates' outputs (CBAM, Woo et al. ECCV 2018; the spatial-only block), (B, 1, h, w),
  each upsampled to the input and averaged over the chosen blocks.
- ``'channel_gate'``: the channel gates (SE, Hu et al. CVPR 2018; ECA, Wang et al. CVPR 2020; CBAM's channel half)
  weighting the feature map A each block rescales: ReLU(Σ_c g_c·A_c), which is the channel sum of the block's
  output (x·g). A CAM-style map with the gate in place of the classifier weights; the papers show gate
  statistics, not maps, so this is cvattn's construction.

``blocks``: which attention blocks, as module paths or path prefixes (``'stages.1'``, ``['stages.2.0.attn']``);
by default those in the last stage (``feature_info[-1]['module']``), else the last block.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.layers import ChannelAttn, EcaModule, SEModule, SpatialAttn, attention_blocks, capture_attention
from cvattn.saliency._registry import register_method

CHANNEL_GATES = (SEModule, EcaModule, ChannelAttn)


def has_spatial_gates(model: nn.Module) -> bool:
    return any(isinstance(m, SpatialAttn) for m in model.modules())


def has_channel_gates(model: nn.Module) -> bool:
    return any(isinstance(m, CHANNEL_GATES) for m in model.modules())


def select_blocks(model: nn.Module, kinds: tuple[type, ...], blocks: str | Sequence[str] | None) -> list[str]:
    """Paths of the attention blocks of ``kinds`` that ``blocks`` selects (see the module docstring)."""
    found = [path for path, block in attention_blocks(model).items() if isinstance(block, kinds)]
    if blocks is None:
        info = getattr(model, "feature_info", None)
        last_stage = info[-1]["module"] + "." if info else None
        return [path for path in found if last_stage and path.startswith(last_stage)] or found[-1:]
    prefixes = [blocks] if isinstance(blocks, str) else list(blocks)
    chosen = [path for path in found if any(path == p or path.startswith(p + ".") for p in prefixes)]
    if not chosen:
        raise ValueError(f"blocks={blocks!r} selects none of this model's {'/'.join(k.__name__ for k in kinds)} "
                         f"blocks; give module paths or prefixes of: {found}.")
    return chosen


def _upsampled_mean(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Mean of (B, h_i, w_i) maps after bilinear upsampling to ``size``, (B, H, W)."""
    return torch.stack([F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
                        for m in maps]).mean(0)


@register_method("spatial_gate", has_spatial_gates, "spatial attention gates (CBAM or 'spatial' blocks)")
def spatial_gate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                 blocks: str | Sequence[str] | None = None) -> torch.Tensor:
    paths = select_blocks(model, (SpatialAttn,), blocks)
    with torch.no_grad(), capture_attention(model) as gates:
        model(images)
    return _upsampled_mean([gates[path][:, 0] for path in paths], images.shape[-2:])   # (B, H, W)


@register_method("channel_gate", has_channel_gates, "channel attention gates (SE, ECA or CBAM blocks)")
def channel_gate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                 blocks: str | Sequence[str] | None = None) -> torch.Tensor:
    paths = select_blocks(model, CHANNEL_GATES, blocks)
    gated = {}

    def keep(path: str):
        def hook(_module, _inputs, output):
            gated[path] = output.sum(1).relu()                  # Σ_c g_c·A_c, (B, h, w)
        return hook

    with torch.no_grad(), ExitStack() as stack:
        for path in paths:
            stack.callback(model.get_submodule(path).register_forward_hook(keep(path)).remove)
        model(images)
    return _upsampled_mean([gated[path] for path in paths], images.shape[-2:])
