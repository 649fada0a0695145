"""Small convolutional networks: the baselines beside the attention models.

``convnet2``: two conv blocks, global average pooling, a linear classifier; the "2 Conv + pooling" baseline of the
Fashion-MNIST benchmark table, and with ``attn_layer`` the quickstart attention CNN. Each block is
conv 3×3 → BN → ReLU → conv 3×3 → BN → attention → ReLU → 2×2 max-pool.

``convnet4``: four blocks of one conv each (conv 3×3 → BN → attention → ReLU → 2×2 max-pool), the CNN of the
saliency benchmark on 100×100 canvases.

``conv_fc_baseline``: the "Convolutional, 2 layers" baseline of Mnih et al. 2014 (Recurrent Models of Visual
Attention) on the translated and cluttered canvases: one layer of 8 filters of 10×10 with stride 5, ReLU, a fully
connected layer of 256 ReLU units, a linear classifier. The paper gives no padding, so the convolution has none
(60×60 → 11×11); 251k parameters at 60×60, about as many as ``ram_60`` (257k).

Both are timm-style backbones: ``forward_features`` returns the last feature map, the output of the module that
``feature_info[-1]['module']`` names, and ``features_only=True`` builds one whose ``forward`` returns the maps that
``feature_info`` lists (``convnet2``: both blocks; ``conv_fc_baseline``: its convolution).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.checks import check_count, check_images
from cvattn.layers import get_attn
from cvattn.layers.create_attn import AttnLayer
from cvattn.models._registry import register_model


class ConvBlock(nn.Module):
    """``num_convs`` (1 or 2) conv 3×3 → BN, with ReLU between them; then attention → ReLU → 2×2 max-pool."""

    def __init__(self, in_chs: int, out_chs: int, attn_layer: AttnLayer, attn_kwargs: dict | None, num_convs: int = 2):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        if num_convs == 2:
            self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_chs)
        attn = get_attn(attn_layer)
        self.attn = nn.Identity() if attn is None else attn(out_chs, **(attn_kwargs or {}))
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        if hasattr(self, "conv2"):
            x = self.bn2(self.conv2(self.act(x)))
        return self.pool(self.act(self.attn(x)))


class ConvNet(nn.Module):
    """``depth`` ``ConvBlock``s of ``width``, ``2 * width``, then ``4 * width`` channels, then pool and classify.

    Each block halves the resolution. ``features_only=True``: no classifier, and ``forward`` returns every block's
    map, (B, width, H/2, W/2), (B, 2·width, H/4, W/4), ..., as ``feature_info`` lists them.

    ``attn_blocks``: the indices of the blocks that get ``attn_layer`` (default: every block). Non-local attention,
    whose cost grows with (H·W)², goes in the later, smaller blocks only, as Wang et al. 2018 place it.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, width: int = 32, attn_layer: AttnLayer = None,
                 attn_kwargs: dict | None = None, drop_rate: float = 0.0, features_only: bool = False,
                 depth: int = 2, convs_per_block: int = 2, attn_blocks: list[int] | None = None):
        super().__init__()
        check_count("depth", depth)
        if convs_per_block not in (1, 2):
            raise ValueError(f"convs_per_block must be 1 or 2, got {convs_per_block!r}.")
        attn_blocks = list(range(depth)) if attn_blocks is None else attn_blocks
        if not isinstance(attn_blocks, (list, tuple)) or not all(
                isinstance(i, int) and not isinstance(i, bool) and 0 <= i < depth for i in attn_blocks):
            raise ValueError(f"attn_blocks must be a list of block indices from 0 to {depth - 1} (depth={depth}), "
                             f"e.g. [{depth - 1}] for attention in the last block only; got {attn_blocks!r}.")
        get_attn(attn_layer)
        self.in_chans = in_chans
        widths = [width * 2 ** min(i, 2) for i in range(depth)]
        self.blocks = nn.Sequential(*[
            ConvBlock(c_in, c_out, attn_layer if i in attn_blocks else None, attn_kwargs, convs_per_block)
            for i, (c_in, c_out) in enumerate(zip([in_chans, *widths], widths))])
        self.feature_info = [dict(num_chs=c, reduction=2 ** (i + 1), module=f"blocks.{i}") for i, c in enumerate(widths)]
        self.num_features = widths[-1]
        self.features_only = features_only
        self.num_classes = 0 if features_only else num_classes   # timm's attribute: 0 means no classifier
        if not features_only:
            self.head_drop = nn.Dropout(drop_rate)
            self.fc = nn.Linear(self.num_features, num_classes)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's map, (B, width, H/2, W/2), (B, 2·width, H/4, W/4), ..."""
        check_images("ConvNet", x, self.in_chans)
        maps = []
        for block in self.blocks:
            x = block(x)
            maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        check_images("ConvNet", x, self.in_chans)
        return self.blocks(x)                                    # (B, num_features, H / 2**depth, W / 2**depth)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x.mean((2, 3)))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x)
        return self.forward_head(self.forward_features(x))


