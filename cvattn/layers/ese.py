"""Effective Squeeze-and-Excitation (Lee, Park. "CenterMask: Real-Time Anchor-Free Instance Segmentation",
CVPR 2020, the eSE module of VoVNetV2).

SE with one FC layer instead of two: global average pool, FC(C→C) with bias, hard sigmoid, scale. Dropping the
reduction keeps every channel's information (the SE bottleneck C→C/r loses it).

Follows timm's ``EffectiveSEModule`` exactly (same state_dict, outputs within float rounding); the paper's gate is
the hard sigmoid ``ReLU6(x + 3) / 6``, which is timm's default too, so there is no second convention.
Deviations: the FC layer is a 1×1 convolution (same maths); timm's experimental ``add_maxpool`` is left out.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.checks import check_channels
from cvattn.layers.helpers import LayerType, get_act_layer


class EffectiveSEModule(nn.Module):
    """eSE channel attention; ``self.gate`` outputs the applied weights, (B, C, 1, 1)."""

    attn_kind = "channel"   # cvattn.contracts.AttentionBlock

    def __init__(self, channels: int, gate_layer: LayerType = "hard_sigmoid", device=None, dtype=None):
        super().__init__()
        check_channels("EffectiveSEModule", channels)
        self.fc = nn.Conv2d(channels, channels, kernel_size=1, device=device, dtype=dtype)
        self.gate = get_act_layer(gate_layer)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc(x.mean((2, 3), keepdim=True)))   # (B, C, H, W) * (B, C, 1, 1)
