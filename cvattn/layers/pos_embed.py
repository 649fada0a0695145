"""Fixed sinusoidal position encodings, 1-D and 2-D.

Vaswani et al., "Attention Is All You Need", NeurIPS 2017, section 3.5: for position ``pos`` and channel pair i
of a d-channel encoding,

    PE(pos, 2i)     = sin(pos / 10000^(2i/d))
    PE(pos, 2i + 1) = cos(pos / 10000^(2i/d)),

so every channel pair is one frequency, the wavelengths run geometrically from 2π to 10000·2π, and PE(pos + k) is a
linear function (a rotation per pair) of PE(pos).

2-D, for a grid of patches (the construction of MAE, He et al. 2022, and MoCo v3, Chen, Xie, He 2021): the first
half of the channels is the 1-D table of d/2 channels for the patch's row, the second half the same table for its
column. Deviations from those two, which change nothing but the order of the channels:
- each half keeps Vaswani's interleaving (sin at even, cos at odd channels); MAE, MoCo v3 and timm's
  ``build_sincos2d_pos_embed(interleave_sin_cos=True)`` put all the sines of a half first, then all the cosines;
- rows come first; MAE's table (its ``meshgrid`` puts the width first) encodes the column in the first half.
A fixed permutation of the channels of a table that is added to a learned projection gives an equivalent model
(permute the rows of the patch projection and the columns of the first block's weights alike), so the choice is
one of reading, not of accuracy.
"""
from __future__ import annotations

from typing import Sequence

import torch


def sincos_1d(positions: torch.Tensor, dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """Positions (N,) → (N, dim) table: sin at even channels 2i, cos at odd channels 2i + 1, both of
    pos / temperature^(2i/dim). ``dim`` must be even."""
    if dim < 2 or dim % 2:
        raise ValueError(f"A sinusoidal encoding needs an even number of channels (a sin and a cos per "
                         f"frequency), got {dim}.")
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim                  # 2i/d, (dim/2,)
    angles = positions.double()[:, None] / temperature ** exponents                # (N, dim/2)
    return torch.stack([angles.sin(), angles.cos()], dim=-1).flatten(1).float()    # (N, dim): sin, cos, sin, ...


def sincos_2d(grid_size: Sequence[int], dim: int, num_prefix_tokens: int = 1,
              temperature: float = 10000.0) -> torch.Tensor:
    """(1, prefix + H·W, dim) table for an H×W patch grid in row-major order (token prefix + r·W + c is patch
    (r, c)): channels [0, dim/2) encode the row r, channels [dim/2, dim) the column c, each by ``sincos_1d``.

    The prefix (class token) entries are zeros, as in MAE and MoCo v3: the class token has no place on the grid,
    and its own learned embedding already tells it apart. ``dim`` must be divisible by 4 (an even 1-D table per
    axis). Positions are patch indices 0 … H-1 and 0 … W-1, so on a larger grid a patch keeps its encoding and
    the new patches get the continuation of the same waves.
    """
    if dim % 4:
        raise ValueError(f"A 2-D sinusoidal encoding needs embed_dim divisible by 4 (a sin and a cos per frequency "
                         f"for rows and for columns), got {dim}; use a multiple of 4, or pos_embed='learned'.")
    height, width = grid_size
    rows = sincos_1d(torch.arange(height), dim // 2)                                # (H, dim/2)
    cols = sincos_1d(torch.arange(width), dim // 2)                                 # (W, dim/2)
    table = torch.cat([rows[:, None].expand(-1, width, -1), cols[None].expand(height, -1, -1)], dim=-1)
    table = table.reshape(1, height * width, dim)                                   # (1, H·W, dim)
    return torch.cat([table.new_zeros(1, num_prefix_tokens, dim), table], dim=1)
