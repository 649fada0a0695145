"""Global Context block (Cao, Xu, Lin, Wei, Hu. "GCNet: Non-local Networks Meet Squeeze-Excitation Networks and
Beyond", ICCV Workshops 2019).

context modelling: a 1×1 convolution C→1 scores every position, softmax over the H·W positions, the weighted sum
of the features is one context vector (B, C, 1, 1); transform: 1×1 conv C→C·r, LayerNorm, ReLU, 1×1 conv C·r→C;
fusion: the paper adds the transform to every position (``fuse_add``, name ``'gca'``); timm's default ``'gc'``
scales by its sigmoid instead (``fuse_scale``, an SE-like gate).

Conventions: ``'paper'`` (default) reduces to ``rd_ratio=1/16`` (the paper's r=16); ``'timm'`` (``'gc_timm'``,
``'gca_timm'``) to timm's 1/8. The state_dict is timm's ``GlobalContext``; outputs equal timm's for either fusion.
As in the authors' code, the additive transform's last convolution starts at zero, weight and bias (timm zeroes only
the weight), so an additive block starts as the identity.

Maps: ``self.spatial`` (kind 'spatial') outputs the context weights (B, 1, H, W) (they sum to 1 per image);
with scale fusion, ``self.channel`` (kind 'channel') outputs the applied channel weights (B, C, 1, 1). Additive
fusion applies no multiplicative channel weights, so a ``'gca'`` block has no channel site.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.checks import check_channels
from cvattn.layers.gates import ChannelGate, SoftmaxOverPositions, SpatialGate
from cvattn.layers.helpers import LayerType, check_convention, get_act_layer, make_divisible


class _LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of (B, C, H, W), eps 1e-6 (timm's ``LayerNorm2d``)."""

    def __init__(self, num_channels: int, device=None, dtype=None):
        super().__init__(num_channels, eps=1e-6, device=device, dtype=dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


def _transform(channels: int, rd_channels: int, act: type, dd: dict) -> nn.Sequential:
    return nn.Sequential(OrderedDict(fc1=nn.Conv2d(channels, rd_channels, 1, **dd),
                                     norm=_LayerNorm2d(rd_channels, **dd), act=act(),
                                     fc2=nn.Conv2d(rd_channels, channels, 1, **dd)))


class GlobalContext(nn.Module):
    """GC block: softmax-pooled context, transformed, fused by scaling and/or adding."""

    def __init__(
        self,
        channels: int,
        use_attn: bool = True,
        fuse_add: bool = False,
        fuse_scale: bool = True,
        init_last_zero: bool = False,
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int = 1,
        act_layer: LayerType = "relu",
        gate_layer: LayerType = "sigmoid",
        convention: str = "paper",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_channels("GlobalContext", channels)
        if not (fuse_add or fuse_scale):
            raise ValueError("GlobalContext needs fuse_add=True or fuse_scale=True (or both); got neither.")
        dd = dict(device=device, dtype=dtype)
        if rd_ratio is None:
            rd_ratio = 1 / 8 if check_convention(convention) == "timm" else 1 / 16
        act = get_act_layer(act_layer)
        self.conv_attn = nn.Conv2d(channels, 1, kernel_size=1, **dd) if use_attn else None
        if rd_channels is None:
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
        self.mlp_add = _transform(channels, rd_channels, act, dd) if fuse_add else None
        self.mlp_scale = _transform(channels, rd_channels, act, dd) if fuse_scale else None
        self.spatial = SpatialGate(SoftmaxOverPositions()) if use_attn else None
        self.channel = ChannelGate(get_act_layer(gate_layer)()) if fuse_scale else None
        self.init_last_zero = init_last_zero
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.conv_attn is not None:
            nn.init.kaiming_normal_(self.conv_attn.weight, mode="fan_in", nonlinearity="relu")
        if self.mlp_add is not None:
            nn.init.zeros_(self.mlp_add.fc2.weight)
            nn.init.zeros_(self.mlp_add.fc2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels = x.shape[:2]
        if self.conv_attn is not None:
            weights = self.spatial(self.conv_attn(x))                              # (B, 1, H, W), sums to 1
            context = torch.bmm(x.reshape(batch, channels, -1), weights.view(batch, -1, 1))   # (B, C, 1)
            context = context.view(batch, channels, 1, 1)
        else:
            context = x.mean((2, 3), keepdim=True)                                 # (B, C, 1, 1)
        if self.mlp_scale is not None:
            x = self.channel(x, self.mlp_scale(context))                          # x · σ(transform)
        if self.mlp_add is not None:
            x = x + self.mlp_add(context)
        return x
