"""Triplet attention (Misra, Nalamada, Arasanipalai, Hou. "Rotate to Attend: Convolutional Triplet Attention
Module", WACV 2021).

Three branches, each a CBAM-like spatial gate on a different pair of axes: Z-pool (the max and the mean along the
remaining axis, concatenated) → 7×7 convolution (no bias) + BN → sigmoid. Branch ``hw`` pools over channels and
weights (H, W); ``cw`` pools over H and weights (C, W); ``hc`` pools over W and weights (H, C). The output is the
average of the three weighted inputs: x · (s_hw + s_cw + s_hc) / 3. timm has no triplet attention.

Implementation: the authors' code rotates the whole input (permute + contiguous copy) for each branch; this block
pools along the axis directly and only permutes the small pooled maps, which is the same maths (tests compare it
with the rotating form) at a fraction of the memory traffic. The state_dict keys are the authors'
(``cw``/``hc``/``hw`` . ``conv.conv``/``conv.bn``), and the BN momentum is their 0.01. Their ``no_spatial``
variant (without the ``hw`` branch) is left out.

Map: ``self.hw`` (kind 'spatial') outputs the H-W branch's weights, (B, 1, H, W). The other branches' weights,
(B, C, 1, W) and (B, C, H, 1), are not per-position maps and are not offered.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from cvattn.layers.helpers import LayerType, get_act_layer


class ZPoolGate(nn.Module):
    """Z-pooled (B, 2, A, B') map → 7×7 conv + BN → gate: weights (B, 1, A, B')."""

    def __init__(self, kernel_size: int = 7, gate_layer: LayerType = "sigmoid", device=None, dtype=None):
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"TripletAttention kernel_size must be a positive odd integer, got {kernel_size}.")
        self.conv = nn.Sequential(OrderedDict(
            conv=nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False, device=device, dtype=dtype),
            bn=nn.BatchNorm2d(1, momentum=0.01, device=device, dtype=dtype),
        ))
        self.gate = get_act_layer(gate_layer)()

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        # oneDNN runs this 2→1 convolution several times faster, backward included, on a channels-last input.
        return self.gate(self.conv(pooled.contiguous(memory_format=torch.channels_last)))


class SpatialZPoolGate(ZPoolGate):
    """The H-W branch: its ``gate`` outputs the spatial weights (B, 1, H, W)."""

    attn_kind = "spatial"   # cvattn.contracts.AttentionBlock


def z_pool(x: torch.Tensor, dim: int) -> torch.Tensor:
    """[max, mean] along ``dim``, stacked as two channels: (B, C, H, W) → (B, 2, ...the other two axes)."""
    return torch.stack([x.max(dim).values, x.mean(dim)], dim=1)


class TripletAttention(nn.Module):
    """Triplet attention; ``self.hw`` shows the spatial branch's weights (B, 1, H, W)."""

    def __init__(self, channels: int | None = None, kernel_size: int = 7, gate_layer: LayerType = "sigmoid",
                 device=None, dtype=None):
        super().__init__()
        # `channels` is accepted for the shared constructor vocabulary; the branches are independent of width.
        dd = dict(device=device, dtype=dtype)
        self.cw = ZPoolGate(kernel_size, gate_layer, **dd)
        self.hc = ZPoolGate(kernel_size, gate_layer, **dd)
        self.hw = SpatialZPoolGate(kernel_size, gate_layer, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s_cw = self.cw(z_pool(x, 2)).transpose(1, 2)                       # (B, 2, C, W) → (B, C, 1, W)
        s_hc = self.hc(z_pool(x, 3).transpose(2, 3)).permute(0, 3, 2, 1)   # (B, 2, H, C) → (B, C, H, 1)
        s_hw = self.hw(torch.cat([x.max(1, keepdim=True).values, x.mean(1, keepdim=True)], 1))   # (B, 1, H, W)
        return x * ((s_hw + s_cw + s_hc) / 3)
