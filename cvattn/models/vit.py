"""Vision Transformer whose attention can always be read.

Dosovitskiy et al. "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale", ICLR 2021.
An image is cut into p×p patches, each patch is projected to ``embed_dim`` (a stride-p convolution), a learned
class token is prepended and learned position embeddings are added; pre-norm blocks (LN → multi-head
self-attention → residual, LN → MLP → residual) follow, and the class token (or the mean of the patch tokens)
feeds a linear classifier.

Multi-head self-attention, per head h with d_head = embed_dim / num_heads:
    A_h = softmax(Q_h K_hᵀ / √d_head),  head_h = A_h V_h,  out = concat(head_1 … head_H) W_O.

Two paths compute it. ``forward`` uses ``F.scaled_dot_product_attention`` (fused, never materialises A);
``forward_attention`` writes the formula out and returns every layer's A. Both give the same output (tested to
1e-5), and the ordinary forward pays nothing for the second path existing.

State-dict keys, initialisation and the classifier layout follow timm's ``VisionTransformer`` (timm 1.0), so
``model.load_state_dict(timm_model.state_dict())`` works and gives the same logits.

Deviations from the paper and from timm:
- ``pos_embed``: ``'learned'`` (the paper's, the default), ``'sinusoidal'`` (the fixed table of Vaswani et al.
  2017 in 2-D, ``cvattn.layers.pos_embed.sincos_2d``: rows in the first half of the channels, columns in the second,
  zeros for the class token) or ``'none'`` (no position information: the blocks see a set of patches).
- Any input size that the patch size divides is accepted: learned position embeddings are resampled (bicubic,
  anti-aliased, like timm's ``resample_abs_pos_embed`` with ``dynamic_img_size=True``) to the input's patch grid;
  the sinusoidal table is recomputed for it (each patch keeps the encoding of its row and column index).
- ``local_window=w`` restricts each patch to the patches within Chebyshev distance w on the patch grid (a
  (2w+1)×(2w+1) neighbourhood); the class token still attends to, and is attended by, every token. The paper has
  no such option; it is the "local attention" of Ramachandran et al. (NeurIPS 2019) applied to ViT tokens.
- ``attn_score`` swaps the score function QKᵀ/√d_head for Luong's dot or general or Bahdanau's additive score
  (``cvattn.layers.score_attention``); those run the explicit path in ``forward`` too.
- ``stem_channels`` puts a convolutional stem (3×3 convolutions, BatchNorm, ReLU; Xiao et al. 2021) before the
  patch projection; the paper's ViT (and the default) projects raw pixels. A ViT trained from scratch on a few
  hundred thousand cluttered canvases hardly learns with the plain projection and learns with the stem
  (docs/results.md, "Saliency benchmark").
- Only a class token, absolute position encodings and 'token'/'avg' pooling: no register tokens,
  layer scale, QK-norm or attention pooling.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cvattn.checks import check_choice, check_images, did_you_mean, state_dict_mismatch
from cvattn.layers.pos_embed import sincos_2d
from cvattn.layers.score_attention import ScoreAttention
from cvattn.models._registry import register_model

GLOBAL_POOLS = ("token", "avg")
POS_EMBEDS = ("learned", "sinusoidal", "none")


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def resample_pos_embed(
    pos_embed: torch.Tensor, new_grid: tuple[int, int], old_grid: tuple[int, int], num_prefix_tokens: int = 1
) -> torch.Tensor:
    """Resample (1, prefix + H·W, C) position embeddings from ``old_grid`` to ``new_grid`` (bicubic, anti-aliased).

    The prefix (class token) embeddings are kept as they are; the rest is treated as a C-channel H×W image.
    Same maths as timm's ``resample_abs_pos_embed`` (its default bicubic + antialias settings).
    """
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = grid.shape[-1]
    grid = grid.float().reshape(1, *old_grid, dim).permute(0, 3, 1, 2)          # (1, C, H_old, W_old)
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", antialias=True, align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim).to(pos_embed.dtype)      # (1, H_new·W_new, C)
    return torch.cat([prefix, grid], dim=1)


def local_attention_mask(
    grid_size: tuple[int, int], window: int, num_prefix_tokens: int = 1, device: torch.device | None = None
) -> torch.Tensor:
    """Which token may attend to which, (T, T) bool with T = prefix + H·W; True = allowed.

    Patch i may attend to patch j when max(|row_i - row_j|, |col_i - col_j|) ≤ ``window``; prefix tokens attend
    to everything and are attended by everything. Both attention paths turn False into an additive -inf before
    the softmax, so masked weights are exactly 0.
    """
    rows, cols = torch.meshgrid(torch.arange(grid_size[0], device=device),
                                torch.arange(grid_size[1], device=device), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()                                  # (H·W,)
    chebyshev = torch.maximum((rows[:, None] - rows).abs(), (cols[:, None] - cols).abs())  # (H·W, H·W)
    return F.pad(chebyshev <= window, (num_prefix_tokens, 0, num_prefix_tokens, 0), value=True)


class PatchEmbed(nn.Module):
    """Image (B, C, H, W) → patch tokens (B, H/p · W/p, embed_dim): a p×p convolution with stride p, or, with
    ``stem_channels``, a convolutional stem and then that projection at the stem's resolution.

    The stem (Xiao et al. 2021, "Early Convolutions Help Transformers See Better", NeurIPS 2021) is one 3×3
    convolution → BatchNorm → ReLU per entry of ``stem_channels``; each halves the resolution while the part of p
    still to be covered is even, and keeps it otherwise; the projection's kernel and stride are what remains of p.
    With p = 2ⁿ and n stem convolutions that is the paper's stem (n stride-2 convolutions, then a 1×1 projection);
    with p = 10 and two, a stride-2 and a stride-1 convolution and a 5×5 projection of stride 5. The tokens keep
    their p×p patch of the image (``grid_size``, ``patch_size``); each sees a little more around it (the 3×3
    convolutions' reach).

    ``grid_size`` is the patch grid of the build size ``img_size``; other sizes are accepted (see
    ``VisionTransformer.grid_size_for``).
    """

    def __init__(self, img_size: int | Sequence[int], patch_size: int, in_chans: int, embed_dim: int,
                 stem_channels: Sequence[int] = ()):
        super().__init__()
        if patch_size < 1:
            raise ValueError(f"patch_size must be a positive number of pixels, got {patch_size}.")
        if any(int(width) < 1 for width in stem_channels):
            raise ValueError(f"stem_channels must be positive widths (one 3×3 convolution each), got "
                             f"{list(stem_channels)}; use () for the plain patch projection.")
        self.img_size = _pair(img_size)
        self.patch_size = (patch_size, patch_size)
        if self.img_size[0] % patch_size or self.img_size[1] % patch_size:
            raise ValueError(f"img_size {self.img_size} is not divisible by patch_size {patch_size}: the image must "
                             f"split into whole patches; use an img_size that is a multiple of {patch_size}.")
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        layers, remaining, channels = [], patch_size, in_chans
        for width in stem_channels:
            stride = 2 if remaining % 2 == 0 else 1
            remaining //= stride
            layers += [nn.Conv2d(channels, width, 3, stride, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            channels = width
        self.stem = nn.Sequential(*layers) if layers else nn.Identity()
        self.proj = nn.Conv2d(channels, embed_dim, kernel_size=remaining, stride=remaining)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.stem(x)).flatten(2).transpose(1, 2)              # (B, N, C)


class Attention(nn.Module):
    """Multi-head self-attention; ``qkv`` holds W_Q, W_K, W_V stacked (timm's layout), ``proj`` is W_O."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0):
        super().__init__()
        if num_heads < 1:
            raise ValueError(f"num_heads must be ≥ 1, got {num_heads}.")
        if dim % num_heads:
            raise ValueError(f"embed_dim={dim} is not divisible by num_heads={num_heads}: every head gets "
                             f"embed_dim / num_heads channels; choose num_heads among the divisors of {dim}.")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, T, C) → (output (B, T, C), attention (B, heads, T, T) if ``need_weights`` else None).

        ``attn_mask``: (T, T) bool, True where attention is allowed. The returned weights are the softmax before
        attention dropout, so their rows sum to 1 in training mode too.
        """
        B, T, C = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)                                                  # each (B, heads, T, d_head)
        if need_weights:
            # Q/√d_head, then QKᵀ: scaling Q touches T·d_head numbers per head, scaling the scores T².
            scores = (q * self.scale) @ k.transpose(-2, -1)                      # (B, heads, T, T)
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            attn = scores.softmax(dim=-1)
            x = self.attn_drop(attn) @ v                                         # (B, heads, T, d_head)
        else:
            attn = None
            x = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                               dropout_p=self.attn_drop.p if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, T, C)                                   # heads concatenated
        return self.proj(x), attn


class Mlp(nn.Module):
    """Linear → GELU → Linear, hidden width ``mlp_ratio · dim``."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): in training, drop a residual branch for a random fraction ``p`` of the
    samples and scale the kept ones by 1 / (1 - p); the identity in eval mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        keep = x.new_empty(x.shape[0], *[1] * (x.ndim - 1)).bernoulli_(1 - self.p)   # (B, 1, 1)
        return x * keep / (1 - self.p)


class Block(nn.Module):
    """Pre-norm transformer block: x + MHSA(LN(x)), then x + MLP(LN(x)), with stochastic depth on both branches.

    ``attn_score='scaled_dot'``: ``Attention`` (fused SDPA in ``forward``); any other score of
    ``cvattn.layers.score_attention.SCORES``: ``ScoreAttention`` with that score (same ``qkv``/``proj`` layout).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 attn_drop: float = 0.0, drop_path: float = 0.0, attn_score: str = "scaled_dot"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias, attn_drop) if attn_score == "scaled_dot" else \
            ScoreAttention(dim, num_heads, attn_score, qkv_bias=qkv_bias, attn_drop=attn_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, need_weights: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        out, attn = self.attn(self.norm1(x), attn_mask, need_weights)
        x = x + self.drop_path(out)
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x, attn


class VisionTransformer(nn.Module):
    """ViT classifier with timm's constructor vocabulary and state-dict keys.

    Reading the attention (one call, no switch to flip)::

        logits, attn = model.forward_attention(images)
        # attn: (batch, depth, num_heads, tokens, tokens), rows sum to 1, tokens = 1 + H/p · W/p
        # token 0 is the class token (model.num_prefix_tokens == 1); token 1 + r·W/p + c is patch (r, c)
        cls_to_patches = attn[:, -1, :, 0, model.num_prefix_tokens:]        # (B, heads, H/p · W/p)
        # with global_pool='avg' the head reads the patch tokens' mean instead: average their rows,
        # attn[:, -1, :, 1:, 1:].mean(-2) (cvattn.saliency's 'attention' map does so)
        grid = model.grid_size_for(images.shape[-2:])                        # (H/p, W/p) of *this* input
        heatmap = cls_to_patches.mean(1).reshape(-1, *grid)

    ``model.patch_embed.grid_size`` is the grid of the build size ``img_size``; for any other input size use
    ``model.grid_size_for((H, W))``. The maps are part of the autograd graph. For gradients of a logit with
    respect to the maps (gradient-weighted rollout), ask for the per-layer tensors that the forward actually
    used, ``forward_attention(x, stack=False)`` → list of ``depth`` tensors (B, heads, T, T), and pass them to
    ``torch.autograd.grad``; a stacked copy is made after the forward, so no logit depends on it.

    ``forward`` stays on the fused path and is as fast as timm's model; ``forward_attention`` runs the explicit
    path.

    Backbone use, as in timm: ``forward_features`` (tokens (B, T, C), after the final LN with ``global_pool='token'``;
    with ``'avg'`` the LN comes after the pool, ``fc_norm`` in ``forward_head``), ``forward_head(x, pre_logits)``,
    ``forward_intermediates`` (per-block patch tokens, (B, C, H/p, W/p) or (B, H/p · W/p, C)), and
    ``features_only=True``, with which ``forward`` returns the maps of the blocks in ``out_indices`` and
    ``feature_info`` lists their ``num_chs``, ``reduction`` and ``module``.

    Args:
        img_size: build size (int or (H, W)); it fixes the number of position embeddings.
        patch_size: side p of the square patches; must divide the image size.
        in_chans, num_classes: input channels and classes (``num_classes=0``: no classifier).
        global_pool: ``'token'`` (class token → final LN → head) or ``'avg'`` (mean of patch tokens → LN → head).
        embed_dim, depth, num_heads, mlp_ratio, qkv_bias: width, number of blocks, heads, MLP width factor,
            bias of the Q/K/V projections.
        drop_rate: dropout before the classifier; attn_drop_rate: dropout on the attention weights;
            drop_path_rate: stochastic depth, rising linearly to this value over the blocks.
        local_window: Chebyshev radius (in patches) of local attention; None for global attention.
        attn_score: the attention's score function, one of ``cvattn.layers.score_attention.SCORES``:
            ``'scaled_dot'`` (the paper's; fused in ``forward``), ``'dot'``, ``'general'``, ``'additive'`` (these
            always materialise the weights, and pretrained timm weights leave their extra parameters untrained).
        pos_embed: ``'learned'`` (a parameter, timm's ``pos_embed`` key), ``'sinusoidal'`` (a fixed 2-D table,
            ``cvattn.layers.pos_embed.sincos_2d``; embed_dim must be divisible by 4) or ``'none'``. The sinusoidal
            table is a non-persistent buffer: it is a function of the constructor arguments, rebuilt by
            ``__init__``, so checkpoints do without it, and a learned model's checkpoint (which has a
            ``pos_embed`` key) cannot load silently over it: the strict load names the key instead.
        stem_channels: widths of a convolutional stem before the patch projection (``PatchEmbed``; Xiao et al.
            2021); () (the default) is the paper's plain p×p projection. timm's ImageNet weights have no stem.
        features_only, out_indices: build a backbone returning the maps of the blocks ``out_indices`` (all if None).
    """

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        global_pool: str = "token",
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        local_window: int | None = None,
        pos_embed: str = "learned",
        features_only: bool = False,
        out_indices: Sequence[int] | None = None,
        attn_score: str = "scaled_dot",
        stem_channels: Sequence[int] = (),
    ):
        super().__init__()
        if global_pool not in GLOBAL_POOLS:
            hint = did_you_mean(global_pool, GLOBAL_POOLS, n=1)
            raise ValueError(f"Unknown global_pool {global_pool!r}.{hint} Accepted: 'token' (class token) or "
                             f"'avg' (mean of the patch tokens).")
        if in_chans < 1 or num_classes < 0 or depth < 1:
            raise ValueError(f"in_chans and depth must be ≥ 1 and num_classes ≥ 0; got in_chans={in_chans}, "
                             f"depth={depth}, num_classes={num_classes}.")
        rates = dict(drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate)
        if not all(0 <= rate < 1 for rate in rates.values()):
            raise ValueError(f"Dropout rates must be in [0, 1); got {rates}.")
        if local_window is not None and local_window < 0:
            raise ValueError(f"local_window must be None (global attention) or a radius ≥ 0 in patches, got "
                             f"{local_window}.")
        self.pos_embed_kind = check_choice("pos_embed", pos_embed, POS_EMBEDS)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.num_features = self.embed_dim = embed_dim
        self.num_prefix_tokens = 1
        self.local_window = local_window

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim, stem_channels)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        num_tokens = self.num_prefix_tokens + self.patch_embed.num_patches
        if pos_embed == "learned":
            self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, embed_dim))
        elif pos_embed == "sinusoidal":
            table = sincos_2d(self.patch_embed.grid_size, embed_dim, self.num_prefix_tokens)   # (1, T, C)
            self.register_buffer("pos_embed", table, persistent=False)
        else:
            self.pos_embed = None                                                # timm's attribute for no encoding
        drop_path_rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias, attn_drop_rate, rate, attn_score)
            for rate in drop_path_rates)
        # timm's layout: with 'avg' pooling the final LN moves after the pool (fc_norm) instead of before (norm).
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if global_pool == "token" else nn.Identity()
        self.fc_norm = nn.LayerNorm(embed_dim, eps=1e-6) if global_pool == "avg" else nn.Identity()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 and not features_only else nn.Identity()
        self.features_only = features_only
        self.out_indices = self._take_indices(out_indices)
        self.feature_info = [dict(num_chs=embed_dim, reduction=patch_size, module=f"blocks.{i}")
                             for i in (self.out_indices if features_only else range(depth))]
        self._init_weights()

    def _init_weights(self) -> None:
        # timm's default ('') scheme, so models trained from scratch here start like timm's.
        if isinstance(self.pos_embed, nn.Parameter):
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameters that should not be weight-decayed (timm's convention)."""
        return {"pos_embed", "cls_token"}

    def grid_size_for(self, img_size: int | Sequence[int]) -> tuple[int, int]:
        """Patch grid (H/p, W/p) of an input of spatial size ``img_size`` (int or (H, W))."""
        (height, width), (ph, pw) = _pair(img_size), self.patch_embed.patch_size
        if height % ph or width % pw:
            raise ValueError(f"Input size {(height, width)} is not divisible by patch_size {ph}: the image must "
                             f"split into whole patches; resize or crop it to a multiple of {ph}.")
        return height // ph, width // pw

    def pos_embed_for(self, grid: tuple[int, int]) -> torch.Tensor | None:
        """Position encodings (1, prefix + H·W, C) for an H×W patch grid (None with ``pos_embed='none'``): the
        model's own for its build grid, else resampled (learned) or recomputed (sinusoidal)."""
        if self.pos_embed is None or grid == self.patch_embed.grid_size:
            return self.pos_embed
        if self.pos_embed_kind == "sinusoidal":
            return sincos_2d(grid, self.embed_dim, self.num_prefix_tokens).to(self.pos_embed)
        return resample_pos_embed(self.pos_embed, grid, self.patch_embed.grid_size, self.num_prefix_tokens)

    def _take_indices(self, indices: Sequence[int] | None) -> list[int]:
        depth = len(self.blocks)
        if indices is None:
            return list(range(depth))
        if not indices:
            raise ValueError(f"Block indices are empty: give at least one of 0..{depth - 1} (or None for all).")
        if not all(-depth <= i < depth for i in indices):
            raise ValueError(f"Block indices {list(indices)} out of range for depth {depth}: use 0..{depth - 1} "
                             f"(or negative indices from the end).")
        return [i % depth for i in indices]

    def _embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, tuple[int, int]]:
        """Images → (tokens (B, T, C), attention mask (T, T) or None, patch grid)."""
        check_images(type(self).__name__, x, self.in_chans)
        grid = self.grid_size_for(x.shape[-2:])
        x = self.patch_embed(x)                                                  # (B, N, C)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)     # (B, 1 + N, C)
        pos_embed = self.pos_embed_for(grid)
        if pos_embed is not None:
            x = x + pos_embed
        mask = None
        if self.local_window is not None:
            mask = local_attention_mask(grid, self.local_window, self.num_prefix_tokens, x.device)
        return x, mask, grid

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) → tokens (B, 1 + H/p · W/p, embed_dim), fused attention; layer-normalised with
        ``global_pool='token'`` (with ``'avg'``, ``forward_head`` normalises the pooled mean instead, as in timm)."""
        x, mask, _ = self._embed(x)
        for block in self.blocks:
            x, _ = block(x, mask)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Tokens (B, T, C) → pooled features (B, C) if ``pre_logits`` else logits (B, num_classes)."""
        x = x[:, 0] if self.global_pool == "token" else x[:, self.num_prefix_tokens:].mean(dim=1)
        x = self.head_drop(self.fc_norm(x))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if self.features_only:
            return self.forward_intermediates(x, self.out_indices, intermediates_only=True)
        return self.forward_head(self.forward_features(x))

    def forward_attention(
        self, x: torch.Tensor, stack: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor | list[torch.Tensor]]:
        """Logits and every block's attention weights, computed by the explicit path.

        Returns ``(logits, attn)``: logits (B, num_classes) equal to ``forward(x)`` (up to float rounding) and
        attn (B, depth, num_heads, T, T), T = 1 + H/p · W/p, each row a softmax (sums to 1; exactly 0 where
        ``local_window`` masks). With ``stack=False``, attn is the list of per-block (B, num_heads, T, T) tensors
        that the forward used, for ``torch.autograd.grad(logit, attn)``.
        """
        x, mask, _ = self._embed(x)
        maps = []
        for block in self.blocks:
            x, attn = block(x, mask, need_weights=True)
            maps.append(attn)
        logits = self.forward_head(self.norm(x))
        return logits, torch.stack(maps, dim=1) if stack else maps

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: Sequence[int] | None = None,
        norm: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """Patch tokens after the blocks in ``indices`` (all if None), without the class token.

        ``output_fmt='NCHW'`` gives (B, embed_dim, H/p, W/p) maps, ``'NLC'`` (B, H/p · W/p, embed_dim) tokens;
        ``norm=True`` applies the final LN to them (``self.norm``: the identity with ``global_pool='avg'``, whose LN
        follows the pool). Returns ``(forward_features(x), intermediates)``, or only the
        intermediates (stopping after the last requested block) when ``intermediates_only``.
        """
        if output_fmt not in ("NCHW", "NLC"):
            raise ValueError(f"Unknown output_fmt {output_fmt!r}: use 'NCHW' (maps) or 'NLC' (tokens).")
        take = self._take_indices(indices)
        x, mask, grid = self._embed(x)
        last = max(take) if intermediates_only else len(self.blocks) - 1
        intermediates = []
        for i, block in enumerate(self.blocks[:last + 1]):
            x, _ = block(x, mask)
            if i in take:
                tokens = (self.norm(x) if norm else x)[:, self.num_prefix_tokens:]   # (B, N, C)
                if output_fmt == "NCHW":
                    tokens = tokens.transpose(1, 2).reshape(x.shape[0], -1, *grid)  # (B, C, H/p, W/p)
                intermediates.append(tokens)
        return intermediates if intermediates_only else (self.norm(x), intermediates)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that, when ``strict``, fails with one ``ValueError`` naming the missing
        and unexpected keys and the shape mismatches (a checkpoint of another architecture or configuration)."""
        if strict:
            if problems := state_dict_mismatch(state_dict, self.state_dict()):
                raise ValueError(
                    f"This state_dict does not fit {type(self).__name__}(img_size={self.patch_embed.img_size}, "
                    f"patch_size={self.patch_embed.patch_size[0]}, embed_dim={self.embed_dim}, "
                    f"depth={len(self.blocks)}, num_classes={self.num_classes}, pos_embed={self.pos_embed_kind!r}): "
                    f"{problems}. Build the model with the checkpoint's configuration, or pass strict=False to load "
                    f"the matching part.")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


_TIMM_PRETRAINED = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")
_CVATTN_ONLY_ARGS = ("local_window", "pos_embed", "features_only", "out_indices", "attn_score", "stem_channels")


def load_timm_pretrained(model: VisionTransformer, name: str, **kwargs) -> VisionTransformer:
    """Copy the ImageNet weights of timm's model ``name`` (downloaded by timm; needs internet) into ``model``.

    ``kwargs`` are the constructor arguments ``model`` was built with; timm gets the ones it knows, so a different
    ``num_classes`` gives a fresh head and a different ``img_size`` resampled position embeddings, as in timm.
    """
    if name not in _TIMM_PRETRAINED:
        raise ValueError(f"No pretrained weights for {name!r}: timm publishes ImageNet weights for "
                         f"{', '.join(_TIMM_PRETRAINED)}; the small-image models train from scratch.")
    if model.pos_embed_kind != "learned":
        raise ValueError(f"pretrained=True needs pos_embed='learned' (timm's ImageNet weights hold learned position "
                         f"embeddings), got pos_embed={model.pos_embed_kind!r}; drop pretrained or the pos_embed "
                         f"argument.")
    if not isinstance(model.patch_embed.stem, nn.Identity):
        raise ValueError("pretrained=True needs stem_channels=() (timm's ImageNet weights project raw pixels; they "
                         "have no convolutional stem); drop pretrained or the stem_channels argument.")
    import timm

    timm_kwargs = {k: v for k, v in kwargs.items() if k not in _CVATTN_ONLY_ARGS}
    state_dict = timm.create_model(name, pretrained=True, **timm_kwargs).state_dict()
    model.load_state_dict(state_dict, strict=not model.features_only)
    return model


def _create_vit(name: str, pretrained: bool, config: dict, kwargs: dict) -> VisionTransformer:
    """``VisionTransformer(**config)`` with the user's ``kwargs`` on top; ``pretrained=True`` loads timm's ImageNet
    weights of ``name`` (224 models only, needs internet)."""
    model = VisionTransformer(**{**config, **kwargs})
    return load_timm_pretrained(model, name, **kwargs) if pretrained else model


# The 224 models are timm's configurations of the same name; keyword arguments go to `VisionTransformer`.
@register_model
def vit_tiny_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-Ti/16 (timm's): 16×16 patches, width 192, 12 blocks, 3 heads."""
    config = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3)
    return _create_vit("vit_tiny_patch16_224", pretrained, config, kwargs)


