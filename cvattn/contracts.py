"""The contracts between cvattn's parts: what a block or a model offers so that the rest finds it.

Each contract is a small ``typing.Protocol`` checked by its attributes, not a base class: a module of any origin
(a user's own block, a timm or torchvision model behind an adapter) takes part by offering the attributes, without
importing cvattn. ``isinstance(module, AttentionBlock)`` is how ``capture_attention``, the gate saliency maps and the
model factories find blocks; the saliency registry asks the model contracts which methods apply.

- ``AttentionBlock``: a block whose ``gate`` submodule outputs the attention it applies, and whose ``attn_kind``
  says how to read that output: ``'channel'``, weights per channel (B, C, 1, 1); ``'spatial'``, weights per
  position (B, 1, H, W), or per channel and position (B, C, H, W) (coordinate attention, BAM), which spatial maps
  average over channels. A block with several gates is built of several such blocks (CBAM: a channel one, then a
  spatial one), each found on its own.
- ``FeatureBackbone``: timm's backbone interface: ``forward_features`` returns the last feature map, whose producing
  module ``feature_info[-1]['module']`` names; ``forward_head`` turns it into logits.
- ``AttentionReader``: a transformer whose ``forward_attention`` returns logits and every layer's attention
  weights (B, L, heads, T, T) from the same maths as its forward; ``num_prefix_tokens`` tokens (class, registers)
  come before the patches, on the grid ``grid_size_for((H, W))``; ``global_pool`` says which row the head reads.
- ``AttentionPooler``: a CNN whose head pools the last feature map by attention (``attn_pool``);
  ``forward_pool_attention(x)`` returns logits and that attention as maps (B, Q, h, w) on the feature map:
  Q = 1 for one shared query, Q = num_classes for one query per class (row k: class k's map).
- ``GlimpseModel``: hard attention: ``forward(x, return_trajectory=True)`` returns ``(logits, trajectory)`` with the
  glimpse locations in ``trajectory.locations`` (B, T, 2) in [-1, 1], read through ``sensor`` (``num_scales``
  patches, the finest ``glimpse_size`` pixels wide).
- ``RegionSampler``: a spatial transformer (``cvattn.layers.SpatialTransformer``): after a forward,
  ``last_theta`` (B, 2, 3) is the affine map it sampled its input through, and ``sampled_boxes((H, W))`` the
  sampled regions as (B, 4) pixel boxes of an (H, W) input. Not an ``AttentionBlock``: it resamples, it gates
  nothing.
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn as nn

ATTN_KINDS = ("channel", "spatial")


@runtime_checkable
class AttentionBlock(Protocol):
    attn_kind: str      # one of ATTN_KINDS
    gate: nn.Module     # its output is the attention: (B, C, 1, 1) 'channel'; (B, 1 or C, H, W) 'spatial'


@runtime_checkable
class FeatureBackbone(Protocol):
    feature_info: list[dict[str, Any]]   # timm's: num_chs, reduction, module (a path in named_modules())

    def forward_features(self, x: torch.Tensor) -> torch.Tensor: ...

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor: ...


@runtime_checkable
class AttentionReader(Protocol):
    num_prefix_tokens: int
    global_pool: str

    def forward_attention(self, x: torch.Tensor, stack: bool = True) -> tuple[torch.Tensor, Any]: ...

    def grid_size_for(self, image_size: tuple[int, int]) -> tuple[int, int]: ...


@runtime_checkable
class AttentionPooler(Protocol):
    attn_pool: nn.Module   # the head (cvattn.layers.attention_pool)

    def forward_pool_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


@runtime_checkable
class GlimpseModel(Protocol):
    sensor: nn.Module
    num_glimpses: int

    def forward(self, x: torch.Tensor, return_trajectory: bool = False, sample: bool | None = None) -> Any: ...


@runtime_checkable
class RegionSampler(Protocol):
    last_theta: torch.Tensor | None     # (B, 2, 3) of the last forward, detached; None before any

    def sampled_boxes(self, image_size: tuple[int, int]) -> torch.Tensor: ...
