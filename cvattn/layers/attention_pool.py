"""Attention-pooling heads: learned queries attend over a CNN feature map's positions in place of global average
pooling, and each head's attention is its own saliency map.

A feature map (B, C, H, W) is read as H·W tokens of width C; ``ScoreAttention`` (``cvattn.layers.score_attention``,
any score function) lets learned queries attend over them: a_q = softmax(score(W_Q query_q, W_K x_s)) over the
positions s, pooled_q = W_O Σ_s a_q(s) W_V x_s.

- ``AttentionPool2d``: one shared query; the pooled vector feeds a linear classifier. With every a(s) = 1/(H·W)
  and W_V, W_O the identity it is global average pooling. Learned-query pooling of this kind is the "PMA" of Lee
  et al., "Set Transformer", ICML 2019, and timm's ``AttentionPoolLatent``.
- ``ClassAttentionPool2d``: one query per class; class k's pooled vector z_k gives its own logit
  w_kᵀ z_k + b_k, so a_k, class k's attention over the positions, is a class-specific saliency map that the
  logit is computed from (class-specific attention as in Zhu and Wu, "Residual Attention: A Simple but Effective
  Method for Multi-Label Recognition", ICCV 2021, whose per-class queries are the classifier's own weights; here
  they are separate learned queries, and no average-pooled residual is added).
- ``LocalPAttentionPool2d``: Luong, Pham, Manning, "Effective Approaches to Attention-based Neural Machine
  Translation", EMNLP 2015, local-p attention (Eqs. 9, 10) in two dimensions. A centre is predicted from the
  feature map's mean g, p = (size - 1) · sigmoid(v_pᵀ tanh(W_p g)) per axis (rows, columns); the soft attention
  over the positions inside the square window |row - p_row| ≤ D, |col - p_col| ≤ D is multiplied by a Gaussian
  exp(-‖s - p‖² / 2σ²) with **σ = D / 2** (the paper's choice), D = ``half_window`` positions. Its map is the
  product window × attention that weights the values.

Deviations: Luong et al. predict p from a decoder state over a 1-D source of length S, p ∈ [0, S]; here from the
mean feature over a 2-D grid, p ∈ [0, H - 1] × [0, W - 1] (the window's centre is always on the grid), and v_p
starts at zero, so every centre starts in the middle of the map. No position embeddings are added to the
tokens (unlike CLIP's attention pool), so any input size works; where to look is chosen by content (and, for
local-p, by the predicted centre).

Each head: ``forward(features, pre_logits=False)`` → logits (B, num_classes) (``pre_logits``: the pooled
features, (B, C), or (B, num_classes, C) for the per-class head) and ``forward_with_attention(features)`` →
(logits, maps (B, Q, H, W)), the attention averaged over heads, Q = 1 or, per class, num_classes.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from cvattn.checks import check_channels, check_count
from cvattn.layers.score_attention import ScoreAttention


class AttentionPool2d(nn.Module):
    """One learned query attends over the H·W positions; a linear classifier on the pooled (B, C) vector.

    Args:
        channels: the feature map's channels C.
        num_classes: classes.
        score: the score function (``cvattn.layers.score_attention.SCORES``); ``score_kwargs`` go to it.
        num_heads: attention heads (must divide ``channels``).
        drop_rate: dropout before the classifier.
    """

    class_queries = False

    def __init__(self, channels: int, num_classes: int, score: str = "scaled_dot", num_heads: int = 1,
                 drop_rate: float = 0.0, **score_kwargs):
        super().__init__()
        self.channels = check_channels(type(self).__name__, channels)
        self.num_classes = check_count("num_classes", num_classes)
        num_queries = num_classes if self.class_queries else 1
        self.attn = ScoreAttention(channels, num_heads, score, num_queries=num_queries, **score_kwargs)
        self.head_drop = nn.Dropout(drop_rate)
        self._init_classifier()

    def _init_classifier(self) -> None:
        self.fc = nn.Linear(self.channels, self.num_classes)

    def _tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) → (B, H·W, C), after checking C."""
        if x.ndim != 4 or x.shape[1] != self.channels:
            raise ValueError(f"{type(self).__name__} was built for feature maps of {self.channels} channels, "
                             f"(B, {self.channels}, H, W); got a tensor of shape {tuple(x.shape)}.")
        return x.flatten(2).transpose(1, 2)

    def pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) → (pooled (B, Q, C), attention (B, heads, Q, H·W))."""
        return self.attn(self._tokens(x), need_weights=True)

    def classify(self, pooled: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(pooled[:, 0])                                          # (B, C)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.classify(self.pool(x)[0], pre_logits)

    def forward_with_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C, H, W) → (logits (B, num_classes), attention (B, Q, H, W) averaged over heads)."""
        pooled, attn = self.pool(x)
        return self.classify(pooled), attn.mean(1).reshape(x.shape[0], -1, *x.shape[-2:])


