"""Non-local block (Wang, Girshick, Gupta, He. "Non-local Neural Networks", CVPR 2018), embedded-Gaussian form.

θ, φ, g: 1×1 convolutions C→m; every position attends to every other, softmax_j(θ_iᵀ φ_j · s); the attended g
is mapped back by a 1×1 convolution m→C (W_z), batch-normalised and added to the input: z = BN(W_z y) + x. The BN's
scale and shift start at zero, so the block starts as the identity (as in the paper).

Conventions (``convention`` or the names ``'nl'`` / ``'nl_timm'``):

==============  ==============================  ============================================
                ``'paper'`` (default)            ``'timm'`` (timm ``NonLocalAttn``)
==============  ==============================  ============================================
width m         C / 2 (``rd_ratio=1/2``)         make_divisible(C / 8, 8)
logit scale s   1                                C^-1/2 (the input width, not m)
==============  ==============================  ============================================

The state_dict is timm's (``t``=θ, ``p``=φ, ``g``, ``z``=W_z, ``norm``); with ``'timm'`` outputs equal timm's.

Map: the applied attention is an (H·W)×(H·W) matrix; ``self.gate`` outputs the attention each position receives,
averaged over the querying positions, (B, 1, H, W) (it sums to 1 per image), and the block is declared 'spatial'.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.checks import check_channels
from cvattn.layers.helpers import check_convention, make_divisible


class MeanAttentionReceived(nn.Module):
    """(B, N, N) attention (rows: queries) → (B, 1, H, W): each key position's mean over queries."""

    def forward(self, attn: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return attn.mean(1).view(attn.shape[0], 1, *size)


class NonLocalAttn(nn.Module):
    """Non-local block; ``self.gate`` outputs the mean attention each position receives, (B, 1, H, W)."""

    attn_kind = "spatial"   # cvattn.contracts.AttentionBlock

    def __init__(
        self,
        channels: int,
        use_scale: bool | None = None,
        rd_ratio: float | None = None,
        rd_channels: int | None = None,
        rd_divisor: int | None = None,
        convention: str = "paper",
        device=None,
        dtype=None,
    ):
        super().__init__()
        check_channels("NonLocalAttn", channels)
        dd = dict(device=device, dtype=dtype)
        timm_like = check_convention(convention) == "timm"
        use_scale = timm_like if use_scale is None else use_scale
        if rd_channels is None:
            rd_ratio = rd_ratio or (1 / 8 if timm_like else 1 / 2)
            rd_channels = make_divisible(channels * rd_ratio, rd_divisor or (8 if timm_like else 1))
        if not isinstance(rd_channels, int) or rd_channels < 1:
            raise ValueError(f"NonLocalAttn needs rd_channels >= 1, got {rd_channels!r}.")
        self.scale = channels ** -0.5 if use_scale else 1.0
        self.t = nn.Conv2d(channels, rd_channels, 1, **dd)
        self.p = nn.Conv2d(channels, rd_channels, 1, **dd)
        self.g = nn.Conv2d(channels, rd_channels, 1, **dd)
        self.z = nn.Conv2d(rd_channels, channels, 1, **dd)
        self.norm = nn.BatchNorm2d(channels, **dd)
        self.gate = MeanAttentionReceived()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.t, self.p, self.g, self.z):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        nn.init.zeros_(self.norm.weight)
        nn.init.zeros_(self.norm.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        query = self.t(x).flatten(2).transpose(1, 2)                  # (B, N, m), N = H·W
        key = self.p(x).flatten(2)                                    # (B, m, N)
        value = self.g(x).flatten(2).transpose(1, 2)                  # (B, N, m)
        attn = (torch.bmm(query, key) * self.scale).softmax(-1)       # (B, N, N), rows sum to 1
        self.gate(attn, (height, width))
        y = torch.bmm(attn, value).transpose(1, 2).reshape(batch, -1, height, width)   # (B, m, H, W)
        return self.norm(self.z(y)) + x