@register_model
def vit_small_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-S/16 (timm's): 16×16 patches, width 384, 12 blocks, 6 heads."""
    config = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6)
    return _create_vit("vit_small_patch16_224", pretrained, config, kwargs)


@register_model
def vit_base_patch16_224(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """ViT-B/16 (the paper's and timm's): 16×16 patches, width 768, 12 blocks, 12 heads."""
    config = dict(patch_size=16, embed_dim=768, depth=12, num_heads=12)
    return _create_vit("vit_base_patch16_224", pretrained, config, kwargs)


@register_model
def vit_tiny_patch4_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """28×28 grayscale (MNIST, Fashion-MNIST), 10 classes: 7×7 patches of 4×4 pixels, ViT-Ti's width and depth."""
    config = dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=192, depth=12, num_heads=3)
    return _create_vit("vit_tiny_patch4_28", pretrained, config, kwargs)


@register_model
def vit_tiny_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """32×32 colour (CIFAR), 10 classes: 8×8 patches of 4×4 pixels, ViT-Ti's width and depth."""
    config = dict(img_size=32, patch_size=4, num_classes=10, embed_dim=192, depth=12, num_heads=3)
    return _create_vit("vit_tiny_patch4_32", pretrained, config, kwargs)


@register_model
def vit_small_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """The from-scratch CIFAR model of omihub777/ViT-CIFAR: 32×32, 4×4 patches, 7 blocks, width 384, MLP 384,
    12 heads (6.3M parameters)."""
    config = dict(img_size=32, patch_size=4, num_classes=10, embed_dim=384, depth=7, num_heads=12, mlp_ratio=1.0)
    return _create_vit("vit_small_patch4_32", pretrained, config, kwargs)
