"""``create_attn(name, channels, **kwargs)``: attention blocks by name, as models' ``attn_layer`` takes them."""
from __future__ import annotations

from functools import partial
from typing import Callable

import torch.nn as nn

from cvattn.checks import did_you_mean
from cvattn.layers.cbam import CbamModule, ChannelAttn, SpatialAttn
from cvattn.layers.eca import EcaModule
from cvattn.layers.se import SEModule
from cvattn.layers.bam import BamModule
from cvattn.layers.ceca import CecaModule
from cvattn.layers.coord_attn import CoordAttn
from cvattn.layers.ese import EffectiveSEModule
from cvattn.layers.gather_excite import GatherExcite
from cvattn.layers.global_context import GlobalContext
from cvattn.layers.light_cbam import LightCbamModule
from cvattn.layers.non_local import NonLocalAttn
from cvattn.layers.selective_kernel import SelectiveKernel
from cvattn.layers.triplet import TripletAttention

_ATTN: dict[str, Callable[..., nn.Module]] = {
    "se": SEModule,
    "se_timm": partial(SEModule, convention="timm"),
    "eca": EcaModule,
    "channel": ChannelAttn,
    "channel_timm": partial(ChannelAttn, convention="timm"),
    "spatial": SpatialAttn,
    "spatial_timm": partial(SpatialAttn, convention="timm"),
    "cbam": CbamModule,
    "cbam_timm": partial(CbamModule, convention="timm"),
    "ese": EffectiveSEModule,
    "ceca": CecaModule,
    "ge": GatherExcite,
    "ge_timm": partial(GatherExcite, convention="timm"),
    "gc": GlobalContext,
    "gc_timm": partial(GlobalContext, convention="timm"),
    "gca": partial(GlobalContext, fuse_add=True, fuse_scale=False),
    "gca_timm": partial(GlobalContext, fuse_add=True, fuse_scale=False, convention="timm"),
    "coord": CoordAttn,
    "coord_timm": partial(CoordAttn, convention="timm"),
    "nl": NonLocalAttn,
    "nl_timm": partial(NonLocalAttn, convention="timm"),
    "sk": SelectiveKernel,
    "sk_timm": partial(SelectiveKernel, convention="timm"),
    "lcbam": LightCbamModule,
    "bam": BamModule,
    "triplet": TripletAttention,
}
_NONE = ("none", "")


def list_attn() -> list[str]:
    """The names ``create_attn`` accepts (besides ``'none'``)."""
    return sorted(_ATTN)


def get_attn(name: str | None) -> Callable[..., nn.Module] | None:
    """The block constructor for ``name``; ``None`` for no attention (``None`` or ``'none'``)."""
    if name is None or name.lower() in _NONE:
        return None
    key = name.lower()
    if key not in _ATTN:
        hint = did_you_mean(key, [*_ATTN, "none"])
        raise ValueError(f"Unknown attention {name!r}.{hint} Accepted: 'none', {', '.join(map(repr, list_attn()))}.")
    return _ATTN[key]


def create_attn(name: str | None, channels: int, **kwargs) -> nn.Module | None:
    """Build the attention block ``name`` for ``channels`` channels (``None`` for ``'none'``).

    >>> create_attn("cbam", 64, rd_ratio=1 / 8)
    """
    block = get_attn(name)
    return None if block is None else block(channels, **kwargs)
