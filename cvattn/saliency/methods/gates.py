"""Native maps of the gated CNNs: what the attention blocks themselves computed, no gradients.

- ``'spatial_gate'``: the spatial gates' outputs (CBAM, Woo et al. ECCV 2018; the spatial-only block), (B, 1, h, w),
  each upsampled to the input and averaged over the chosen blocks.
- ``'channel_gate'``: the channel gates (SE, Hu et al. CVPR 2018; ECA, Wang et al. CVPR 2020; CBAM's channel half)
  weighting the feature map A each block rescales: ReLU(Σ_c g_c·A_c), which is the channel sum of the block's
  output (x·g). A CAM-style map with the gate in place of the classifier weights; the papers show gate
  statistics, not maps, so this is cvattn's construction.

Blocks are cvattn's (found by ``cvattn.contracts.AttentionBlock``) or other libraries' known ones (timm's SE, ECA,
CBAM; ``cvattn.saliency.adapters.FOREIGN_ATTENTION_BLOCKS``).

``blocks``: which attention blocks, as module paths or path prefixes (``'stages.1'``, ``['stages.2.0.attn']``);
by default those in the last stage (``feature_info[-1]['module']``), else the last block.
"""
from __future__ import annotations

from contextlib import ExitStack
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.saliency.adapters import attention_gate
from cvattn.saliency.registry import gate_blocks, has_channel_gates, has_spatial_gates, register_method


def select_blocks(model: nn.Module, kind: str, blocks: str | Sequence[str] | None) -> list[str]:
    """Paths of the ``kind`` ('channel' or 'spatial') attention blocks that ``blocks`` selects (module docstring)."""
    found = list(gate_blocks(model, kind))
    if blocks is None:
        info = getattr(model, "feature_info", None)
        last_stage = info[-1]["module"] + "." if info else None
        return [path for path in found if last_stage and path.startswith(last_stage)] or found[-1:]
    prefixes = [blocks] if isinstance(blocks, str) else list(blocks)
    chosen = [path for path in found if any(path == p or path.startswith(p + ".") for p in prefixes)]
    if not chosen:
        raise ValueError(f"blocks={blocks!r} selects none of this model's {kind} attention blocks; give module "
                         f"paths or prefixes of: {found}.")
    return chosen


def _upsampled_mean(maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Mean of (B, h_i, w_i) maps after bilinear upsampling to ``size``, (B, H, W)."""
    return torch.stack([F.interpolate(m[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
                        for m in maps]).mean(0)


def _hooked_mean(model: nn.Module, images: torch.Tensor, modules: dict[str, nn.Module], reduce) -> torch.Tensor:
    """One forward with a hook on each of ``modules`` turning its output into a (B, h, w) map by ``reduce``; the
    maps' upsampled mean, (B, H, W)."""
    maps = {}

    def keep(path: str):
        def hook(_module, _inputs, output):
            maps[path] = reduce(output)
        return hook

    with torch.no_grad(), ExitStack() as stack:
        for path, module in modules.items():
            stack.callback(module.register_forward_hook(keep(path)).remove)
        model(images)
    return _upsampled_mean([maps[path] for path in modules], images.shape[-2:])


@register_method("spatial_gate", has_spatial_gates, "spatial attention gates (CBAM, BAM, coordinate attention, … "
                 "any attention block of kind 'spatial')")
def spatial_gate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                 blocks: str | Sequence[str] | None = None) -> torch.Tensor:
    gates = {path: attention_gate(model.get_submodule(path)) for path in select_blocks(model, "spatial", blocks)}
    # (B, 1 or C, h, w) → (B, h, w): per-channel-and-position weights averaged over channels
    return _hooked_mean(model, images, gates, lambda output: output.mean(1))


@register_method("channel_gate", has_channel_gates, "channel attention gates (SE, ECA, CBAM, … any attention "
                 "block of kind 'channel')")
def channel_gate(model: nn.Module, images: torch.Tensor, targets: torch.Tensor,
                 blocks: str | Sequence[str] | None = None) -> torch.Tensor:
    gated = {path: model.get_submodule(path) for path in select_blocks(model, "channel", blocks)}
    # The block's output x·g summed over channels: Σ_c g_c·A_c, (B, h, w)
    return _hooked_mean(model, images, gated, lambda output: output.sum(1).relu())
