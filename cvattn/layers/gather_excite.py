"""Gather-Excite (Hu, Shen, Albanie, Sun, Vedaldi. "Gather-Excite: Exploiting Feature Context in Convolutional
Neural Networks", NeurIPS 2018).

gather: pool each channel over a neighbourhood of ``extent`` (``extent=0``: the whole map; ``extent=e``: an average
pool with kernel 2e−1 and stride e, or, with ``extra_params=True``, log2(e) strided depthwise 3×3 convolutions with
BN); excite: (optionally an MLP C→C/r→C), nearest-neighbour upsampling back to H×W, sigmoid, scale.

Conventions (``convention`` or the names ``'ge'`` / ``'ge_timm'``):
- ``'paper'`` (default): GE-θ⁻ with no MLP unless ``use_mlp=True`` (the paper's parameter-free operator).
- ``'timm'``: timm's ``GatherExcite`` default, ``use_mlp=True`` (at ``extent=0`` that is SE with ``rd_divisor=1``).
The state_dict is timm's, and outputs equal timm's (tests/test_blocks.py) for both conventions, every extent, with
and without parameters.

Deviations: ``extra_params=True`` with ``extent=0`` (a depthwise convolution as large as the feature map) needs the
map size fixed at construction, which a drop-in block does not know, so it is refused; timm's experimental
``add_maxpool`` is left out. timm 1.0.31 itself cannot build ``use_mlp=True`` (its default) or ``extra_params=True``
(its constructor passes ``device``/``dtype`` positionally and fails); the parity tests repair those calls only.

Attention kind: at ``extent=0`` the gate is (B, C, 1, 1) channel attention; with ``extent>0`` it is a per-channel,
per-position map (B, C, H, W), declared ``'spatial'`` (its spatial map is the mean over channels).
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.checks import check_channels
from cvattn.layers.helpers import LayerType, check_convention, get_act_layer, make_divisible


class GatherExcite(nn.Module):
    """Gather-Excite; ``self.gate`` outputs the applied weights, (B, C, 1, 1) or, with ``extent>0``, (B, C, H, W)."""

    attn_kind = "channel"   # cvattn.contracts.AttentionBlock; 'spatial' on instances with extent > 0

    def __init__(
        self,
        channels: int,
        extra_params: bool = False,
        extent: int = 0,
        use_mlp: bool | None = None,
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
        check_channels("GatherExcite", channels)
        dd = dict(device=device, dtype=dtype)
        use_mlp = (check_convention(convention) == "timm") if use_mlp is None else use_mlp
        if extent < 0 or (extent and (extent & (extent - 1))):
            raise ValueError(f"GatherExcite extent must be 0 (global) or a power of 2 (2, 4, 8, ...), got {extent}.")
        if extra_params and extent == 0:
            raise ValueError("GatherExcite with extra_params=True needs extent > 0 (2, 4, 8, ...): the global "
                             "extent with parameters needs the feature-map size fixed at construction.")
        act = get_act_layer(act_layer)
        self.extent = extent
        if extent:
            self.attn_kind = "spatial"
        self.gather = None
        if extra_params:   # log2(extent) strided depthwise convolutions; names as timm's for its state_dict
            layers = OrderedDict()
            num_conv = int(math.log2(extent))
            for i in range(1, num_conv + 1):
                layers[f"conv{i}"] = nn.Conv2d(channels, channels, 3, stride=2, padding=1, groups=channels,
                                               bias=False, **dd)
                layers[f"norm{i}"] = nn.BatchNorm2d(channels, **dd)
                if i != num_conv:
                    layers[f"act{i}"] = act()
            self.gather = nn.Sequential(layers)
        self.mlp = nn.Identity()
        if use_mlp:
            if not rd_channels:
                rd_channels = make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)
            self.mlp = nn.Sequential(OrderedDict(fc1=nn.Conv2d(channels, rd_channels, 1, **dd), act=act(),
                                                 fc2=nn.Conv2d(rd_channels, channels, 1, **dd)))
        self.gate = get_act_layer(gate_layer)()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gather is not None:
            gathered = self.gather(x)                                          # (B, C, H/e, W/e)
        elif self.extent == 0:
            gathered = x.mean((2, 3), keepdim=True)                            # (B, C, 1, 1)
        else:
            k = 2 * self.extent - 1
            gathered = F.avg_pool2d(x, k, stride=self.extent, padding=k // 2, count_include_pad=False)
        excited = self.mlp(gathered)
        if excited.shape[-2:] != (1, 1):
            excited = F.interpolate(excited, size=x.shape[-2:])                # nearest, back to (B, C, H, W)
        return x * self.gate(excited)
