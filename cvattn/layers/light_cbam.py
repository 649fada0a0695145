"""Light CBAM: timm's experimental lightweight CBAM (``LightCbamModule``, name ``'lcbam'``), after CBAM (Woo, Park,
Lee, Kweon. ECCV 2018).

Each gate pools once instead of twice: the channel gate runs its MLP (no biases) on ½·avg + ½·max instead of on
both descriptors separately; the spatial gate convolves (k×k, no bias, + BN) the one map ½·mean + ½·max over
channels instead of the two concatenated. Not in the paper; it follows timm (same state_dict, equal outputs).

Deviations: ``max`` instead of timm's ``amax`` (as ``cvattn.layers.cbam``: equal outputs, and equal gradients
wherever the maximum is unique); the channel gate honours ``gate_layer`` (timm's hard-codes the sigmoid, its default).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from cvattn.layers.cbam import ChannelAttn
from cvattn.layers.helpers import LayerType, get_act_layer


class LightChannelAttn(ChannelAttn):
    """Channel gate on ½·avg + ½·max pooling; ``self.gate`` outputs (B, C, 1, 1)."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None, rd_divisor: int = 1,
                 act_layer: LayerType = "relu", gate_layer: LayerType = "sigmoid", device=None, dtype=None):
        super().__init__(channels, rd_ratio, rd_channels, rd_divisor, act_layer, gate_layer, convention="timm",
                         device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = 0.5 * x.mean((2, 3), keepdim=True) + 0.5 * x.flatten(2).max(2).values[:, :, None, None]
        return x * self.gate(self.fc2(self.act(self.fc1(pooled))))       # (B, C, H, W) * (B, C, 1, 1)


class LightSpatialAttn(nn.Module):
    """Spatial gate on ½·mean + ½·max over channels; ``self.gate`` outputs (B, 1, H, W)."""

    attn_kind = "spatial"   # cvattn.contracts.AttentionBlock

    def __init__(self, channels: int | None = None, kernel_size: int = 7, gate_layer: LayerType = "sigmoid",
                 device=None, dtype=None):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"LightSpatialAttn kernel_size must be a positive odd integer, got {kernel_size}.")
        self.conv = nn.Sequential(OrderedDict(   # conv.conv / conv.bn: timm's ConvNormAct keys
            conv=nn.Conv2d(1, 1, kernel_size, padding=kernel_size // 2, bias=False, device=device, dtype=dtype),
            bn=nn.BatchNorm2d(1, device=device, dtype=dtype),
        ))
        self.gate = get_act_layer(gate_layer)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = 0.5 * x.mean(1, keepdim=True) + 0.5 * x.max(1, keepdim=True).values   # (B, 1, H, W)
        return x * self.gate(self.conv(pooled))


class LightCbamModule(nn.Module):
    """Light CBAM: ``self.channel`` (``LightChannelAttn``) then ``self.spatial`` (``LightSpatialAttn``)."""

    def __init__(self, channels: int, rd_ratio: float = 1 / 16, rd_channels: int | None = None, rd_divisor: int = 1,
                 spatial_kernel_size: int = 7, act_layer: LayerType = "relu", gate_layer: LayerType = "sigmoid",
                 device=None, dtype=None):
        super().__init__()
        self.channel = LightChannelAttn(channels, rd_ratio, rd_channels, rd_divisor, act_layer, gate_layer,
                                        device=device, dtype=dtype)
        self.spatial = LightSpatialAttn(channels, spatial_kernel_size, gate_layer, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