@register_model
def convnet2(**kwargs) -> ConvNet:
    """Two conv blocks (32 and 64 channels by default); ``attn_layer`` adds attention to each."""
    return ConvNet(**kwargs)


@register_model
def convnet4(**kwargs) -> ConvNet:
    """Four one-conv blocks (16, 32, 64, 64 channels by default): the saliency benchmark's CNN for 100×100 canvases.

    Its receptive field (38 px) covers a whole 28-px garment, which ``convnet2``'s (16 px) does not, and at 100×100 a
    training step costs about a fifth of ``convnet2``'s at width 32 (docs/results.md).
    """
    return ConvNet(**{"width": 16, "depth": 4, "convs_per_block": 1, **kwargs})


class ConvFCBaseline(nn.Module):
    """One strided convolution, ReLU, one hidden fully connected layer, ReLU, a linear classifier.

    ``forward_features`` returns the convolution's map (B, filters, side, side), the output of ``self.conv`` that
    ``feature_info`` names (Grad-CAM's default layer); ``forward_head`` applies the ReLU, the hidden layer and the
    classifier (``pre_logits=True``: the hidden layer's (B, hidden) output). ``features_only=True``: no hidden layer
    or classifier, ``forward`` returns ``[conv map]``.

    Args:
        num_classes, in_chans: classes and image channels.
        img_size: the (square) input size, which sets the hidden layer's input width.
        filters, kernel_size, stride: the convolution (paper: 8, 10, 5).
        hidden: the fully connected layer's width (paper: 256).
        features_only: build the backbone only (the convolution).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int = 60, filters: int = 8,
                 kernel_size: int = 10, stride: int = 5, hidden: int = 256, features_only: bool = False):
        super().__init__()
        if img_size < kernel_size:
            raise ValueError(f"img_size={img_size} is smaller than kernel_size={kernel_size}; the convolution has "
                             f"no padding, so images must be at least {kernel_size} pixels wide.")
        self.in_chans, self.img_size = in_chans, img_size
        self.conv = nn.Conv2d(in_chans, filters, kernel_size, stride=stride)
        self.feature_info = [dict(num_chs=filters, reduction=stride, module="conv")]
        self.num_features = filters
        self.head_hidden_size = hidden      # timm's name for the width forward_head(pre_logits=True) returns
        self.features_only = features_only
        self.num_classes = 0 if features_only else num_classes   # timm's attribute: 0 means no classifier
        if not features_only:
            side = (img_size - kernel_size) // stride + 1
            self.fc = nn.Linear(filters * side * side, hidden)
            self.head = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (self.in_chans, self.img_size, self.img_size):
            raise ValueError(f"ConvFCBaseline was built for (B, {self.in_chans}, {self.img_size}, {self.img_size}) "
                             f"images (in_chans, img_size); got a tensor of shape {tuple(x.shape)}.")
        return self.conv(x)                                                 # (B, filters, side, side)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.relu(self.fc(torch.relu(x).flatten(1)))                   # (B, hidden)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return [self.forward_features(x)]
        return self.forward_head(self.forward_features(x))


@register_model
def conv_fc_baseline(**kwargs) -> ConvFCBaseline:
    """Mnih et al. 2014's conv baseline: 8 filters of 10×10, stride 5, then 256 hidden units (60×60 input)."""
    return ConvFCBaseline(**kwargs)
