"""ResNets with an attention slot (He, Zhang, Ren, Sun. "Deep Residual Learning for Image Recognition", CVPR 2016).

- ``resnet20`` / ``resnet56``: the CIFAR ResNets of the paper's section 4.2: a 3×3 stem of 16 channels, three
  stages of 16/32/64 channels with n = 3 / 9 basic blocks each, global average pooling, one linear layer.
- ``resnet18``: four stages of 64/128/256/512 channels with 2 basic blocks each, on a 3×3 stride-1 stem and no
  max-pool, the usual variant for 28×28 and 32×32 inputs.

Every block has an ``attn_layer`` slot (``'none'``, ``'se'``, ``'eca'``, ``'cbam'``, ``'spatial'``, ... see
``cvattn.list_attn()``; or a block class, see ``cvattn.layers``) placed after the last BN of the residual branch, before the add, as in SENet, CBAM and
timm. ``se_resnet20``, ``cbam_resnet56`` and so on are registered shorthands.

Deviation: down-sampling shortcuts are 1×1 convolutions + BN (the paper's option B) in all models; the paper's
CIFAR models use zero-padded identity shortcuts (option A).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from cvattn.checks import check_images
from cvattn.layers import get_attn
from cvattn.layers.create_attn import AttnLayer
from cvattn.models._registry import register_model


class BasicBlock(nn.Module):
    """3×3 conv → BN → ReLU → 3×3 conv → BN → attention, plus the shortcut, then ReLU."""

    def __init__(self, in_chs: int, out_chs: int, stride: int = 1, attn_layer: AttnLayer = None,
                 attn_kwargs: dict | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, out_chs, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chs)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chs, out_chs, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chs)
        attn = get_attn(attn_layer)
        self.attn = nn.Identity() if attn is None else attn(out_chs, **(attn_kwargs or {}))
        self.shortcut = nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.shortcut = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_chs))
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.attn(self.bn2(self.conv2(out)))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """A ResNet of basic blocks: ``stem`` → ``stages`` → global average pool → ``fc``.

    Backbone use, as in timm: ``forward_features`` (last stage map), ``forward_head(x, pre_logits=False)``,
    ``forward_intermediates`` (every stage's map), and ``features_only=True``, with which ``forward`` returns the
    maps of the stages in ``out_indices``; ``feature_info`` lists each stage's ``num_chs``, ``reduction`` and
    ``module``.
    """

    def __init__(
        self,
        depths: Sequence[int],
        widths: Sequence[int],
        num_classes: int = 10,
        in_chans: int = 3,
        attn_layer: AttnLayer = None,
        attn_kwargs: dict | None = None,
        drop_rate: float = 0.0,
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
    ):
        super().__init__()
        if in_chans < 1 or num_classes < 1:
            raise ValueError(f"in_chans and num_classes must be positive, got in_chans={in_chans}, "
                             f"num_classes={num_classes}.")
        get_attn(attn_layer)  # unknown names fail here, before any layer is built
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.stem = nn.Sequential(nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages, self.feature_info = [], []
        in_chs, reduction = widths[0], 1
        for index, (depth, width) in enumerate(zip(depths, widths)):
            stride = 1 if index == 0 else 2
            reduction *= stride
            blocks = [BasicBlock(in_chs if i == 0 else width, width, stride if i == 0 else 1, attn_layer, attn_kwargs)
                      for i in range(depth)]
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"stages.{index}"))
            in_chs = width
        self.stages = nn.Sequential(*stages)
        self.num_features = in_chs
        self.features_only = features_only
        self.out_indices = tuple(range(len(stages)) if out_indices is None else out_indices)
        if features_only:
            self.feature_info = [self.feature_info[i] for i in self.out_indices]
        else:
            self.global_pool = nn.AdaptiveAvgPool2d(1)
            self.head_drop = nn.Dropout(drop_rate)
            self.fc = nn.Linear(in_chs, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # Zero-init the last BN of each residual branch: every block starts as the identity, which trains
        # faster and more stably (Goyal et al. 2017).
        for m in self.modules():
            if isinstance(m, BasicBlock):
                nn.init.zeros_(m.bn2.weight)

    def forward_intermediates(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output map, (B, C_i, H / reduction_i, W / reduction_i)."""
        check_images(type(self).__name__, x, self.in_chans)
        x = self.stem(x)
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map, (B, num_features, H', W')."""
        check_images(type(self).__name__, x, self.in_chans)
        return self.stages(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x).flatten(1))     # (B, num_features)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            maps = self.forward_intermediates(x)
            return [maps[i] for i in self.out_indices]
        return self.forward_head(self.forward_features(x))


_ARCHS = {   # name -> (blocks per stage, widths)
    "resnet20": ((3, 3, 3), (16, 32, 64)),
    "resnet56": ((9, 9, 9), (16, 32, 64)),
    "resnet18": ((2, 2, 2, 2), (64, 128, 256, 512)),
}


def _create_resnet(arch: str, kwargs: dict, attn_layer: AttnLayer = None) -> ResNet:
    """``ResNet`` of ``arch``'s depths and widths; ``attn_layer`` is the variant's default, an ``attn_layer`` in
    ``kwargs`` (the user's) wins."""
    depths, widths = _ARCHS[arch]
    return ResNet(depths, widths, **{"attn_layer": attn_layer, **kwargs})


@register_model
def resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, no attention (``attn_layer`` adds it)."""
    return _create_resnet("resnet20", kwargs)


@register_model
def se_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, SE attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="se")


@register_model
def eca_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, ECA attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="eca")


@register_model
def cbam_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, CBAM attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="cbam")


@register_model
def spatial_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, spatial-only (CBAM's spatial gate) attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="spatial")


@register_model
def ese_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, effective SE attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="ese")


@register_model
def ceca_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, circular ECA attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="ceca")


@register_model
def ge_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, Gather-Excite attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="ge")


@register_model
def gc_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, Global Context (scaling fusion) attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="gc")


@register_model
def gca_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, Global Context (additive fusion) attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="gca")


@register_model
def coord_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, coordinate attention attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="coord")


@register_model
def nl_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, non-local attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="nl")


@register_model
def sk_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, Selective Kernel attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="sk")


@register_model
def lcbam_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, light CBAM attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="lcbam")


@register_model
def bam_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, BAM attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="bam")


@register_model
def triplet_resnet20(**kwargs) -> ResNet:
    """ResNet-20 for CIFAR, triplet attention attention in every block."""
    return _create_resnet("resnet20", kwargs, attn_layer="triplet")


@register_model
def resnet56(**kwargs) -> ResNet:
    """ResNet-56 for CIFAR, no attention (``attn_layer`` adds it)."""
    return _create_resnet("resnet56", kwargs)


@register_model
def se_resnet56(**kwargs) -> ResNet:
    """ResNet-56 for CIFAR, SE attention in every block."""
    return _create_resnet("resnet56", kwargs, attn_layer="se")


@register_model
def eca_resnet56(**kwargs) -> ResNet:
    """ResNet-56 for CIFAR, ECA attention in every block."""
    return _create_resnet("resnet56", kwargs, attn_layer="eca")


@register_model
def cbam_resnet56(**kwargs) -> ResNet:
    """ResNet-56 for CIFAR, CBAM attention in every block."""
    return _create_resnet("resnet56", kwargs, attn_layer="cbam")


@register_model
def spatial_resnet56(**kwargs) -> ResNet:
    """ResNet-56 for CIFAR, spatial-only (CBAM's spatial gate) attention in every block."""
    return _create_resnet("resnet56", kwargs, attn_layer="spatial")


@register_model
def resnet18(**kwargs) -> ResNet:
    """ResNet-18 on a 3×3 stride-1 stem, no attention (``attn_layer`` adds it)."""
    return _create_resnet("resnet18", kwargs)


@register_model
def se_resnet18(**kwargs) -> ResNet:
    """ResNet-18 on a 3×3 stride-1 stem, SE attention in every block."""
    return _create_resnet("resnet18", kwargs, attn_layer="se")


@register_model
def eca_resnet18(**kwargs) -> ResNet:
    """ResNet-18 on a 3×3 stride-1 stem, ECA attention in every block."""
    return _create_resnet("resnet18", kwargs, attn_layer="eca")


@register_model
def cbam_resnet18(**kwargs) -> ResNet:
    """ResNet-18 on a 3×3 stride-1 stem, CBAM attention in every block."""
    return _create_resnet("resnet18", kwargs, attn_layer="cbam")


@register_model
def spatial_resnet18(**kwargs) -> ResNet:
    """ResNet-18 on a 3×3 stride-1 stem, spatial-only (CBAM's spatial gate) attention in every block."""
    return _create_resnet("resnet18", kwargs, attn_layer="spatial")
