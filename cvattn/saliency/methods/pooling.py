"""Native maps of the attention-pooling heads (``cvattn.layers.attention_pool``), read from
``model.forward_pool_attention`` on the last feature map's grid: the weights with which the head pooled it.

- one shared query (``head='attn'``): its attention over the positions, the same for every target;
- one query per class (``head='class_attn'``): the target class's own attention, the map its logit is pooled
  from;
- local-p (``head='local_p'``): the Gaussian window around the predicted centre times the soft attention, the
  weights the values were actually summed with.

Multi-head attention is averaged over heads. Models are found by ``cvattn.contracts.AttentionPooler``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.contracts import AttentionPooler
from cvattn.saliency.registry import register_method


def pools_by_attention(model: nn.Module) -> bool:
    """A CNN with an attention-pooling head (``cvattn.contracts.AttentionPooler``)."""
    return isinstance(model, AttentionPooler)


@register_method("pool_attention", pools_by_attention, "an attention-pooling head (cvattn.models.attnpool: "
                 "model.forward_pool_attention)")
def pool_attention(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        _, maps = model.forward_pool_attention(images)                          # (B, Q, h, w)
    if maps.shape[1] == 1:                                                       # one query for every class
        return maps[:, 0]
    return maps[torch.arange(len(maps), device=maps.device), targets]            # the target class's own map
