"""CNN classifiers whose global average pooling is replaced by an attention-pooling head.

``AttentionPoolClassifier(backbone, num_classes, head=..., score=...)`` puts one of the heads of
``cvattn.layers.attention_pool`` on any ``cvattn.contracts.FeatureBackbone`` (its ``forward_features`` map):

- ``head='attn'``: one shared learned query (``AttentionPool2d``);
- ``head='class_attn'``: one query per class, class-specific logits (``ClassAttentionPool2d``);
- ``head='local_p'``: Luong et al.'s local-p window around a predicted centre (``LocalPAttentionPool2d``);

with any score function of ``cvattn.layers.score_attention.SCORES``. The head is ``attn_pool`` (timm's name for
its ViT's attention-pooling head). The model keeps the backbone contract (``forward_features``, ``forward_head``,
``feature_info`` with module paths under ``backbone.``, ``features_only=True``) and offers
``forward_pool_attention``: the head's attention as a map per image (``cvattn.contracts.AttentionPooler``), which
``cvattn.saliency``'s ``'pool_attention'`` method reads.

Registered: ``attnpool_*``, ``classattn_*``, ``localp_*`` on ``convnet2``, ``convnet4`` (the saliency benchmark's
100×100 CNN) and ``resnet20`` (their keyword arguments
go to the backbone, except ``num_classes``, ``score``, ``num_heads``, ``drop_rate``, ``half_window``,
``hidden_dim`` and ``features_only``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from cvattn.checks import check_choice
from cvattn.contracts import FeatureBackbone
from cvattn.layers.attention_pool import AttentionPool2d, ClassAttentionPool2d, LocalPAttentionPool2d
from cvattn.models._registry import register_model
from cvattn.models.convnet import ConvNet, convnet2, convnet4  # noqa: F401  (ConvNet: named in create_model's errors)
from cvattn.models.resnet import ResNet, resnet20  # noqa: F401  (ResNet: likewise)

HEADS = {"attn": AttentionPool2d, "class_attn": ClassAttentionPool2d, "local_p": LocalPAttentionPool2d}


class AttentionPoolClassifier(nn.Module):
    """``backbone.forward_features`` → an attention-pooling head → logits.

    Args:
        backbone: a ``FeatureBackbone``; best built with ``features_only=True`` (its own classifier is unused).
        num_classes: classes.
        head: ``'attn'``, ``'class_attn'`` or ``'local_p'`` (module docstring).
        score, num_heads, drop_rate: the head's score function, attention heads and dropout before the classifier.
        features_only: no head; ``forward`` returns ``backbone(x)`` (the maps ``feature_info`` lists).
        head_kwargs: more arguments of the head (``half_window`` for ``'local_p'``, ``hidden_dim`` for the
            ``'additive'`` score).
    """

    def __init__(self, backbone: nn.Module, num_classes: int = 10, head: str = "attn", score: str = "scaled_dot",
                 num_heads: int = 1, drop_rate: float = 0.0, features_only: bool = False, **head_kwargs):
        super().__init__()
        check_choice("attention-pooling head", head, HEADS)
        if not isinstance(backbone, FeatureBackbone):
            raise ValueError(f"AttentionPoolClassifier needs a backbone with forward_features, forward_head and "
                             f"feature_info (cvattn.contracts.FeatureBackbone); got a {type(backbone).__name__}. "
                             f"Pass a cvattn CNN or a timm model.")
        self.backbone = backbone
        if hasattr(backbone, "in_chans"):
            self.in_chans = backbone.in_chans
        self.feature_info = [dict(info, module=f"backbone.{info['module']}") for info in backbone.feature_info]
        self.num_features = self.feature_info[-1]["num_chs"]
        self.features_only = features_only
        self.num_classes = 0 if features_only else num_classes     # timm's attribute: 0 means no classifier
        if not features_only:
            self.attn_pool = HEADS[head](self.num_features, num_classes, score, num_heads, drop_rate, **head_kwargs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)                    # (B, num_features, H', W')

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.attn_pool(x, pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.backbone(x)
        return self.forward_head(self.forward_features(x))

    def forward_pool_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, num_classes) and the head's attention (B, Q, H', W') on the feature map, averaged over heads:
        Q = num_classes for ``'class_attn'`` (row k: class k's map), else 1; for ``'local_p'`` window × attention."""
        return self.attn_pool.forward_with_attention(self.forward_features(x))


_HEAD_ARGS = ("num_classes", "score", "num_heads", "drop_rate", "half_window", "hidden_dim", "features_only")


def _create(backbone_fn: Callable[..., nn.Module], head: str, kwargs: dict) -> AttentionPoolClassifier:
    """The backbone ``backbone_fn(features_only=True, **backbone kwargs)`` under the head ``head``."""
    head_kwargs = {key: kwargs.pop(key) for key in _HEAD_ARGS if key in kwargs}
    return AttentionPoolClassifier(backbone_fn(features_only=True, **kwargs), head=head, **head_kwargs)


@register_model
def attnpool_convnet2(**kwargs) -> AttentionPoolClassifier:
    """convnet2 with one shared learned query pooling its last map instead of global average pooling."""
    return _create(convnet2, "attn", kwargs)


@register_model
def classattn_convnet2(**kwargs) -> AttentionPoolClassifier:
    """convnet2 with one learned query per class pooling its last map; class-specific logits."""
    return _create(convnet2, "class_attn", kwargs)


@register_model
def localp_convnet2(**kwargs) -> AttentionPoolClassifier:
    """convnet2 with Luong's local-p attention (predicted centre, Gaussian window) pooling its last map."""
    return _create(convnet2, "local_p", kwargs)


@register_model
def attnpool_convnet4(**kwargs) -> AttentionPoolClassifier:
    """convnet4 with one shared learned query pooling its last map instead of global average pooling."""
    return _create(convnet4, "attn", kwargs)


@register_model
def classattn_convnet4(**kwargs) -> AttentionPoolClassifier:
    """convnet4 with one learned query per class pooling its last map; class-specific logits."""
    return _create(convnet4, "class_attn", kwargs)


@register_model
def localp_convnet4(**kwargs) -> AttentionPoolClassifier:
    """convnet4 with Luong's local-p attention (predicted centre, Gaussian window) pooling its last map."""
    return _create(convnet4, "local_p", kwargs)


@register_model
def attnpool_resnet20(**kwargs) -> AttentionPoolClassifier:
    """ResNet-20 with one shared learned query pooling its last stage instead of global average pooling."""
    return _create(resnet20, "attn", kwargs)


@register_model
def classattn_resnet20(**kwargs) -> AttentionPoolClassifier:
    """ResNet-20 with one learned query per class pooling its last stage; class-specific logits."""
    return _create(resnet20, "class_attn", kwargs)


@register_model
def localp_resnet20(**kwargs) -> AttentionPoolClassifier:
    """ResNet-20 with Luong's local-p attention (predicted centre, Gaussian window) pooling its last stage."""
    return _create(resnet20, "local_p", kwargs)
