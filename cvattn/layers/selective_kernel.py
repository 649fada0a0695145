"""Selective Kernel convolution (Li, Wang, Hu, Yang. "Selective Kernel Networks", CVPR 2019).

split: parallel convolution paths of different receptive fields (3×3, and 5×5 as a 3×3 with dilation 2), each
conv + BN + ReLU; fuse: sum the paths, global average pool, FC C→d, BN, ReLU; select: FC d→C·paths, softmax across
the paths per channel; the output is the paths weighted by it and summed.

Conventions (``convention`` or the names ``'sk'`` / ``'sk_timm'``):

==============  ================================  ===============================================
                ``'paper'`` (default)              ``'timm'`` (timm ``SelectiveKernel``)
==============  ================================  ===============================================
path input      the whole input (``split_input``   each path sees C/paths input channels
                False)                             (``split_input=True``)
width d         max(C · rd_ratio, 32) (L = 32)     make_divisible(C · rd_ratio, 8)
==============  ================================  ===============================================

The state_dict is timm's (``paths.i.conv``/``.bn``, ``attn.fc_reduce``/``bn``/``fc_select``); with ``'timm'``
outputs equal timm's. Deviations: the paper uses grouped convolutions (G=32 in SKNet-50); ``groups`` defaults to
1, as in timm, since the block is dropped into narrow networks. timm's anti-aliasing and drop layers are left out.

Map: the selection weights are (B, paths, C, 1, 1); ``self.channel`` (kind 'channel') outputs the first (smallest
kernel) path's weight per channel, (B, C, 1, 1); with two paths the other's is one minus it.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
import torch.nn as nn

from cvattn.checks import check_channels
from cvattn.layers.gates import ChannelGate
from cvattn.layers.helpers import LayerType, check_convention, get_act_layer, make_divisible


def _inplace(act_layer: type) -> nn.Module:
    """The activation in place where it can be (after a BN, as timm has it: no copy of the largest tensors)."""
    return act_layer(inplace=True) if act_layer in (nn.ReLU, nn.SiLU, nn.Hardswish) else act_layer()


class SelectiveKernelAttn(nn.Module):
    """The fuse and select steps: stacked paths (B, P, C, H, W) → softmax weights across paths (B, P, C, 1, 1)."""

    def __init__(self, channels: int, num_paths: int, attn_channels: int, act_layer=nn.ReLU, device=None,
                 dtype=None):
        super().__init__()
        self.num_paths = num_paths
        self.fc_reduce = nn.Conv2d(channels, attn_channels, 1, bias=False, device=device, dtype=dtype)
        self.bn = nn.BatchNorm2d(attn_channels, device=device, dtype=dtype)
        self.act = _inplace(act_layer)
        self.fc_select = nn.Conv2d(attn_channels, channels * num_paths, 1, bias=False, device=device, dtype=dtype)

    def forward(self, paths: torch.Tensor) -> torch.Tensor:
        batch, num_paths, channels = paths.shape[:3]
        fused = paths.sum(1).mean((2, 3), keepdim=True)                           # (B, C, 1, 1)
        logits = self.fc_select(self.act(self.bn(self.fc_reduce(fused))))         # (B, P·C, 1, 1)
        return logits.view(batch, num_paths, channels, 1, 1).softmax(1)


class PathSelect(ChannelGate):
    """The select step as a channel site: ``forward(paths, weights)`` is the weighted sum of the paths (the block's
    output, which the channel-gate saliency map reads); ``self.gate`` outputs the first path's weights (B, C, 1, 1)."""

    def __init__(self):
        super().__init__(nn.Identity())

    def forward(self, paths: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        self.gate(weights[:, 0])
        return (paths * weights).sum(1)                                        # (B, C, H, W)


class SelectiveKernel(nn.Module):
    """SK convolution with ``channels`` in and out; ``self.channel`` shows the first path's weights (B, C, 1, 1)."""

    def __init__(
        self,
        channels: int,
        out_channels: int | None = None,
        kernel_size: Sequence[int] = (3, 5),
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        rd_ratio: float = 1 / 16,
        rd_channels: int | None = None,
        rd_divisor: int = 8,
        keep_3x3: bool = True,
        split_input: bool | None = None,
        act_layer: LayerType = "relu",
        convention: str = "paper",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_channels("SelectiveKernel", channels)
        dd = dict(device=device, dtype=dtype)
        timm_like = check_convention(convention) == "timm"
        out_channels = out_channels or channels
        kernel_sizes = [kernel_size] * 2 if isinstance(kernel_size, int) else list(kernel_size)
        if not kernel_sizes or any(k < 3 or k % 2 == 0 for k in kernel_sizes):
            raise ValueError(f"SelectiveKernel kernel sizes must be odd and >= 3, got {kernel_size!r}.")
        num_paths = len(kernel_sizes)
        if keep_3x3:   # a k×k kernel becomes a 3×3 with dilation (k-1)/2: same receptive field, fewer weights
            dilations, kernel_sizes = [dilation * (k - 1) // 2 for k in kernel_sizes], [3] * num_paths
        else:
            dilations = [dilation] * num_paths
        self.split_input = timm_like if split_input is None else split_input
        path_in = channels
        if self.split_input:
            if channels % num_paths:
                raise ValueError(f"SelectiveKernel with split_input splits the {channels} input channels among "
                                 f"{num_paths} paths, which needs channels divisible by {num_paths}.")
            path_in = channels // num_paths
        groups = min(out_channels, groups)
        if path_in % groups or out_channels % groups:
            raise ValueError(f"SelectiveKernel groups={groups} must divide the path input ({path_in}) and output "
                             f"({out_channels}) channels; accepted: a common divisor such as 1.")
        act = get_act_layer(act_layer)
        self.num_paths, self.path_in = num_paths, path_in
        self.paths = nn.ModuleList(nn.Sequential(OrderedDict(
            conv=nn.Conv2d(path_in, out_channels, k, stride=stride, padding=d * (k - 1) // 2, dilation=d,
                           groups=groups, bias=False, **dd),
            bn=nn.BatchNorm2d(out_channels, **dd),
            act=_inplace(act),
        )) for k, d in zip(kernel_sizes, dilations))
        if not rd_channels:
            rd_channels = (make_divisible(out_channels * rd_ratio, rd_divisor) if timm_like
                           else max(int(out_channels * rd_ratio), 32))
        self.attn = SelectiveKernelAttn(out_channels, num_paths, rd_channels, act, **dd)
        self.channel = PathSelect()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs = torch.split(x, self.path_in, 1) if self.split_input else [x] * self.num_paths
        paths = torch.stack([path(part) for path, part in zip(self.paths, inputs)], dim=1)   # (B, P, C, H, W)
        return self.channel(paths, self.attn(paths))   # weights (B, P, C, 1, 1): softmax across paths
