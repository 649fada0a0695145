"""Squeeze-and-Excitation (Hu, Shen, Sun. "Squeeze-and-Excitation Networks", CVPR 2018).

squeeze = global average pool; excitation = FC(C→C/r), ReLU, FC(C/r→C), sigmoid; the input is scaled
channel-wise by the result.

Deviations and conventions:
- The FC layers are 1×1 convolutions (identical maths; the state_dict matches timm's ``SEModule``).
- ``convention='paper'`` (name ``'se'``): reduced width ``round(C·rd_ratio)``, at least 1 (C=64, r=16 → 4).
  ``convention='timm'`` (name ``'se_timm'``): the width is rounded to a multiple of 8 (C=64 → 8).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.checks import check_channels
from cvattn.layers.helpers import LayerType, check_convention, get_act_layer, make_divisible


class SEModule(nn.Module):
    """Channel attention by squeeze-and-excitation; the applied gate is the output of ``self.gate``, (B, C, 1, 1)."""

    attn_kind = "channel"   # cvattn.contracts.AttentionBlock: self.gate's output is the attention

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int | None = None,
        act_layer: LayerType = "relu",
        gate_layer: LayerType = "sigmoid",
        bias: bool = True,
        convention: str = "paper",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_channels("SEModule", channels)
        dd = dict(device=device, dtype=dtype)
        check_convention(convention)
        if rd_divisor is None:
            rd_divisor = 8 if convention == "timm" else 1
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.fc1 = nn.Conv2d(channels, rd_channels, kernel_size=1, bias=bias, **dd)
        self.act = get_act_layer(act_layer)()
        self.fc2 = nn.Conv2d(rd_channels, channels, kernel_size=1, bias=bias, **dd)
        self.gate = get_act_layer(gate_layer)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        squeezed = x.mean((2, 3), keepdim=True)                  # (B, C, 1, 1)
        excited = self.fc2(self.act(self.fc1(squeezed)))         # (B, C, 1, 1)
        return x * self.gate(excited)
