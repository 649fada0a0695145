"""Read the attention a model applied: ``with capture_attention(model) as maps: model(x)``.

Every block in this package computes its attention as the output of its ``gate`` submodule; forward hooks on
those gates collect it only while the ``with`` block is open, so an ordinary forward pays nothing.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn

from cvattn.layers.cbam import ChannelAttn, SpatialAttn
from cvattn.layers.eca import EcaModule
from cvattn.layers.se import SEModule
from cvattn.layers.coord_attn import CoordAttn
from cvattn.layers.bam import BamModule
from cvattn.layers.ese import EffectiveSEModule
from cvattn.layers.gates import ChannelGate, SpatialGate
from cvattn.layers.gather_excite import GatherExcite
from cvattn.layers.light_cbam import LightSpatialAttn
from cvattn.layers.non_local import NonLocalAttn
from cvattn.layers.triplet import SpatialZPoolGate

ATTENTION_BLOCKS = (SEModule, EcaModule, ChannelAttn, SpatialAttn, CoordAttn, BamModule, EffectiveSEModule,
                    ChannelGate, GatherExcite, LightSpatialAttn, NonLocalAttn, SpatialGate, SpatialZPoolGate)


def attention_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The gate-carrying attention blocks of ``model`` by module path, in forward order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, ATTENTION_BLOCKS)}


@contextmanager
def capture_attention(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Collect every attention gate's output during forwards inside the block.

    Yields a dict ``{block path: gate output}``: channel gates (B, C, 1, 1), spatial gates (B, 1, H, W). The
    tensors stay in the autograd graph (gradient-weighted maps need that); ``.detach()`` them to keep.
    A block run twice keeps its last output.
    """
    maps: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(_module, _inputs, output):
            maps[name] = output
        return hook

    handles = [block.gate.register_forward_hook(keep(name)) for name, block in attention_blocks(model).items()]
    try:
        yield maps
    finally:
        for handle in handles:
            handle.remove()
