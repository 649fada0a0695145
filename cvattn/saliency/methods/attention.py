"""Native maps of the Vision Transformer, read from ``model.forward_attention`` on the patch grid (H/p, W/p).

Each map is one row of a (T, T) token-to-token matrix: the row of the token the head reads. That is the class
token for ``global_pool='token'``; for ``global_pool='avg'`` the head reads the mean of the patch tokens, so the
row is the mean of the patch rows (the class token, still computed, reaches no logit there).

- ``'attention'``: the last layer's row, averaged over heads.
- ``'rollout'`` (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers"): per layer the
  head-averaged attention plus the identity for the residual, rows renormalised, multiplied in layer order
  (R = Â_L ⋯ Â_1); that row of R.
- ``'grad_rollout'``: Chefer, Gur, Wolf, "Generic Attention-model Explainability for Interpreting Bi-Modal and
  Encoder-Decoder Transformers", ICCV 2021, Eqs. 5-6 (the same rule as jacobgil/vit-explain's "gradient attention
  rollout", less its discard ratio): per layer Ā = mean_h ReLU(∇A ⊙ A), gradients of the target logit;
  R = I, then R ← R + Ā·R layer by layer; that row of R.

The class token's own entry is dropped; the remaining N = H/p · W/p entries are the patches in row-major order.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.saliency.registry import reads_attention, register_method

VIT_NEEDS = "a Vision Transformer's attention (model.forward_attention)"


def _pooled_row_on_grid(model: nn.Module, relevance: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """The row of (B, T, T) that the head reads → (B, H/p, W/p) over the patches."""
    prefix = model.num_prefix_tokens
    if model.global_pool == "avg":
        patches = relevance[:, prefix:, prefix:].mean(1)                        # (B, N)
    else:
        patches = relevance[:, 0, prefix:]                                       # (B, N)
    return patches.reshape(-1, *model.grid_size_for(images.shape[-2:]))


@register_method("attention", reads_attention, VIT_NEEDS)
def last_layer_attention(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        _, attn = model.forward_attention(images)                               # (B, L, heads, T, T)
    return _pooled_row_on_grid(model, attn[:, -1].mean(1), images)


@register_method("rollout", reads_attention, VIT_NEEDS)
def attention_rollout(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        _, attn = model.forward_attention(images)                               # (B, L, heads, T, T)
    fused = attn.mean(2)                                                         # (B, L, T, T)
    fused = fused + torch.eye(fused.shape[-1], device=fused.device, dtype=fused.dtype)
    fused = fused / fused.sum(-1, keepdim=True)
    rollout = fused[:, 0]
    for layer in range(1, fused.shape[1]):
        rollout = fused[:, layer] @ rollout                                      # (B, T, T)
    return _pooled_row_on_grid(model, rollout, images)


@register_method("grad_rollout", reads_attention, VIT_NEEDS)
def gradient_rollout(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    logits, maps = model.forward_attention(images.detach().requires_grad_(True), stack=False)
    grads = torch.autograd.grad(logits.gather(1, targets[:, None]).sum(), maps)  # L × (B, heads, T, T)
    tokens = maps[0].shape[-1]
    relevance = torch.eye(tokens, device=images.device, dtype=maps[0].dtype).expand(images.shape[0], -1, -1)
    for attn, grad in zip(maps, grads):
        weighted = (grad * attn).relu().mean(1).detach()                         # (B, T, T)
        relevance = relevance + weighted @ relevance
    return _pooled_row_on_grid(model, relevance, images)
