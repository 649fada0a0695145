"""BAM: Bottleneck Attention Module (Park, Woo, Lee, Kweon. "BAM: Bottleneck Attention Module", BMVC 2018).

Two branches on the same input, summed, then a sigmoid: M(F) = σ(M_c(F) + M_s(F)), F' = F + F ⊗ M(F).
- channel branch M_c (B, C, 1, 1): global average pool, FC C→C/r, BN, ReLU, FC C/r→C;
- spatial branch M_s (B, 1, H, W): 1×1 conv C→C/r, BN, ReLU, two 3×3 convs with dilation d (each + BN, ReLU),
  1×1 conv C/r→1;
with r = 16 and d = 4 as in the paper. timm has no BAM.

Deviations and choices:
- The paper sums the branches (its Eq. 1, and the ablation that prefers the sum); the authors' released code
  multiplies them (``1 + sigmoid(M_c * M_s)``). This block follows the paper.
- The paper writes the BN at each branch's output; the released code puts BN after each hidden layer and none at
  the output. This block follows the code's layer structure (it is what their reported models trained with).
- The FC layers are 1×1 convolutions on the pooled (B, C, 1, 1) descriptor (same maths as Linear + BatchNorm1d).
- The paper places BAM once per stage, at the bottlenecks; as an ``attn_layer`` it sits in every block.
- The reduced width is round(C · rd_ratio), at least 1, so narrow layers (C < 16) work.

Map: ``self.gate`` outputs the applied weights M(F), (B, C, H, W) per channel and position; the block is declared
'spatial' (its spatial map is the mean over channels).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn

from cvattn.checks import check_channels
from cvattn.layers.helpers import LayerType, get_act_layer, make_divisible


class BamModule(nn.Module):
    """BAM; ``self.channel`` and ``self.spatial`` are the branches (logits), ``self.gate`` outputs M(F)."""

    attn_kind = "spatial"   # cvattn.contracts.AttentionBlock: per-channel-and-position weights (B, C, H, W)

    def __init__(
        self,
        channels: int,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        dilation: int = 4,
        num_dilated: int = 2,
        act_layer: LayerType = "relu",
        gate_layer: LayerType = "sigmoid",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_channels("BamModule", channels)
        dd = dict(device=device, dtype=dtype)
        act = get_act_layer(act_layer)
        if not rd_channels:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.channel = nn.Sequential(OrderedDict(
            fc1=nn.Conv2d(channels, rd_channels, 1, **dd), bn=nn.BatchNorm2d(rd_channels, **dd), act=act(),
            fc2=nn.Conv2d(rd_channels, channels, 1, **dd),
        ))
        spatial = OrderedDict(reduce=nn.Conv2d(channels, rd_channels, 1, **dd),
                              reduce_bn=nn.BatchNorm2d(rd_channels, **dd), reduce_act=act())
        for i in range(num_dilated):
            spatial[f"conv{i}"] = nn.Conv2d(rd_channels, rd_channels, 3, padding=dilation, dilation=dilation, **dd)
            spatial[f"bn{i}"] = nn.BatchNorm2d(rd_channels, **dd)
            spatial[f"act{i}"] = act()
        spatial["final"] = nn.Conv2d(rd_channels, 1, 1, **dd)
        self.spatial = nn.Sequential(spatial)
        self.gate = get_act_layer(gate_layer)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channel_logits = self.channel(x.mean((2, 3), keepdim=True))        # (B, C, 1, 1)
        spatial_logits = self.spatial(x)                                   # (B, 1, H, W)
        return x * (1 + self.gate(channel_logits + spatial_logits))        # F + F ⊗ σ(M_c + M_s)
