"""Attention blocks: one concept per file, one constructor vocabulary (``channels`` first, ``rd_ratio``,
``act_layer``, ``gate_layer``), built by name with ``create_attn``.

The block contract (``cvattn.contracts.AttentionBlock``). A module is an attention block, found by
``capture_attention`` / ``attention_blocks``, the gate saliency maps and the models, when it offers:

- ``attn_kind``, a class attribute: ``'channel'`` (one weight per channel) or ``'spatial'`` (one per position);
- ``gate``, a submodule whose output is the attention the block applies: (B, C, 1, 1) for ``'channel'``,
  (B, 1, H, W) for ``'spatial'`` (usually the final sigmoid, so the hook sees exactly the applied weights);
- a constructor ``Block(channels, **kwargs)``, which is what a model's ``attn_layer`` slot calls.

A block with two gates is made of two blocks, each found on its own (``CbamModule`` = ``ChannelAttn`` then
``SpatialAttn``). Nothing needs to be imported from cvattn: a user's block with these attributes works as
``create_model("resnet20", attn_layer=MyBlock)``. Adding a block to the package is its file plus one entry, its
name, in ``create_attn._ATTN`` (and, for a public name, an export here).
"""
from cvattn.layers.capture import attention_blocks, capture_attention
from cvattn.layers.cbam import CbamModule, ChannelAttn, SpatialAttn
from cvattn.layers.create_attn import create_attn, get_attn, list_attn
from cvattn.layers.eca import EcaModule, eca_kernel_size
from cvattn.layers.helpers import make_divisible
from cvattn.layers.se import SEModule
from cvattn.layers.bam import BamModule
from cvattn.layers.ceca import CecaModule
from cvattn.layers.coord_attn import CoordAttn
from cvattn.layers.ese import EffectiveSEModule
from cvattn.layers.gates import ChannelGate, SpatialGate
from cvattn.layers.gather_excite import GatherExcite
from cvattn.layers.global_context import GlobalContext
from cvattn.layers.light_cbam import LightCbamModule, LightChannelAttn, LightSpatialAttn
from cvattn.layers.non_local import NonLocalAttn
from cvattn.layers.selective_kernel import SelectiveKernel
from cvattn.layers.spatial_transformer import SpatialTransformer  # an input-side transformer, not a block
from cvattn.layers.triplet import TripletAttention

__all__ = [
    "CbamModule", "ChannelAttn", "EcaModule", "SEModule", "SpatialAttn", "attention_blocks", "capture_attention",
    "create_attn", "eca_kernel_size", "get_attn", "list_attn", "make_divisible",
    "BamModule", "CecaModule", "ChannelGate", "CoordAttn", "EffectiveSEModule", "GatherExcite", "GlobalContext",
    "LightCbamModule", "LightChannelAttn", "LightSpatialAttn", "NonLocalAttn", "SelectiveKernel", "SpatialGate",
    "SpatialTransformer", "TripletAttention",
]
