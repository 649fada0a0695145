"""``get_attn`` / ``create_attn``: attention blocks by name, as models' ``attn_layer`` takes them.

``_ATTN`` below is the one registration point: one entry per name. A dict rather than a ``register_attn``
decorator, because a block file then needs nothing from cvattn (any module with ``attn_kind`` and ``gate`` is a
block, see ``cvattn.layers``), every accepted name is read in one place, and a name can carry options
(``'se_timm'`` is ``SEModule`` with ``convention='timm'``), which a class decorator does not express. A block that
is not registered is passed as itself: ``attn_layer=MyBlock`` (a class or any callable ``(channels, **kwargs)``).
"""
from __future__ import annotations

from functools import partial
from typing import Callable, Union

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

AttnLayer = Union[str, Callable[..., nn.Module], None]   # what a model's attn_layer accepts

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


def get_attn(attn_layer: AttnLayer) -> Callable[..., nn.Module] | None:
    """The block constructor for ``attn_layer``: a registered name (see ``list_attn()``), a block class or any
    callable ``(channels, **kwargs) -> nn.Module`` (returned as it is, as timm's ``get_attn`` does); ``None`` for no
    attention (``None`` or ``'none'``)."""
    if attn_layer is None:
        return None
    if not isinstance(attn_layer, str):
        if callable(attn_layer):
            return attn_layer
        raise ValueError(f"attn_layer must be a block name, a block class or a callable (channels, **kwargs); got "
                         f"{attn_layer!r} of type {type(attn_layer).__name__}. Names: 'none', "
                         f"{', '.join(map(repr, list_attn()))}.")
    key = attn_layer.lower()
    if key in _NONE:
        return None
    if key not in _ATTN:
        hint = did_you_mean(key, [*_ATTN, "none"])
        raise ValueError(f"Unknown attention {attn_layer!r}.{hint} Accepted: 'none', "
                         f"{', '.join(map(repr, list_attn()))}.")
    return _ATTN[key]


def create_attn(attn_layer: AttnLayer, channels: int, **kwargs) -> nn.Module | None:
    """Build the attention block ``attn_layer`` (a name, a class or a callable) for ``channels`` channels
    (``None`` for ``'none'``).

    >>> create_attn("cbam", 64, rd_ratio=1 / 8)
    """
    block = get_attn(attn_layer)
    return None if block is None else block(channels, **kwargs)
