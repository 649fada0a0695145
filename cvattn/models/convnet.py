"""A small convolutional network: two conv blocks, global average pooling, a linear classifier.

The "2 Conv + pooling" baseline of the Fashion-MNIST benchmark table and the conv baseline beside the recurrent
attention model; with ``attn_layer`` it is also the quickstart attention CNN. Each block is
conv 3×3 → BN → ReLU → conv 3×3 → BN → attention → ReLU → 2×2 max-pool.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.layers import get_attn
from cvattn.models._registry import register_model


class ConvBlock(nn.Module):
    def __init__(self, in_chs: int, out_chs: int, attn_layer: str | None, attn_kwargs: dict | None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        attn = get_attn(attn_layer)
        self.attn = nn.Identity() if attn is None else attn(out_chs, **(attn_kwargs or {}))
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        return self.pool(self.act(self.attn(self.bn2(self.conv2(x)))))


class ConvNet(nn.Module):
    """Two ``ConvBlock``s of ``width`` and ``2 * width`` channels, then pool and classify."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32, attn_layer: str | None = None,
                 attn_kwargs: dict | None = None, drop_rate: float = 0.0):
        super().__init__()
        get_attn(attn_layer)
        self.in_chans = in_chans
        self.blocks = nn.Sequential(ConvBlock(in_chans, width, attn_layer, attn_kwargs),
                                    ConvBlock(width, 2 * width, attn_layer, attn_kwargs))
        self.feature_info = [dict(num_chs=width, reduction=2, module="blocks.0"),
                             dict(num_chs=2 * width, reduction=4, module="blocks.1")]
        self.num_features = 2 * width
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ValueError(f"ConvNet was built for in_chans={self.in_chans} and takes (B, {self.in_chans}, H, W) "
                             f"images; got a tensor of shape {tuple(x.shape)}.")
        return self.blocks(x)                                    # (B, 2 * width, H / 4, W / 4)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model
def convnet2(**kwargs) -> ConvNet:
    """Two conv blocks (32 and 64 channels by default); ``attn_layer`` adds attention to each."""
    return ConvNet(**kwargs)
