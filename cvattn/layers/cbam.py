"""CBAM: Convolutional Block Attention Module (Woo, Park, Lee, Kweon. ECCV 2018).

A channel gate followed by a spatial gate, on the residual branch before the add:
- channel gate: a shared MLP (C→C/r→C) applied to the average-pooled and the max-pooled descriptors, summed,
  sigmoid; output (B, C, 1, 1).
- spatial gate: the channel-wise max and mean maps, concatenated, 7×7 convolution (no bias) + BatchNorm, sigmoid;
  output (B, 1, H, W).

Two conventions, chosen by ``convention`` (or by the names ``'cbam'`` / ``'cbam_timm'`` in ``create_attn``):

================  ==============================  ===================================
                  ``'paper'`` (default)            ``'timm'`` (timm ``CbamModule``)
================  ==============================  ===================================
MLP bias          yes (Linear layers with bias)    no
spatial input     [max, mean]                      [mean, max]
================  ==============================  ===================================

Deviations: the MLP layers are 1×1 convolutions, so state_dicts load timm's weights directly. The max pools are
``max`` (the gradient goes to one arg-max), not timm's ``amax`` (the gradient split among tied maxima): outputs are
identical and so are gradients wherever the maximum is unique, and the backward pass scatters to the arg-max instead
of comparing the whole input with its maximum (timings in docs/results.md).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from cvattn.checks import check_channels
from cvattn.layers.helpers import LayerType, check_convention, get_act_layer, make_divisible


class ChannelAttn(nn.Module):
    """CBAM's channel gate: shared MLP over average- and max-pooled descriptors."""

    attn_kind = "channel"   # cvattn.contracts.AttentionBlock: self.gate's output is the attention

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: LayerType = "relu",
        gate_layer: LayerType = "sigmoid",
        convention: str = "paper",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_channels("ChannelAttn", channels)
        dd = dict(device=device, dtype=dtype)
        bias = check_convention(convention) == "paper"
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=bias, **dd)
        self.act = get_act_layer(act_layer)()
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias, **dd)
        self.gate = get_act_layer(gate_layer)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg_logits = self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True))))   # (B, C, 1, 1)
        max_pooled = x.flatten(2).max(2).values[:, :, None, None]                # (B, C, 1, 1)
        max_logits = self.fc2(self.act(self.fc1(max_pooled)))
        return x * self.gate(avg_logits + max_logits)


class SpatialAttn(nn.Module):
    """CBAM's spatial gate: a k×k convolution + BN over the channel-wise max and mean maps.

    On its own (``create_attn('spatial', C)``) it is the spatial-only attention block.
    """

    attn_kind = "spatial"   # cvattn.contracts.AttentionBlock: self.gate's output is the attention

    def __init__(self, channels: int | None = None, kernel_size: int = 7, gate_layer: LayerType = "sigmoid",
                 convention: str = "paper", device=None, dtype=None):
        super().__init__()
        # `channels` is accepted for the shared constructor vocabulary; the gate is independent of width.
        self.max_first = check_convention(convention) == "paper"
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"SpatialAttn kernel_size must be a positive odd integer, got {kernel_size}.")
        # Named conv.conv / conv.bn so that timm's ConvNormAct weights load unchanged.
        self.conv = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False, device=device, dtype=dtype),
            bn=nn.BatchNorm2d(1, device=device, dtype=dtype),
        ))
        self.gate = get_act_layer(gate_layer)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        max_map = x.max(dim=1, keepdim=True).values              # (B, 1, H, W)
        mean_map = x.mean(dim=1, keepdim=True)                   # (B, 1, H, W)
        pooled = torch.cat([max_map, mean_map] if self.max_first else [mean_map, max_map], dim=1)   # (B, 2, H, W)
        # oneDNN runs this 2→1 convolution about 4× faster, backward included, on a channels-last input.
        pooled = pooled.contiguous(memory_format=torch.channels_last)
        return x * self.gate(self.conv(pooled))


class CbamModule(nn.Module):
    """CBAM: ``self.channel`` (``ChannelAttn``) then ``self.spatial`` (``SpatialAttn``)."""

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        spatial_kernel_size: int = 7,
        act_layer: LayerType = "relu",
        gate_layer: LayerType = "sigmoid",
        convention: str = "paper",
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.channel = ChannelAttn(channels, rd_ratio, rd_channels, rd_divisor, act_layer, gate_layer, convention,
                                   device, dtype)
        self.spatial = SpatialAttn(channels, spatial_kernel_size, gate_layer, convention, device, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))
