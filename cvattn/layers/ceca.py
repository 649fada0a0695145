"""Circular ECA: ECA (Wang et al. "ECA-Net", CVPR 2020) whose 1-D convolution across channels pads circularly.

Channels have no order, so there is no reason for the first and last channels to see zero padding: with circular
padding every channel has k neighbours. Same adaptive kernel size as ``EcaModule``.

Follows timm's ``CecaModule`` (same state_dict, outputs within float rounding). Not in the ECA paper: timm's
variant, kept under timm's name ``'ceca'``. Deviation: timm's experimental ``act_layer`` (an activation after the
convolution, which switches on a bias) is left out.
"""
from __future__ import annotations

import torch.nn as nn

from cvattn.layers.eca import EcaModule


class CecaModule(EcaModule):
    """ECA with circular padding across channels; ``self.gate`` outputs (B, C, 1, 1)."""

    def __init__(self, channels: int, kernel_size: int | None = None, gamma: float = 2, beta: float = 1,
                 gate_layer="sigmoid", device=None, dtype=None):
        super().__init__(channels, kernel_size, gamma, beta, gate_layer, device, dtype)
        k = self.conv.kernel_size[0]
        self.conv = nn.Conv1d(1, 1, kernel_size=k, padding=(k - 1) // 2, padding_mode="circular", bias=False,
                              device=device, dtype=dtype)
