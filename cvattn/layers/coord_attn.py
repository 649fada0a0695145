"""Coordinate attention (Hou, Zhou, Feng. "Coordinate Attention for Efficient Mobile Network Design", CVPR 2021).

Pool each channel along W (a column profile over H) and along H (a row profile over W); concatenate the two
profiles, 1×1 conv C→m, BN, h-swish (shared); split, then 1×1 conv m→C and sigmoid for each: a_h (B, C, H, 1) and
a_w (B, C, 1, W); the output is x · a_h · a_w.

Conventions (``convention`` or the names ``'coord'`` / ``'coord_timm'``):

==============  ===================================  ============================================
                ``'paper'`` (default, authors' code)  ``'timm'`` (timm ``CoordAttn``)
==============  ===================================  ============================================
width m         max(8, C // 32)                      make_divisible(C · rd_ratio · 2/3, 8)
conv biases     yes                                  no
==============  ===================================  ============================================

``rd_channels`` overrides either width. The state_dict is timm's; with ``'timm'`` outputs equal timm's.
Deviation: timm's ``has_skip`` (an added identity) is left out.

Map: ``self.gate`` outputs the applied weights a_h · a_w, (B, C, H, W) per channel and position; the block is
declared ``'spatial'`` (its spatial map is the mean over channels).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.checks import check_channels
from cvattn.layers.helpers import LayerType, check_convention, get_act_layer, make_divisible


class _ProductGate(nn.Module):
    """gate(h logits) · gate(w logits): (B, C, H, 1) and (B, C, 1, W) → (B, C, H, W)."""

    def __init__(self, gate: nn.Module):
        super().__init__()
        self.gate = gate

    def forward(self, h_logits: torch.Tensor, w_logits: torch.Tensor) -> torch.Tensor:
        return self.gate(h_logits) * self.gate(w_logits)


class CoordAttn(nn.Module):
    """Coordinate attention; ``self.gate`` outputs the applied weights (B, C, H, W)."""

    attn_kind = "spatial"   # cvattn.contracts.AttentionBlock: per-channel-and-position weights

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        act_layer: LayerType = nn.Hardswish,
        gate_layer: LayerType = "sigmoid",
        convention: str = "paper",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_channels("CoordAttn", channels)
        dd = dict(device=device, dtype=dtype)
        paper = check_convention(convention) == "paper"
        if not rd_channels:
            rd_channels = max(8, channels // 32) if paper else make_divisible(channels * rd_ratio * 2 / 3, rd_divisor,
                                                                                round_limit=0.0)
        self.conv1 = nn.Conv2d(channels, rd_channels, 1, bias=paper, **dd)
        self.bn1 = nn.BatchNorm2d(rd_channels, **dd)
        self.act = get_act_layer(act_layer)()
        self.conv_h = nn.Conv2d(rd_channels, channels, 1, bias=paper, **dd)
        self.conv_w = nn.Conv2d(rd_channels, channels, 1, bias=paper, **dd)
        self.gate = _ProductGate(get_act_layer(gate_layer)())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        profile_h = x.mean(3, keepdim=True)                                   # (B, C, H, 1)
        profile_w = x.mean(2, keepdim=True).transpose(-1, -2)                 # (B, C, W, 1)
        y = self.act(self.bn1(self.conv1(torch.cat([profile_h, profile_w], dim=2))))   # (B, m, H + W, 1)
        y_h, y_w = torch.split(y, [height, width], dim=2)
        return x * self.gate(self.conv_h(y_h), self.conv_w(y_w.transpose(-1, -2)))    # (B, C, H, 1)·(B, C, 1, W)
