"""Efficient Channel Attention (Wang et al. "ECA-Net: Efficient Channel Attention for Deep Convolutional Neural
Networks", CVPR 2020).

Global average pool, then a 1-D convolution across channels (no bias, no dimensionality reduction), sigmoid.
The kernel size adapts to the width: ``k = |log2(C)/γ + b/γ|_odd`` with γ=2, b=1, computed as in timm's
``EcaModule`` (``t = int(|log2(C) + b| / γ)``, the next odd number, at least 3): C=16..96 → 3,
128..1024 → 5, 2048 → 7.

Deviation: the paper's released ImageNet weights use fixed per-stage kernels (3, 5, 5, 7 for ResNet-50); pass
``kernel_size`` to reproduce those.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

from cvattn.checks import check_channels
from cvattn.layers.helpers import LayerType, get_act_layer


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """The adaptive kernel size of ECA for ``channels`` channels."""
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class EcaModule(nn.Module):
    """Channel attention by a 1-D convolution over pooled channels; ``self.gate`` outputs (B, C, 1, 1)."""

    attn_kind = "channel"   # cvattn.contracts.AttentionBlock: self.gate's output is the attention

    def __init__(
        self,
        channels: int,
        kernel_size: int | None = None,
        gamma: float = 2,
        beta: float = 1,
        gate_layer: LayerType = "sigmoid",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_channels("EcaModule", channels)
        if kernel_size is None:
            kernel_size = eca_kernel_size(channels, gamma, beta)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"EcaModule kernel_size must be a positive odd integer, got {kernel_size}.")
        self.conv = nn.Conv1d(1, 1, kernel_size=kernel_size, padding=(kernel_size - 1) // 2, bias=False,
                              device=device, dtype=dtype)
        self.gate = get_act_layer(gate_layer)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        pooled = x.mean((2, 3)).view(batch, 1, channels)        # (B, 1, C): channels become the 1-D axis
        mixed = self.conv(pooled).view(batch, channels, 1, 1)    # (B, C, 1, 1)
        return x * self.gate(mixed)