class ClassAttentionPool2d(AttentionPool2d):
    """One learned query per class; class k's logit is ``weight[k]``ᵀ z_k + ``bias[k]`` on its own pooled z_k.

    ``pre_logits=True`` returns the per-class pooled features (B, num_classes, C).
    """

    class_queries = True

    def _init_classifier(self) -> None:
        bound = self.channels ** -0.5                                             # nn.Linear's default range
        self.weight = nn.Parameter(torch.empty(self.num_classes, self.channels).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(self.num_classes))

    def classify(self, pooled: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = self.head_drop(pooled)                                                # (B, K, C)
        return z if pre_logits else (z * self.weight).sum(-1) + self.bias         # (B, K)


class LocalPAttentionPool2d(AttentionPool2d):
    """Luong et al.'s local-p attention over the map (module docstring): a predicted centre, a square window of
    half-width ``half_window`` positions, a Gaussian of σ = half_window / 2 multiplying the soft attention.

    ``centre`` is W_p, tanh, v_p (no biases, as in the paper); ``last_centre`` keeps the latest centres (B, 2)
    as (row, column) positions on the map, detached.
    """

    def __init__(self, channels: int, num_classes: int, score: str = "scaled_dot", num_heads: int = 1,
                 drop_rate: float = 0.0, half_window: int = 2, **score_kwargs):
        super().__init__(channels, num_classes, score, num_heads, drop_rate, **score_kwargs)
        self.half_window = check_count("half_window", half_window)
        self.sigma = half_window / 2
        self.centre = nn.Sequential(nn.Linear(channels, channels, bias=False), nn.Tanh(),
                                    nn.Linear(channels, 2, bias=False))
        nn.init.zeros_(self.centre[-1].weight)                                    # every centre starts mid-map
        self.last_centre: torch.Tensor | None = None

    def window(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C, H, W) → (Gaussian window (B, H·W), inside the square window (B, H·W) bool, centre (B, 2))."""
        height, width = x.shape[-2:]
        extent = torch.tensor([height - 1, width - 1], device=x.device, dtype=x.dtype)
        centre = torch.sigmoid(self.centre(x.mean((2, 3)))) * extent             # (B, 2) in [0, H-1] × [0, W-1]
        rows, cols = torch.meshgrid(torch.arange(height, device=x.device, dtype=x.dtype),
                                    torch.arange(width, device=x.device, dtype=x.dtype), indexing="ij")
        d_row = rows.flatten() - centre[:, :1]                                    # (B, H·W)
        d_col = cols.flatten() - centre[:, 1:]
        inside = (d_row.abs() <= self.half_window) & (d_col.abs() <= self.half_window)
        gaussian = torch.exp(-(d_row ** 2 + d_col ** 2) / (2 * self.sigma ** 2))
        return gaussian * inside, inside, centre

    def pool(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        window, inside, centre = self.window(x)
        self.last_centre = centre.detach()
        # (B, 1, 1, H·W): the same window for every head and the one query
        return self.attn(self._tokens(x), attn_mask=inside[:, None, None], need_weights=True,
                         window=window[:, None, None])
