"""Attention as three interchangeable parts: a score function, a softmax alignment, a weighted-sum fusion.

For queries q_i (Nq of width d_q) and keys k_j / values v_j (Nk of width d_k):

    e_ij = score(q_i, k_j)          the score function (below)
    a_ij = softmax_j(e_ij)          the alignment (over the keys a mask allows; times a window, see local-p)
    out_i = Σ_j a_ij v_j            the fusion

Score functions (``create_score(name, query_dim, key_dim)``; each maps q (…, Nq, d_q), k (…, Nk, d_k) to
e (…, Nq, Nk)):

- ``'dot'``: e = qᵀk. Luong, Pham, Manning, "Effective Approaches to Attention-based Neural Machine
  Translation", EMNLP 2015 (Eq. 8, "dot"). Needs d_q = d_k.
- ``'scaled_dot'``: e = qᵀk / √d_k. Vaswani et al., "Attention Is All You Need", NeurIPS 2017 (Eq. 1). Needs
  d_q = d_k.
- ``'general'``: e = qᵀ W k, W a learned d_q × d_k matrix. Luong et al. 2015 (Eq. 8, "general").
- ``'additive'``: e = vᵀ tanh(W_q q + W_k k), W_q: d_q → d_a, W_k: d_k → d_a, v ∈ R^{d_a}. Bahdanau, Cho, Bengio,
  "Neural Machine Translation by Jointly Learning to Align and Translate", ICLR 2015 (appendix A.1.2, e_ij =
  v_aᵀ tanh(W_a s_{i-1} + U_a h_j)); d_a = ``hidden_dim``, by default d_k.

``ScoreAttention(dim, num_heads, score=...)`` is multi-head attention with any of them: tokens (B, N, dim) are
projected to per-head queries, keys and values (W_Q, W_K, W_V), scored, aligned, fused, the heads concatenated
and projected (W_O), as in Vaswani et al. The queries are the input tokens (self-attention, ``num_queries=None``;
``qkv`` holds W_Q, W_K, W_V stacked, timm's and cvattn's ViT layout) or ``num_queries`` learned vectors
(``queries``, projected by ``q``; keys and values by ``kv``) that attend over the input, as in set pooling.
``forward`` returns ``(output, weights or None)`` like ``nn.MultiheadAttention``, and ``last_attn`` keeps the
weights of the latest call, (B, heads, Nq, Nk), detached.

``window`` (Luong et al.'s local-p, Eq. 10): a non-negative weighting (…, Nq, Nk) that multiplies the softmax
alignment, a_ij = softmax_j(e_ij) · window_ij; together with an ``attn_mask`` of the window's support the softmax
runs over the positions inside the window only, as in the paper. The weights then do not sum to 1 (nor do the
paper's).

Deviations: the papers are single-head; here the ``general`` and ``additive`` parameters act on the per-head
widths and are shared by the heads (each head already has its own W_Q and W_K). Bahdanau's and Luong's queries
are a decoder's states; here they are tokens or learned vectors.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.checks import check_choice, check_count

SCORES = ("dot", "scaled_dot", "general", "additive")


def _check_widths(owner: str, q: torch.Tensor, k: torch.Tensor, query_dim: int, key_dim: int) -> None:
    if q.shape[-1] != query_dim or k.shape[-1] != key_dim:
        raise ValueError(f"{owner} was built for query width {query_dim} and key width {key_dim}; got queries of "
                         f"width {q.shape[-1]} (shape {tuple(q.shape)}) and keys of width {k.shape[-1]} "
                         f"(shape {tuple(k.shape)}).")


class DotScore(nn.Module):
    """e = qᵀk (Luong et al. 2015, "dot"); no parameters."""

    name = "dot"

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        if query_dim != key_dim:
            raise ValueError(f"The {self.name!r} score compares queries and keys coordinate by coordinate, so their "
                             f"widths must be equal; got query width {query_dim} and key width {key_dim}. Use "
                             f"'general' or 'additive', which learn a map between the two widths.")
        self.query_dim = self.key_dim = query_dim

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        _check_widths(type(self).__name__, q, k, self.query_dim, self.key_dim)
        return q @ k.transpose(-2, -1)                                            # (…, Nq, Nk)


class ScaledDotScore(DotScore):
    """e = qᵀk / √d_k (Vaswani et al. 2017); no parameters."""

    name = "scaled_dot"

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__(query_dim, key_dim)
        self.scale = key_dim ** -0.5

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        _check_widths(type(self).__name__, q, k, self.query_dim, self.key_dim)
        # scaling q touches Nq·d numbers, scaling the scores Nq·Nk
        return (q * self.scale) @ k.transpose(-2, -1)                             # (…, Nq, Nk)


class GeneralScore(nn.Module):
    """e = qᵀ W k (Luong et al. 2015, "general"); ``weight`` is W, (d_q, d_k), no bias (the paper has none)."""

    def __init__(self, query_dim: int, key_dim: int):
        super().__init__()
        self.query_dim, self.key_dim = query_dim, key_dim
        self.weight = nn.Parameter(torch.empty(query_dim, key_dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        _check_widths(type(self).__name__, q, k, self.query_dim, self.key_dim)
        return (q @ self.weight) @ k.transpose(-2, -1)                            # (…, Nq, d_k) → (…, Nq, Nk)


class AdditiveScore(nn.Module):
    """e = vᵀ tanh(W_q q + W_k k) (Bahdanau et al. 2015); ``query_weight``: W_q (d_a, d_q), ``key_weight``: W_k
    (d_a, d_k), no biases (the paper has none), ``v``: (d_a,). Materialises (…, Nq, Nk, d_a)."""

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int | None = None):
        super().__init__()
        hidden_dim = key_dim if hidden_dim is None else check_count("hidden_dim", hidden_dim)
        self.query_dim, self.key_dim = query_dim, key_dim
        self.query_weight = nn.Parameter(torch.empty(hidden_dim, query_dim))
        self.key_weight = nn.Parameter(torch.empty(hidden_dim, key_dim))
        self.v = nn.Parameter(torch.empty(hidden_dim))
        for weight in (self.query_weight, self.key_weight):
            nn.init.xavier_uniform_(weight)
        nn.init.normal_(self.v, std=hidden_dim ** -0.5)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        _check_widths(type(self).__name__, q, k, self.query_dim, self.key_dim)
        projected_q, projected_k = F.linear(q, self.query_weight), F.linear(k, self.key_weight)
        hidden = torch.tanh(projected_q.unsqueeze(-2) + projected_k.unsqueeze(-3))   # (…, Nq, Nk, d_a)
        return hidden @ self.v                                                    # (…, Nq, Nk)


_SCORE_CLASSES = {"dot": DotScore, "scaled_dot": ScaledDotScore, "general": GeneralScore, "additive": AdditiveScore}


def create_score(name: str, query_dim: int, key_dim: int, **kwargs) -> nn.Module:
    """The score function ``name`` (one of ``SCORES``) for queries of width ``query_dim`` and keys of width
    ``key_dim``; ``kwargs`` go to its class (``hidden_dim`` for ``'additive'``)."""
    check_choice("score function", name, SCORES)
    check_count("query_dim", query_dim)
    check_count("key_dim", key_dim)
    return _SCORE_CLASSES[name](query_dim, key_dim, **kwargs)


class ScoreAttention(nn.Module):
    """Multi-head attention with a selectable score function (module docstring).

    Args:
        dim: token width; every head gets ``dim / num_heads`` channels.
        num_heads: heads.
        score: a name of ``SCORES``; ``score_kwargs`` go to it.
        num_queries: None: the queries are the input tokens (self-attention, ``qkv``); n: n learned queries
            (``queries``, (n, dim)) attend over the input (``q``, ``kv``), the output has n tokens.
        qkv_bias: biases of the Q/K/V projections.
        attn_drop: dropout on the attention weights (the returned weights are before it).
    """

    def __init__(self, dim: int, num_heads: int = 1, score: str = "scaled_dot", num_queries: int | None = None,
                 qkv_bias: bool = True, attn_drop: float = 0.0, **score_kwargs):
        super().__init__()
        check_count("dim", dim)
        check_count("num_heads", num_heads)
        if dim % num_heads:
            raise ValueError(f"dim={dim} is not divisible by num_heads={num_heads}: every head gets dim / num_heads "
                             f"channels; choose num_heads among the divisors of {dim}.")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.score = create_score(score, self.head_dim, self.head_dim, **score_kwargs)
        self.num_queries = num_queries
        if num_queries is None:
            self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        else:
            check_count("num_queries", num_queries)
            self.queries = nn.Parameter(torch.empty(num_queries, dim))
            nn.init.trunc_normal_(self.queries, std=0.02)
            self.q = nn.Linear(dim, dim, bias=qkv_bias)
            self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.last_attn: torch.Tensor | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, dim) → (B, heads, N, d_head)."""
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, need_weights: bool = False,
                window: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Tokens (B, N, dim) → (output (B, Nq, dim), weights (B, heads, Nq, N) if ``need_weights`` else None);
        Nq = N for self-attention, ``num_queries`` otherwise.

        ``attn_mask``: bool, broadcastable to (B, heads, Nq, N), True where attention is allowed (a row must allow
        at least one key). ``window``: non-negative, broadcastable to (B, heads, Nq, N), multiplies the alignment.
        """
        if x.ndim != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"ScoreAttention was built for tokens of width dim={self.dim} and takes (B, N, "
                             f"{self.dim}); got a tensor of shape {tuple(x.shape)}.")
        if self.num_queries is None:
            qkv = self.qkv(x).reshape(x.shape[0], x.shape[1], 3, self.num_heads, self.head_dim)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)                        # each (B, heads, N, d_head)
        else:
            queries = self.q(self.queries).expand(x.shape[0], -1, -1)             # (B, Nq, dim)
            q = self._heads(queries)
            k, v = map(self._heads, self.kv(x).chunk(2, dim=-1))                  # each (B, heads, N, d_head)
        scores = self.score(q, k)                                                 # (B, heads, Nq, N)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        attn = scores.softmax(dim=-1)
        if window is not None:
            attn = attn * window
        self.last_attn = attn.detach()
        out = self.attn_drop(attn) @ v                                            # (B, heads, Nq, d_head)
        out = out.transpose(1, 2).reshape(x.shape[0], -1, self.dim)               # heads concatenated
        return self.proj(out), attn if need_weights else None
