"""Spatial transformer networks: a ``SpatialTransformer`` in front of a classifier (Jaderberg et al., NIPS 2015;
docs/references.md, "Spatial transformers").

``SpatialTransformerNet(backbone, in_chans)`` puts the transformer in front of any model: a cvattn or timm
classifier, or anything mapping (B, C, H, W) images to logits. ``st_convnet2``: the paper's ST-CNN with
``convnet2`` as the CNN. ``st_conv_fc_baseline``: the transformer in front of ``conv_fc_baseline``, a CNN whose
fully connected head reads every position of its map separately (no global pooling), as the CNNs of 2015 did.

The backbone contract carries over where the backbone has it: ``forward_features`` is the backbone's on the
warped input, ``forward_head`` the backbone's, and ``feature_info`` the backbone's with every module path
prefixed ``backbone.`` (so hooks on ``feature_info[-1]['module']`` still find the last map). Reductions are
relative to the transformer's output, which is the input's size unless ``out_size`` is set. A backbone without
``forward_features`` gives a wrapper without a ``feature_info`` (not a ``FeatureBackbone``), whose
``forward_features`` raises.

Deviation from the paper: ``convnet2`` is cvattn's CNN (two conv blocks, global average pooling), not the paper's;
``conv_fc_baseline`` is Mnih et al. 2014's conv baseline (one strided conv, a hidden fc layer), not the paper's
either. Global average pooling makes ``convnet2`` nearly invariant to where the digit sits, which leaves a
transformer less to undo on translated canvases than a fully connected head does (docs/results.md).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.checks import check_images, check_int_range
from cvattn.layers.spatial_transformer import SpatialTransformer
from cvattn.models._registry import register_model
from cvattn.models.convnet import ConvFCBaseline, ConvNet


class SpatialTransformerNet(nn.Module):
    """``backbone(transformer(x))``: a spatial transformer in front of ``backbone`` (module docstring).

    Args:
        backbone: the model the warped images go to.
        in_chans: image channels; by default the backbone's ``in_chans``.
        transform, out_size, loc_width, loc_hidden: the ``SpatialTransformer``'s; loc_norm: its ``norm``.
    """

    def __init__(self, backbone: nn.Module, in_chans: int | None = None, transform: str = "affine",
                 out_size: int | tuple[int, int] | None = None, loc_width: int = 16, loc_hidden: int = 32,
                 loc_norm: bool = False):
        super().__init__()
        if in_chans is None:
            in_chans = getattr(backbone, "in_chans", None)
            if in_chans is None:
                raise ValueError(f"SpatialTransformerNet cannot tell how many channels the images of a "
                                 f"{type(backbone).__name__} have: pass in_chans.")
        self.in_chans = check_int_range("in_chans", in_chans, 1)
        self.transformer = SpatialTransformer(in_chans, transform=transform, out_size=out_size,
                                              loc_width=loc_width, loc_hidden=loc_hidden, norm=loc_norm)
        self.backbone = backbone
        for name in ("num_classes", "num_features", "head_hidden_size", "features_only"):
            if hasattr(backbone, name):
                setattr(self, name, getattr(backbone, name))
        info = getattr(backbone, "feature_info", None)
        if isinstance(info, list) and hasattr(backbone, "forward_features"):
            self.feature_info = [dict(entry, module=f"backbone.{entry['module']}") for entry in info]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self.backbone, "forward_features"):
            raise ValueError(f"The {type(self.backbone).__name__} backbone has no forward_features; call the "
                             "SpatialTransformerNet itself.")
        return self.backbone.forward_features(self.transformer(check_images("SpatialTransformerNet", x,
                                                                             self.in_chans)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.backbone.forward_head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        check_images("SpatialTransformerNet", x, self.in_chans)
        return self.backbone(self.transformer(x))                # the backbone's output on the warped images


@register_model
def st_convnet2(transform: str = "affine", out_size: int | tuple[int, int] | None = None, loc_width: int = 16,
                loc_hidden: int = 32, loc_norm: bool = False, **kwargs) -> SpatialTransformerNet:
    """ST-CNN: a ``SpatialTransformer`` (affine by default) in front of ``convnet2``; other arguments are
    ``convnet2``'s (``width``, ``attn_layer``, ``features_only``, ...)."""
    backbone = ConvNet(**kwargs)
    return SpatialTransformerNet(backbone, backbone.in_chans, transform=transform, out_size=out_size,
                                 loc_width=loc_width, loc_hidden=loc_hidden, loc_norm=loc_norm)


@register_model
def st_conv_fc_baseline(transform: str = "affine", out_size: int | None = None, loc_width: int = 16,
                        loc_hidden: int = 32, loc_norm: bool = False, **kwargs) -> SpatialTransformerNet:
    """A ``SpatialTransformer`` in front of ``conv_fc_baseline``; other arguments are ``conv_fc_baseline``'s. Its
    ``img_size`` is the transformer's output size: ``out_size`` when given (square only), else ``img_size``."""
    if out_size is not None:
        if "img_size" in kwargs and kwargs["img_size"] != out_size:
            raise ValueError(f"st_conv_fc_baseline got img_size={kwargs['img_size']} and out_size={out_size}: its "
                             "CNN sees the transformer's output, so give out_size only (the input may be any size).")
        kwargs["img_size"] = check_int_range("out_size", out_size, 1)
    backbone = ConvFCBaseline(**kwargs)
    return SpatialTransformerNet(backbone, backbone.in_chans, transform=transform, out_size=out_size,
                                 loc_width=loc_width, loc_hidden=loc_hidden, loc_norm=loc_norm)
