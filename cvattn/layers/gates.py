"""Gate sites: parameter-free sub-blocks through which a block shows an attention map it computes inside.

A block whose attention is not a plain ``x * gate(logits)`` (Global Context's softmax over positions, Selective
Kernel's choice between paths) still offers its map by the ``cvattn.contracts.AttentionBlock`` protocol: it routes
the map through one of these, whose ``gate`` output is what ``capture_attention`` and the gate saliency maps read.
They hold no weights, so a block's ``state_dict`` keys stay those of timm's block.

As for SE, a channel site's own output is the features it gated (``x · gate(logits)``): the channel-gate saliency
map, ReLU(Σ_c g_c·A_c), reads it there. A spatial site's output is its weights.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ChannelGate(nn.Module):
    """A channel-attention site: ``forward(x, logits)`` is ``x · gate(logits)``; ``self.gate`` outputs (B, C, 1, 1)."""

    attn_kind = "channel"   # cvattn.contracts.AttentionBlock

    def __init__(self, gate: nn.Module):
        super().__init__()
        self.gate = gate

    def forward(self, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        return x * self.gate(logits)


class SpatialGate(nn.Module):
    """A spatial-attention site: ``forward(logits)`` is ``gate(logits)``, the weights (B, 1, H, W)."""

    attn_kind = "spatial"   # cvattn.contracts.AttentionBlock

    def __init__(self, gate: nn.Module):
        super().__init__()
        self.gate = gate

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.gate(logits)


class SoftmaxOverPositions(nn.Module):
    """(B, 1, H, W) logits → (B, 1, H, W) weights that sum to 1 over the H·W positions of each image."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.flatten(2).softmax(-1).view_as(logits)
